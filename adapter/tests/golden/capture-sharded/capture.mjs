// Records the Redis Cluster traffic of two socket.io servers using the *sharded* adapter of
// @socket.io/redis-adapter (createShardedAdapter: SPUBLISH / SSUBSCRIBE / SUNSUBSCRIBE /
// PUBSUB SHARDNUMSUB) on node-redis cluster clients (createCluster), through MONITOR on every
// node of a running Redis Cluster.
//
//   node capture.mjs <port,port,…> [dynamic|static|dynamic-private] > ../trace-sharded-dynamic.json
//                                                          (capture.sh does this)
//
// Every Redis connection carries a name (CLIENT SETNAME, via createCluster's `defaults.name`):
// node-redis opens one connection per cluster node and client role, so names are per role,
// not per connection. A MONITOR line is attributed by its client address, from the CLIENT
// SETNAME it saw and from CLIENT LIST at the end (sharded subscriber connections may be closed
// by then). Steps and results are written with ECHO from a "marker" connection, awaited before
// each action. The six MONITOR streams are merged by their timestamps (one host, one clock).
import net from "node:net";
import { createRequire } from "node:module";
import { createClient, createCluster } from "redis";
import { Server } from "socket.io";
import { io as ioc } from "socket.io-client";
import { createShardedAdapter } from "@socket.io/redis-adapter";
import { Emitter } from "@socket.io/redis-emitter";

const ports = (process.argv[2] || "").split(",").filter(Boolean).map(Number);
const mode = process.argv[3] || "dynamic";
if (!ports.length || !["dynamic", "static", "dynamic-private"].includes(mode)) {
  console.error("usage: node capture.mjs <port,port,...> [dynamic|static|dynamic-private]");
  process.exit(2);
}
const HOST = "127.0.0.1";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const require = createRequire(import.meta.url);
const version = (name) => require(`${name}/package.json`).version;
const calculateSlot = require("cluster-key-slot");

// --- MONITOR on every node: [{ port, ts, addr, args: [Buffer] }]
const monitored = [];
const monitors = [];

/** Parses the quoted, sdscatrepr-escaped arguments of a MONITOR line into Buffers. */
function parseArgs(s) {
  const args = [];
  let i = 0;
  while (i < s.length) {
    if (s[i] !== '"') { i++; continue; }
    i++;
    const bytes = [];
    while (s[i] !== '"') {
      if (s[i] === "\\") {
        const c = s[i + 1];
        if (c === "x") { bytes.push(parseInt(s.slice(i + 2, i + 4), 16)); i += 4; continue; }
        const esc = { n: 10, r: 13, t: 9, a: 7, b: 8, '"': 34, "\\": 92 }[c];
        bytes.push(esc ?? c.charCodeAt(0));
        i += 2;
      } else {
        bytes.push(s.charCodeAt(i));
        i++;
      }
    }
    i++;
    args.push(Buffer.from(bytes));
  }
  return args;
}

for (const port of ports) {
  const sock = net.connect(port, HOST);
  let pending = "";
  let ok = false;
  sock.setEncoding("latin1");
  sock.on("data", (chunk) => {
    pending += chunk;
    let i;
    while ((i = pending.indexOf("\r\n")) >= 0) {
      const line = pending.slice(0, i);
      pending = pending.slice(i + 2);
      if (line === "+OK") { ok = true; continue; }
      const m = /^\+([\d.]+) \[\d+ ([^\]]+)\] (.*)$/.exec(line);
      if (m) monitored.push({ port, ts: m[1], addr: m[2], args: parseArgs(m[3]) });
    }
  });
  await new Promise((r) => sock.once("connect", r));
  sock.write("MONITOR\r\n");
  while (!ok) await sleep(10);
  monitors.push(sock);
}

// --- topology: each node labelled by the slot range its master serves (stable across captures,
// unlike the ports): "0-5460", "5461-10922", "10923-16383"; replicas as "replica of <range>".
const topology = new Map(); // port -> label
{
  const c = createClient({ url: `redis://${HOST}:${ports[0]}` });
  await c.connect();
  const lines = String(await c.sendCommand(["CLUSTER", "NODES"])).split("\n").filter(Boolean).map((l) => l.split(" "));
  const byId = new Map(lines.map((f) => [f[0], f]));
  const portOf = (f) => Number(/:(\d+)@/.exec(f[1])[1]);
  for (const f of lines) {
    if (f[2].includes("master")) topology.set(portOf(f), f.slice(8).join(","));
  }
  for (const f of lines) {
    if (f[2].includes("slave")) topology.set(portOf(f), `replica of ${topology.get(portOf(byId.get(f[3])))}`);
  }
  await c.disconnect();
}
const ownerOfSlot = (slot) => {
  for (const [port, label] of topology) {
    if (label.startsWith("replica")) continue;
    for (const r of label.split(",")) {
      const [a, b] = r.split("-").map(Number);
      if (slot >= a && slot <= (b ?? a)) return port;
    }
  }
};

