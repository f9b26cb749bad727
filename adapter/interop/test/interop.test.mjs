// Interop: a socketioxide server using fanout-adapter (examples/interop_server.rs, on
// RUST_PORT) and a Node.js socket.io 4.8 server with @socket.io/redis-adapter 8.3 (started
// here), plus @socket.io/redis-emitter 5.1, all on the redis-server at REDIS_URL.
// Run through ../run.sh, which starts redis-server and the Rust server.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { setTimeout as sleep } from "node:timers/promises";
import { Server } from "socket.io";
import { io as ioc } from "socket.io-client";
import { createClient } from "redis";
import { createAdapter } from "@socket.io/redis-adapter";
import { Emitter } from "@socket.io/redis-emitter";

const REDIS_URL = process.env.REDIS_URL;
const RUST_PORT = Number(process.env.RUST_PORT);
if (!REDIS_URL || !RUST_PORT) {
  throw new Error("REDIS_URL and RUST_PORT must be set (use adapter/interop/run.sh)");
}

let nodeIo;
let httpServer;
let nodePort;
const redisClients = [];
let emitter;
const openSockets = new Set();

before(async () => {
  const pub = createClient({ url: REDIS_URL });
  const sub = pub.duplicate();
  const em = createClient({ url: REDIS_URL });
  redisClients.push(pub, sub, em);
  await Promise.all(redisClients.map((c) => c.connect()));
  httpServer = createServer();
  nodeIo = new Server(httpServer, { adapter: createAdapter(pub, sub, { requestsTimeout: 2000 }) });
  const onConnection = (socket) => {
    for (const room of socket.handshake.auth?.rooms ?? []) socket.join(room);
  };
  nodeIo.on("connection", onConnection);
  nodeIo.of("/admin").on("connection", onConnection);
  nodeIo.on("ping-server", (cb) => cb?.("node-pong"));
  await new Promise((resolve) => httpServer.listen(0, "127.0.0.1", resolve));
  nodePort = httpServer.address().port;
  emitter = new Emitter(em);
  await sleep(200); // let the adapter subscriptions settle
});

after(async () => {
  for (const s of openSockets) s.disconnect();
  nodeIo.close();
  await Promise.all(redisClients.map((c) => c.quit().catch(() => {})));
});

/** Connects a socket.io-client to the Rust (`rust`) or Node (`node`) server. */
async function connect(side, { nsp = "/", rooms = [] } = {}) {
  const port = side === "rust" ? RUST_PORT : nodePort;
  const socket = ioc(`http://127.0.0.1:${port}${nsp}`, {
    transports: ["websocket"],
    auth: { rooms },
    reconnection: false,
    forceNew: true,
  });
  openSockets.add(socket);
  await new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", reject);
    setTimeout(() => reject(new Error(`${side} connect timeout`)), 3000);
  });
  return socket;
}

