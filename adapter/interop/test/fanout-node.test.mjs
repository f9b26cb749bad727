// A real fanout-node process and a Node.js socket.io 4.8 server with @socket.io/redis-adapter
// 8.3 form one cluster on the redis-server at REDIS_URL (started by ../run.sh): topic
// messages cross in both directions, Node sees fanout's sockets and rooms, and Node's
// emitter reaches fanout clients (Socket.IO and /ws alike).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createServer } from "node:http";
import { setTimeout as sleep } from "node:timers/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Server } from "socket.io";
import { io as ioc } from "socket.io-client";
import { createClient } from "redis";
import { createAdapter } from "@socket.io/redis-adapter";
import { Emitter } from "@socket.io/redis-emitter";
import WebSocket from "ws";

const REDIS_URL = process.env.REDIS_URL;
if (!REDIS_URL) throw new Error("REDIS_URL must be set (use adapter/interop/run.sh)");
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const BIN = process.env.FANOUT_NODE_BIN || path.join(ROOT, "target", "debug", "fanout-node");
// Its own adapter channel prefix, so this cluster never meets interop.test.mjs's servers on
// the shared redis-server (their peer counts and broadcasts stay theirs).
const KEY = "fanout-node-interop";

let fanout; // { proc, url }
let nodeIo;
let httpServer;
let nodeUrl;
let emitter;
const redisClients = [];
const sockets = new Set();

async function freePort() {
  const srv = createServer();
  await new Promise((resolve) => srv.listen(0, "127.0.0.1", resolve));
  const { port } = srv.address();
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

before(async () => {
  const port = await freePort();
  const proc = spawn(BIN, ["--bind", `127.0.0.1:${port}`, "--node-id", "fanout-interop"], {
    // The ordering test sends 1000 publishes back to back from one connection: above the
    // default per-connection request rate, which is not what it tests.
    env: {
      ...process.env,
      FANOUT_REDIS_URL: REDIS_URL,
      FANOUT_ADAPTER_KEY: KEY,
      FANOUT_PREFIX: KEY,
      FANOUT_LOG: "warn",
      FANOUT_CLIENT_RATE: "1000000",
      FANOUT_CLIENT_BURST: "100000",
    },
    stdio: "ignore",
  });
  fanout = { proc, url: `http://127.0.0.1:${port}` };
  const deadline = Date.now() + 15000;
  for (;;) {
    try {
      if ((await fetch(`${fanout.url}/readyz`)).status === 200) break;
    } catch {
      /* not up yet */
    }
    if (Date.now() > deadline) throw new Error(`fanout-node (${BIN}) not ready`);
    await sleep(50);
  }
  const pub = createClient({ url: REDIS_URL });
  const sub = pub.duplicate();
  const em = createClient({ url: REDIS_URL });
  redisClients.push(pub, sub, em);
  await Promise.all(redisClients.map((c) => c.connect()));
  httpServer = createServer();
  nodeIo = new Server(httpServer, { adapter: createAdapter(pub, sub, { key: KEY, requestsTimeout: 2000 }) });
  nodeIo.on("connection", (socket) => {
    for (const room of socket.handshake.auth?.rooms ?? []) socket.join(room);
    // A Node.js app publishing what its client sends: io.to(topic).emit(topic, data).
    socket.on("relay", ({ topic, data }) => nodeIo.to(topic).emit(topic, data));
  });
  await new Promise((resolve) => httpServer.listen(0, "127.0.0.1", resolve));
  nodeUrl = `http://127.0.0.1:${httpServer.address().port}`;
  emitter = new Emitter(em, { key: KEY });
  await sleep(200);
});

after(async () => {
  for (const s of sockets) s.disconnect();
  nodeIo?.close();
  await Promise.all(redisClients.map((c) => c.quit().catch(() => {})));
  if (fanout) {
    const exited = new Promise((resolve) => fanout.proc.once("exit", resolve));
    fanout.proc.kill("SIGTERM");
    await exited;
  }
});

async function api(method, urlPath, body, token) {
  const res = await fetch(fanout.url + urlPath, {
    method,
    headers: { "content-type": "application/json", ...(token ? { authorization: token } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: res.status === 204 ? null : await res.json() };
}

async function fanoutUser() {
  const username = `interop-${process.pid}-${Math.random().toString(16).slice(2, 8)}`;
  assert.equal((await api("POST", "/api/users", { username, email: `${username}@example.com`, password: "secret123" })).status, 201);
  const login = await api("POST", "/api/users/login", { username, password: "secret123" });
  return login.body.id;
}

async function connect(url, opts) {
  const socket = ioc(url, { transports: ["websocket"], reconnection: false, forceNew: true, ...opts });
  sockets.add(socket);
  await new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", reject);
    setTimeout(() => reject(new Error("connect timeout")), 3000);
  });
  return socket;
}

function waitFor(socket, event, ms = 2000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no "${event}" within ${ms} ms`)), ms);
    socket.once(event, (...args) => {
      clearTimeout(timer);
      resolve(args);
    });
  });
}

test("topic messages cross between fanout-node and a Node.js socket.io server, both ways", async () => {
  const token = await fanoutUser();
  const fan = await connect(fanout.url, { auth: { token } });
  assert.deepEqual(await fan.timeout(2000).emitWithAck("subscribe", "mixed-news"), { ok: true, topic: "mixed-news" });
  const nodeClient = await connect(nodeUrl, { auth: { rooms: ["mixed-news"] } });

  // Node server → fanout subscriber.
  const atFanout = waitFor(fan, "mixed-news");
  nodeIo.to("mixed-news").emit("mixed-news", { from: "node" });
  assert.deepEqual(await atFanout, [{ from: "node" }]);

  // fanout client publish → Node server's client in the room.
  const atNode = waitFor(nodeClient, "mixed-news");
  assert.deepEqual(await fan.timeout(2000).emitWithAck("publish", { topic: "mixed-news", data: { from: "fanout" } }), { ok: true });
  assert.deepEqual(await atNode, [{ from: "fanout" }]);
});

test("Node.js sees fanout's sockets and rooms; disconnectSockets reaches them", async () => {
  const token = await fanoutUser();
  const fan = await connect(fanout.url, { auth: { token } });
  await fan.timeout(2000).emitWithAck("subscribe", "seen-by-node");
  const remote = await nodeIo.in("seen-by-node").fetchSockets();
  assert.equal(remote.length, 1);
  assert.equal(remote[0].id, fan.id);
  assert.ok(remote[0].rooms.has("seen-by-node"));
  const rooms = await nodeIo.of("/").adapter.allRooms();
  assert.ok(rooms.has("seen-by-node"));
  const gone = waitFor(fan, "disconnect");
  nodeIo.in("seen-by-node").disconnectSockets();
  assert.equal((await gone)[0], "io server disconnect");
});

test("@socket.io/redis-emitter reaches fanout Socket.IO and /ws subscribers", async () => {
  const token = await fanoutUser();
  const fan = await connect(fanout.url, { auth: { token } });
  await fan.timeout(2000).emitWithAck("subscribe", "from-emitter");
  const ws = new WebSocket(`${fanout.url.replace("http", "ws")}/ws`);
  const pushes = [];
  const replies = new Map();
  ws.onmessage = (e) => {
    const msg = JSON.parse(e.data);
    if (msg.type === "event") pushes.push(msg);
    else replies.set(msg.callback_id, msg);
  };
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = (e) => reject(e.error ?? e);
  });
  // /ws runs a connection's requests concurrently: subscribe only once authenticated.
  ws.send(JSON.stringify({ type: "authenticate", callback_id: 1, data: { token } }));
  for (let i = 0; i < 100 && !replies.has(1); i += 1) await sleep(20);
  assert.equal(replies.get(1)?.result, true);
  ws.send(JSON.stringify({ type: "subscribe", callback_id: 2, data: { topic: "from-emitter" } }));
  for (let i = 0; i < 100 && !replies.has(2); i += 1) await sleep(20);
  assert.equal(replies.get(2)?.result, true);

  const atFanout = waitFor(fan, "from-emitter");
  emitter.to("from-emitter").emit("from-emitter", { n: 1 });
  assert.deepEqual(await atFanout, [{ n: 1 }]);
  for (let i = 0; i < 100 && pushes.length === 0; i += 1) await sleep(20);
  assert.deepEqual(pushes, [{ type: "event", topic: "from-emitter", data: { n: 1 } }]);
  ws.close();
});

/** A /ws client of fanout: authenticated, subscribed to `topic`; collects pushed data. */
async function wsSubscriber(token, topic) {
  const ws = new WebSocket(`${fanout.url.replace("http", "ws")}/ws`);
  const pushes = [];
  const replies = new Map();
  ws.onmessage = (e) => {
    const msg = JSON.parse(e.data);
    if (msg.type === "event") pushes.push(msg.data);
    else replies.set(msg.callback_id, msg);
  };
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = (e) => reject(e.error ?? e);
  });
  ws.send(JSON.stringify({ type: "authenticate", callback_id: 1, data: { token } }));
  ws.send(JSON.stringify({ type: "subscribe", callback_id: 2, data: { topic } }));
  for (let i = 0; i < 100 && !replies.has(2); i += 1) await sleep(20);
  assert.equal(replies.get(2)?.result, true);
  return { ws, pushes };
}

async function until(what, predicate, ms = 20000) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timeout waiting for ${what}`);
    await sleep(20);
  }
}