const rootNodes = ports.map((p) => ({ url: `redis://${HOST}:${p}` }));
async function cluster(name) {
  const c = createCluster({ rootNodes, defaults: { name } });
  c.on("error", (e) => console.error(name, e.message));
  await c.connect();
  return c;
}

const marker = createClient({ url: `redis://${HOST}:${ports[0]}`, name: "marker" });
await marker.connect();
const mark = (step) => marker.sendCommand(["ECHO", `step ${step}`]);
const result = (value) => marker.sendCommand(["ECHO", `result ${JSON.stringify(value)}`]);

// --- two socket.io servers on the sharded adapter, one socket.io-client each; every event a
// client receives is collected so a step can report who got what.
const servers = [], clients = [], serverSockets = [], received = [[], []];
for (let i = 0; i < 2; i++) {
  const pub = await cluster(`node${i}-pub`);
  const sub = await cluster(`node${i}-sub`);
  const io = new Server({ adapter: createShardedAdapter(pub, sub, { subscriptionMode: mode }) });
  io.listen(0);
  io.on("connection", (s) => (serverSockets[i] = s));
  io.on("hello", (...args) => {
    const cb = args[args.length - 1];
    if (typeof cb === "function") cb(`pong${i}`);
  });
  const c = ioc(`http://${HOST}:${io.httpServer.address().port}`, { transports: ["websocket"] });
  c.onAny((event, ...args) => {
    const cb = typeof args[args.length - 1] === "function" ? args.pop() : null;
    received[i].push([event, ...args.map((a) => (Buffer.isBuffer(a) || a instanceof ArrayBuffer ? [...Buffer.from(a)] : a))]);
    if (cb) cb(`ack-from-client${i}`);
  });
  servers.push(io);
  clients.push(c);
}
while (!serverSockets[0] || !serverSockets[1] || !clients[0].connected || !clients[1].connected) await sleep(20);
await sleep(300);
const [io0] = servers;
const [socket0, socket1] = serverSockets;
socket1.data = { user: "u1" };

/** Runs one step: ECHO marker, action, settle; then a result with what the clients received. */
async function step(name, action, { deliveries = false, settle = 150 } = {}) {
  received[0].length = 0;
  received[1].length = 0;
  await mark(name);
  const value = await action();
  await sleep(settle);
  if (value !== undefined) await result(value);
  if (deliveries) await result({ client0: [...received[0]], client1: [...received[1]] });
}

await step("socket0.join('r2'); socket0.join('r3'); socket1.join('r1'); socket1.join('r3')", () => {
  socket0.join(["r2", "r3"]);
  socket1.join(["r1", "r3"]);
});
await step("io0.to('r1').emit('hello', {a:1})", () => { io0.to("r1").emit("hello", { a: 1 }); }, { deliveries: true });
await step("io0.to('r1').emit('bin', Buffer[1,2])", () => { io0.to("r1").emit("bin", Buffer.from([1, 2])); }, { deliveries: true });
await step("io0.to(['r1','r2']).emit('hello', 2)", () => { io0.to(["r1", "r2"]).emit("hello", 2); }, { deliveries: true });
await step("io0.emit('hello', 3)", () => { io0.emit("hello", 3); }, { deliveries: true });
await step("io0.except('r1').emit('hello', 4)", () => { io0.except("r1").emit("hello", 4); }, { deliveries: true });
await step("socket0.to('r3').volatile.emit('x')", () => { socket0.to("r3").volatile.emit("x"); }, { deliveries: true });
await step("io0.to(socket1.id).emit('direct')", () => { io0.to(socket1.id).emit("direct"); }, { deliveries: true });
await step("io0.to('r1').timeout(500).emit('hello', cb)", () =>
  new Promise((r) => io0.to("r1").timeout(500).emit("hello", (err, res) => r({ err: err && err.message, res }))),
  { deliveries: true });
await step("io0.in('r1').fetchSockets()", async () =>
  (await io0.in("r1").fetchSockets()).map((s) => ({ id: s.id, rooms: [...s.rooms], data: s.data })));
await step("io0.serverSideEmit('hello', 'w', 1)", () => { io0.serverSideEmit("hello", "w", 1); });
await step("io0.serverSideEmitWithAck('hello')", () => io0.serverSideEmitWithAck("hello"));
await step("io0.in('r1').socketsJoin('r4')", () => { io0.in("r1").socketsJoin("r4"); });
await step("io0.in('r4').socketsLeave('r4')", () => { io0.in("r4").socketsLeave("r4"); });
await step("io0.of('/').adapter.serverCount()", () => io0.of("/").adapter.serverCount());