/** Resolves with the event's arguments, rejects after `ms`. */
function waitFor(socket, event, ms = 2000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no "${event}" within ${ms} ms`)), ms);
    socket.once(event, (...args) => {
      clearTimeout(timer);
      resolve(args);
    });
  });
}

/** Asserts the event does not arrive within `ms`. */
async function noEvent(socket, event, ms = 300) {
  let got = null;
  const listener = (...args) => (got = args);
  socket.on(event, listener);
  await sleep(ms);
  socket.off(event, listener);
  assert.equal(got, null, `unexpected "${event}": ${JSON.stringify(got)}`);
}

const ask = (socket, event, ...args) => socket.timeout(5000).emitWithAck(event, ...args);

function closeAll(...sockets) {
  for (const s of sockets) {
    s.disconnect();
    openSockets.delete(s);
  }
}

test("node broadcast reaches rust clients (typed args, binary inline)", async () => {
  const r = await connect("rust");
  const n = await connect("node");
  const got = waitFor(r, "hello");
  nodeIo.emit("hello", 1, "2", { a: [3] }, Buffer.from([1, 2, 3]));
  const [a, b, c, d] = await got;
  assert.equal(a, 1);
  assert.equal(b, "2");
  assert.deepEqual(c, { a: [3] });
  assert.deepEqual(Buffer.from(d), Buffer.from([1, 2, 3]));
  closeAll(r, n);
});

test("rust broadcast reaches node clients", async () => {
  const r = await connect("rust");
  const n = await connect("node");
  const got = waitFor(n, "from-rust");
  const gotR = waitFor(r, "from-rust");
  assert.deepEqual(await ask(r, "rust:emit", { event: "from-rust", data: { x: 1 } }), { ok: true });
  assert.deepEqual(await got, [{ x: 1 }]);
  assert.deepEqual(await gotR, [{ x: 1 }]);
  // to a room held only by a Node socket
  const n2 = await connect("node", { rooms: ["only-node"] });
  const got2 = waitFor(n2, "roomed");
  await ask(r, "rust:emit", { room: "only-node", event: "roomed", data: 5 });
  assert.deepEqual(await got2, [5]);
  await noEvent(n, "roomed");
  closeAll(r, n, n2);
});

test("node rooms / except / to(socket id) reach the right rust sockets", async () => {
  const r1 = await connect("rust", { rooms: ["r1"] });
  const r2 = await connect("rust");
  const g1 = waitFor(r1, "room-msg");
  nodeIo.to("r1").emit("room-msg", 1);
  assert.deepEqual(await g1, [1]);
  await noEvent(r2, "room-msg");

  const g2 = waitFor(r2, "except-msg");
  nodeIo.except("r1").emit("except-msg", 2);
  assert.deepEqual(await g2, [2]);
  await noEvent(r1, "except-msg");

  // socketioxide sockets do not join their id room; the adapter resolves it anyway
  const g3 = waitFor(r2, "direct");
  nodeIo.to(r2.id).emit("direct", 3);
  assert.deepEqual(await g3, [3]);
  await noEvent(r1, "direct");
  closeAll(r1, r2);
});

test("node fetchSockets and allRooms see rust sockets", async () => {
  const r = await connect("rust", { rooms: ["fetch-room"] });
  const sockets = await nodeIo.in("fetch-room").fetchSockets();
  assert.deepEqual(sockets.map((s) => s.id), [r.id]);
  assert.equal(r.id.length, 16);
  assert.ok(sockets[0].rooms.has("fetch-room"));
  assert.ok(sockets[0].rooms.has(r.id));
  const all = await nodeIo.of("/").adapter.allRooms();
  assert.ok(all.has("fetch-room"));
  // acting on the remote socket
  const g = waitFor(r, "via-remote");
  sockets[0].emit("via-remote", "x");
  assert.deepEqual(await g, ["x"]);
  closeAll(r);
});

test("rust rooms() and fetch_sockets see node sockets", async () => {
  const r = await connect("rust");
  const n = await connect("node", { rooms: ["node-room"] });
  const rooms = await ask(r, "rust:rooms");
  assert.ok(rooms.includes("node-room"), JSON.stringify(rooms));
  assert.ok(rooms.includes(n.id), "Node socket-id rooms are listed");
  // Node's 20-char ids are not socketioxide Sids: fetch_sockets lists Rust sockets only
  const ids = await ask(r, "rust:fetch");
  assert.ok(ids.includes(r.id), JSON.stringify(ids));
  assert.ok(!ids.includes(n.id));
  assert.ok(!ids.some((id) => id.startsWith("error")), JSON.stringify(ids));
  closeAll(r, n);
});

test("ack broadcast from node collects rust acks (and vice versa)", async () => {
  const r = await connect("rust");
  const n = await connect("node");
  r.on("q", (v, cb) => cb(`rust-ack-${v}`));
  n.on("q", (v, cb) => cb(`node-ack-${v}`));
  const acks = await nodeIo.timeout(2000).emitWithAck("q", 1);
  assert.deepEqual(acks.sort(), ["node-ack-1", "rust-ack-1"]);

  const back = await ask(r, "rust:emit-with-ack", { event: "q", data: 2, timeout: 1500 });
  assert.deepEqual(back.sort(), ["node-ack-2", "rust-ack-2"]);
  closeAll(r, n);
});

test("node socketsJoin / disconnectSockets and rust join act across servers", async () => {
  const r = await connect("rust");
  const n = await connect("node");
  await nodeIo.in(r.id).socketsJoin("joined");
  await sleep(200);
  const g = waitFor(r, "in-joined");
  nodeIo.to("joined").emit("in-joined", 1);
  assert.deepEqual(await g, [1]);

  assert.deepEqual(await ask(r, "rust:join", "rust-joined"), { ok: true });
  await sleep(200);
  const members = (await nodeIo.in("rust-joined").fetchSockets()).map((s) => s.id).sort();
  assert.deepEqual(members, [n.id, r.id].sort());

  const d = waitFor(r, "disconnect");
  nodeIo.in(r.id).disconnectSockets();
  assert.equal((await d)[0], "io server disconnect");
  closeAll(r, n);
});

test("serverSideEmitWithAck from node is answered (null) instead of timing out", async () => {
  const res = await nodeIo.serverSideEmitWithAck("ping-server");
  assert.ok(res.includes(null), JSON.stringify(res));
});

test("emitter: to(room), except, other namespace, socket id", async () => {
  const r1 = await connect("rust", { rooms: ["e1"] });
  const r2 = await connect("rust");
  const admin = await connect("rust", { nsp: "/admin" });

  const g1 = waitFor(r1, "em");
  emitter.to("e1").emit("em", 1, "two");
  assert.deepEqual(await g1, [1, "two"]);
  await noEvent(r2, "em");

  const g2 = waitFor(r2, "em2");
  emitter.except("e1").emit("em2");
  assert.deepEqual(await g2, []);
  await noEvent(r1, "em2");

  const g3 = waitFor(admin, "adm");
  emitter.of("/admin").volatile.emit("adm", { z: true });
  assert.deepEqual(await g3, [{ z: true }]);
  await noEvent(r1, "adm");

  const g4 = waitFor(r2, "by-id");
  emitter.to(r2.id).emit("by-id", Buffer.from([9]));
  assert.deepEqual(Buffer.from((await g4)[0]), Buffer.from([9]));
  closeAll(r1, r2, admin);
});

test("emitter: socketsJoin, socketsLeave, disconnectSockets", async () => {
  const r1 = await connect("rust", { rooms: ["ej"] });
  const r2 = await connect("rust");
  emitter.in("ej").socketsJoin("ej2");
  await sleep(200);
  const g = waitFor(r1, "in-ej2");
  emitter.to("ej2").emit("in-ej2");
  await g;
  await noEvent(r2, "in-ej2");

  emitter.in("ej").socketsLeave("ej2");
  await sleep(200);
  emitter.to("ej2").emit("in-ej2-again");
  await noEvent(r1, "in-ej2-again");

  const d = waitFor(r1, "disconnect");
  emitter.in("ej").disconnectSockets();
  assert.equal((await d)[0], "io server disconnect");
  assert.ok(r2.connected);
  closeAll(r1, r2);
});
