// Interop, sharded mode: a socketioxide server using fanout-adapter on a Redis Cluster
// (examples/interop_server.rs with REDIS_URL=redis+cluster://…, on RUST_PORT) and a Node.js
// socket.io 4.8 server with @socket.io/redis-adapter 8.3 createShardedAdapter (dynamic
// subscription mode, the default) on node-redis 4.7 createCluster, started here, both on the
// same local 3+3 Redis Cluster (REDIS_CLUSTER_NODES=host:port,…).
// Run through ../run.sh sharded, which starts the cluster and the Rust server.
// No emitter: @socket.io/redis-emitter 5.1 has no sharded mode (see docs/SHARDED.md).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { setTimeout as sleep } from "node:timers/promises";
import { execFileSync } from "node:child_process";
import { Server } from "socket.io";
import { io as ioc } from "socket.io-client";
import { createCluster } from "redis";
import { createShardedAdapter } from "@socket.io/redis-adapter";

const NODES = (process.env.REDIS_CLUSTER_NODES ?? "").split(",").filter(Boolean);
const RUST_PORT = Number(process.env.RUST_PORT);
if (!NODES.length || !RUST_PORT) {
  throw new Error("REDIS_CLUSTER_NODES and RUST_PORT must be set (use adapter/interop/run.sh sharded)");
}

let nodeIo;
let httpServer;
let nodePort;
const clients = [];
const openSockets = new Set();

before(async () => {
  const pub = createCluster({ rootNodes: NODES.map((n) => ({ url: `redis://${n}` })) });
  const sub = pub.duplicate();
  clients.push(pub, sub);
  await Promise.all(clients.map((c) => c.connect()));
  httpServer = createServer();
  nodeIo = new Server(httpServer, { adapter: createShardedAdapter(pub, sub) });
  nodeIo.on("connection", (socket) => {
    for (const room of socket.handshake.auth?.rooms ?? []) socket.join(room);
    socket.on("q", (n, cb) => cb?.(`node-${n}`));
  });
  await new Promise((resolve) => httpServer.listen(0, "127.0.0.1", resolve));
  nodePort = httpServer.address().port;
  await sleep(300); // SSUBSCRIBE is not awaited by the sharded adapter
});

after(async () => {
  for (const s of openSockets) s.disconnect();
  nodeIo.close();
  await Promise.all(clients.map((c) => c.quit().catch(() => {})));
});