// @socket.io/redis-emitter 5.1.0 only knows PUBLISH and the classic envelope: on a cluster
// client PUBLISH goes to any node (classic pub/sub is broadcast over the cluster bus) and
// reaches no SSUBSCRIBE subscriber. Recorded once to show that nothing is delivered.
const emitter = new Emitter(await cluster("emitter"));
await step("emitter.to('r1').emit('hello', {a:1}) (classic PUBLISH: not received)", () => {
  emitter.to("r1").emit("hello", { a: 1 });
}, { deliveries: true, settle: 300 });

await step("io0.in(socket1.id).disconnectSockets()", () => { io0.in(socket1.id).disconnectSockets(); }, { settle: 300 });
await sleep(200);

// --- attribute the MONITOR lines to client names, merge by time, write the trace
const names = new Map(); // "port addr" -> name
for (const m of monitored) {
  const [cmd, sub, name] = m.args.map((a) => a.toString("utf8"));
  if (cmd?.toUpperCase() === "CLIENT" && sub?.toUpperCase() === "SETNAME") names.set(`${m.port} ${m.addr}`, name);
}
for (const port of ports) {
  const c = createClient({ url: `redis://${HOST}:${port}` });
  await c.connect();
  for (const line of String(await c.sendCommand(["CLIENT", "LIST"])).split("\n")) {
    const addr = /addr=(\S+)/.exec(line)?.[1];
    const name = /name=(\S*)/.exec(line)?.[1];
    if (addr && name) names.set(`${port} ${addr}`, name);
  }
  await c.disconnect();
}
monitored.sort((a, b) => Number(a.ts) - Number(b.ts)); // stable: same-timestamp lines keep node order

const trace = [{
  captured_with: {
    "socket.io": version("socket.io"),
    "socket.io-client": version("socket.io-client"),
    "@socket.io/redis-adapter": version("@socket.io/redis-adapter"),
    "@socket.io/redis-emitter": version("@socket.io/redis-emitter"),
    redis: version("redis"),
    "redis-server": String(await marker.sendCommand(["INFO", "server"])).match(/redis_version:(\S+)/)[1],
    adapter: `createShardedAdapter(pub, sub, { subscriptionMode: "${mode}" })`,
  },
}];
const payload = (b) => (b[0] === 0x7b ? { json: b.toString("utf8") } : { msgpack_hex: b.toString("hex") });
const problems = [];
for (const m of monitored) {
  const by = names.get(`${m.port} ${m.addr}`);
  if (!by) continue;
  const [cmd, ...args] = m.args;
  const op = cmd.toString().toUpperCase();
  const node = topology.get(m.port);
  const routed = (channel) => {
    const slot = calculateSlot(channel);
    if (ownerOfSlot(slot) !== m.port) problems.push(`${op} ${channel} (slot ${slot}) ran on ${node}`);
    return slot;
  };
  if (by === "marker") {
    if (op !== "ECHO") continue;
    const text = args[0].toString("utf8");
    if (text.startsWith("step ")) trace.push({ step: text.slice(5) });
    else if (text.startsWith("result ")) trace.push({ result: JSON.parse(text.slice(7)) });
  } else if (op === "SPUBLISH") {
    const channel = args[0].toString("utf8");
    trace.push({ op, by, channel, slot: routed(channel), node, ...payload(args[1]) });
  } else if (op === "SSUBSCRIBE" || op === "SUNSUBSCRIBE") {
    for (const c of args) {
      const channel = c.toString("utf8");
      trace.push({ op, by, channel, slot: routed(channel), node });
    }
  } else if (op === "PUBLISH") {
    trace.push({ op, by, channel: args[0].toString("utf8"), node, ...payload(args[1]) });
  } else if (op === "SUBSCRIBE" || op === "PSUBSCRIBE") {
    for (const c of args) trace.push({ op, by, channel: c.toString("utf8"), node });
  } else if (op === "PUBSUB") {
    trace.push({ op: `PUBSUB ${args[0].toString().toUpperCase()}`, by, channel: args[1].toString("utf8"), node });
  }
}
for (const p of problems) console.error(`warning: not on the slot owner: ${p}`);
console.log("[\n" + trace.map((e) => JSON.stringify(e)).join(",\n") + "\n]");

for (const c of clients) c.disconnect();
for (const io of servers) io.close();
for (const s of monitors) s.destroy();
process.exit(0);