test("1000 back-to-back messages keep their order through a Node.js peer, both ways", async () => {
  const N = 1000;
  const expected = Array.from({ length: N }, (_, i) => ({ i }));
  const token = await fanoutUser();

  // Node.js client → Node server (io.to(topic).emit) → Redis → fanout's Socket.IO and /ws.
  const fan = await connect(fanout.url, { auth: { token } });
  await fan.timeout(2000).emitWithAck("subscribe", "order-from-node");
  const atFanout = [];
  fan.on("order-from-node", (data) => atFanout.push(data));
  const wsSub = await wsSubscriber(token, "order-from-node");
  const nodeClient = await connect(nodeUrl, {});
  for (let i = 0; i < N; i += 1) nodeClient.emit("relay", { topic: "order-from-node", data: { i } });
  await until("fanout subscribers got every message", () => atFanout.length >= N && wsSub.pushes.length >= N);
  assert.deepEqual(atFanout, expected);
  assert.deepEqual(wsSub.pushes, expected);
  wsSub.ws.close();

  // fanout publisher, publishes emitted back to back → Redis → the Node server's client.
  const nodeSub = await connect(nodeUrl, { auth: { rooms: ["order-from-fanout"] } });
  const atNode = [];
  nodeSub.on("order-from-fanout", (data) => atNode.push(data));
  const acks = [];
  for (let i = 0; i < N; i += 1) {
    acks.push(fan.timeout(20000).emitWithAck("publish", { topic: "order-from-fanout", data: { i } }));
  }
  for (const ack of await Promise.all(acks)) assert.deepEqual(ack, { ok: true });
  await until("the Node.js client got every message", () => atNode.length >= N);
  assert.deepEqual(atNode, expected);
});