async function connect(side, { rooms = [] } = {}) {
  const port = side === "rust" ? RUST_PORT : nodePort;
  const socket = ioc(`http://127.0.0.1:${port}/`, {
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
  if (side === "rust") {
    // the room channels are confirmed before the test publishes to them. socketioxide sends
    // the CONNECT packet before it runs the connect handler that registers "rust:sync", so
    // a first ask can go unanswered: ask again.
    let synced = null;
    for (let i = 0; i < 3 && synced === null; i++) {
      synced = await socket.timeout(1500).emitWithAck("rust:sync").catch(() => null);
    }
    assert.deepEqual(synced, { ok: true });
  } else {
    await sleep(200); // Node subscribes its room channels without waiting
  }
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

test("server count: node and rust both count (PUBSUB SHARDNUMSUB)", async () => {
  assert.equal(await nodeIo.of("/").adapter.serverCount(), 2);
});

test("node room broadcast (room channel) reaches only rust sockets in the room", async () => {
  const r1 = await connect("rust", { rooms: ["s-r1"] });
  const r2 = await connect("rust");
  const got = waitFor(r1, "room-msg");
  nodeIo.to("s-r1").emit("room-msg", 1, { a: "b" });
  assert.deepEqual(await got, [1, { a: "b" }]);
  await noEvent(r2, "room-msg");
  // binary switches the envelope to msgpack
  const gotBin = waitFor(r1, "bin");
  nodeIo.to("s-r1").emit("bin", Buffer.from([1, 2, 3]));
  const [buf] = await gotBin;
  assert.deepEqual(Buffer.from(buf), Buffer.from([1, 2, 3]));
  closeAll(r1, r2);
});

test("rust room broadcast reaches only node sockets in the room", async () => {
  const n1 = await connect("node", { rooms: ["s-n1"] });
  const n2 = await connect("node");
  const r = await connect("rust");
  const got = waitFor(n1, "from-rust");
  assert.deepEqual(await ask(r, "rust:emit", { room: "s-n1", event: "from-rust", data: { x: 1 } }), { ok: true });
  assert.deepEqual(await got, [{ x: 1 }]);
  await noEvent(n2, "from-rust");
  closeAll(n1, n2, r);
});

test("whole-namespace and multi-room broadcasts, both directions (main channel)", async () => {
  const r = await connect("rust", { rooms: ["m-a"] });
  const n = await connect("node", { rooms: ["m-b"] });
  const g1 = waitFor(r, "all");
  const g2 = waitFor(n, "all");
  nodeIo.emit("all", 1);
  assert.deepEqual(await g1, [1]);
  assert.deepEqual(await g2, [1]);
  const g3 = waitFor(n, "all2");
  const g4 = waitFor(r, "all2");
  await ask(r, "rust:emit", { event: "all2", data: 2 });
  assert.deepEqual(await g3, [2]);
  assert.deepEqual(await g4, [2]);
  const g5 = waitFor(r, "two-rooms");
  const g6 = waitFor(n, "two-rooms");
  nodeIo.to(["m-a", "m-b"]).emit("two-rooms", 3);
  assert.deepEqual(await g5, [3]);
  assert.deepEqual(await g6, [3]);
  closeAll(r, n);
});

test("fetchSockets both directions", async () => {
  const r = await connect("rust", { rooms: ["f-room"] });
  const n = await connect("node", { rooms: ["f-room"] });
  const sockets = await nodeIo.in("f-room").fetchSockets();
  assert.deepEqual(sockets.map((s) => s.id).sort(), [n.id, r.id].sort());
  const rs = sockets.find((s) => s.id === r.id);
  assert.ok(rs.rooms.has("f-room"));
  // Node's 20-char ids are not socketioxide Sids: the Rust side lists its own sockets only,
  // but it got Node's answer (no timeout error).
  const ids = await ask(r, "rust:fetch");
  assert.ok(ids.includes(r.id), JSON.stringify(ids));
  assert.ok(!ids.some((i) => String(i).startsWith("error")), JSON.stringify(ids));
  closeAll(r, n);
});

test("broadcast with acks both directions", async () => {
  const r = await connect("rust");
  const n = await connect("node");
  r.on("q", (v, cb) => cb(`rust-${v}`));
  n.on("q", (v, cb) => cb(`node-client-${v}`));
  const acks = await nodeIo.timeout(2000).emitWithAck("q", 1);
  assert.deepEqual(acks.sort(), ["node-client-1", "rust-1"]);
  const back = await ask(r, "rust:emit-with-ack", { event: "q", data: 2, timeout: 1500 });
  assert.deepEqual(back.sort(), ["node-client-2", "rust-2"]);
  closeAll(r, n);
});

test("node socketsJoin makes the rust server subscribe the new room", async () => {
  const r = await connect("rust", { rooms: ["j-src"] });
  await nodeIo.in("j-src").socketsJoin("j-new");
  // the Rust server subscribes j-new's channel when it applies the join (not awaited by
  // Node, like Node's own SSUBSCRIBE): send until it arrives
  let got = null;
  r.on("joined-msg", (v) => (got = v));
  const deadline = Date.now() + 3000;
  while (got === null && Date.now() < deadline) {
    nodeIo.to("j-new").emit("joined-msg", 7);
    await sleep(100);
  }
  assert.equal(got, 7);
  closeAll(r);
});

// --- last: changes the cluster's topology ------------------------------------------------



const cli = (hostPort, ...args) => {
  const [host, port] = hostPort.split(":");
  return execFileSync("redis-cli", ["-h", host, "-p", port, ...args.map(String)], { encoding: "utf8" }).trim();
};

/** The master serving `slot`: { id, addr }, and every master. */
function topology(slot) {
  const rows = cli(NODES[0], "CLUSTER", "NODES")
    .split("\n")
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f[2]?.includes("master") && !f[2].includes("fail"))
    .map((f) => ({ id: f[0], addr: f[1].split("@")[0], ranges: f.slice(8) }));
  const owner = rows.find((m) =>
    m.ranges.some((r) => {
      const [a, b = a] = r.split("-").map(Number);
      return slot >= a && slot <= b;
    }),
  );
  return { owner, masters: rows };
}

test("a slot migration of a room's slot: the rust server follows it (node -> rust delivery)", async () => {
  // Only this direction: node-redis 4.7.1 does not re-subscribe a channel whose slot was
  // migrated by CLUSTER SETSLOT (observed here: after the migration the Node server misses
  // the room's messages; see docs/SHARDED.md).
  const r = await connect("rust", { rooms: ["mig"] });
  const channel = "socket.io#/#mig#";
  const slot = Number(cli(NODES[0], "CLUSTER", "KEYSLOT", channel));
  const { owner, masters } = topology(slot);
  const dst = masters.find((m) => m.id !== owner.id);
  cli(dst.addr, "CLUSTER", "SETSLOT", slot, "IMPORTING", owner.id);
  cli(owner.addr, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst.id);
  for (const m of [dst, owner, ...masters.filter((m) => m.id !== dst.id && m.id !== owner.id)]) {
    cli(m.addr, "CLUSTER", "SETSLOT", slot, "NODE", dst.id);
  }
  assert.equal(topology(slot).owner.id, dst.id);
  let got = null;
  r.on("after-mig", (v) => (got = v));
  const deadline = Date.now() + 10_000;
  while (got === null) {
    assert.ok(Date.now() < deadline, "the rust server did not follow the slot");
    nodeIo.to("mig").emit("after-mig", 1);
    await sleep(200);
  }
  assert.equal(got, 1);
  assert.equal(cli(owner.addr, "PUBSUB", "SHARDNUMSUB", channel).split("\n")[1], "0");
  closeAll(r);
});
