// Records the Redis traffic of two socket.io servers using @socket.io/redis-adapter (classic
// protocol) and of @socket.io/redis-emitter, on a real redis-server, through MONITOR.
//
//   node capture.mjs <redis-port> > ../trace-classic.json      (capture.sh does this)
//
// Every Redis client gets a name (CLIENT SETNAME); the MONITOR stream is attributed to the
// names with CLIENT LIST at the end. Steps and results are written into the same stream with
// ECHO from a separate "marker" connection, awaited before each action, so the trace is in
// the order Redis executed the commands.
import net from "node:net";
import { createRequire } from "node:module";
import { createClient } from "redis";
import { Server } from "socket.io";
import { io as ioc } from "socket.io-client";
import { createAdapter } from "@socket.io/redis-adapter";
import { Emitter } from "@socket.io/redis-emitter";

const port = Number(process.argv[2]);
if (!port) {
  console.error("usage: node capture.mjs <redis-port>");
  process.exit(2);
}
const url = `redis://127.0.0.1:${port}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const require = createRequire(import.meta.url);
const version = (name) => require(`${name}/package.json`).version;

// --- MONITOR over a raw connection: one "+<ts> [<db> <addr>] "CMD" "arg" ..." line per command.
const monitorLines = [];
const monitor = net.connect(port, "127.0.0.1");
let pending = "";
monitor.setEncoding("latin1");
monitor.on("data", (chunk) => {
  pending += chunk;
  let i;
  while ((i = pending.indexOf("\r\n")) >= 0) {
    monitorLines.push(pending.slice(0, i));
    pending = pending.slice(i + 2);
  }
});
await new Promise((r) => monitor.once("connect", r));
monitor.write("MONITOR\r\n");
while (!monitorLines.includes("+OK")) await sleep(10);

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

async function client(name) {
  const c = createClient({ url, name });
  c.on("error", (e) => console.error(name, e.message));
  await c.connect();
  return c;
}

const marker = await client("marker");
const mark = (step) => marker.sendCommand(["ECHO", `step ${step}`]);
const result = (value) => marker.sendCommand(["ECHO", `result ${JSON.stringify(value)}`]);

// --- two socket.io servers sharing Redis, one socket.io-client each
const servers = [], clients = [], serverSockets = [];
for (let i = 0; i < 2; i++) {
  const pub = await client(`node${i}-pub`);
  const sub = await client(`node${i}-sub`);
  const io = new Server({ adapter: createAdapter(pub, sub) });
  io.listen(0);
  io.on("connection", (s) => (serverSockets[i] = s));
  io.on("hello", (...args) => {
    const cb = args[args.length - 1];
    if (typeof cb === "function") cb(`pong${i}`);
  });
  const c = ioc(`http://127.0.0.1:${io.httpServer.address().port}`, { transports: ["websocket"] });
  c.on("hello", (...args) => {
    const cb = args[args.length - 1];
    if (typeof cb === "function") cb(`ack-from-client${i}`);
  });
  servers.push(io);
  clients.push(c);
}
await sleep(300);
const [io0, io1] = servers;

await mark("socket1.join('r1')");
serverSockets[1].join("r1");
await sleep(50);
await mark("io0.to('r1').emit('hello', {a:1})");
io0.to("r1").emit("hello", { a: 1 });
await sleep(50);
await mark("io0.emit('hello', Buffer[1,2])");
io0.emit("hello", Buffer.from([1, 2]));
await sleep(50);
await mark("socket0.to('r1').except('r2').volatile.compress(false).emit('x')");
serverSockets[0].to("r1").except("r2").volatile.compress(false).emit("x");
await sleep(50);
await mark("io0.timeout(300).emit('hello', cb)");
const acks = await new Promise((r) =>
  io0.timeout(300).emit("hello", (err, res) => r({ err: err && err.message, res })),
);
await result(acks);
await sleep(50);
await mark("io0.in('r1').socketsJoin('r2')");
io0.in("r1").socketsJoin("r2");
await sleep(50);
await mark("io0.in('r2').socketsLeave(['r2'])");
io0.in("r2").socketsLeave(["r2"]);
await sleep(50);
await mark("io0.in('r1').fetchSockets()");
await result((await io0.in("r1").fetchSockets()).map((s) => s.id));
await sleep(50);
await mark("io0.serverSideEmit('hello', 'w', 1)");
io0.serverSideEmit("hello", "w", 1);
await sleep(50);
await mark("io0.serverSideEmitWithAck('hello')");
await result(await io0.serverSideEmitWithAck("hello"));
await sleep(50);
await mark("adapter0.allRooms()");
await result([...(await io0.of("/").adapter.allRooms())]);
await sleep(50);

// --- the emitter (no socket.io server of its own)
const emitter = new Emitter(await client("emitter"));
await mark("emitter.to('r1').emit('hello', {a:1})");
emitter.to("r1").emit("hello", { a: 1 });
await mark("emitter.of('/admin').except('r3').volatile.emit('e')");
emitter.of("/admin").except("r3").volatile.emit("e");
await mark("emitter.in('r1').socketsJoin('r9')");
emitter.in("r1").socketsJoin("r9");
await mark("emitter.socketsLeave('r9')");
emitter.socketsLeave("r9");
await mark("emitter.in('r1').disconnectSockets(true)");
emitter.in("r1").disconnectSockets(true);
await mark("emitter.serverSideEmit('hello', 1)");
emitter.serverSideEmit("hello", 1);
await sleep(200);

// --- attribute the MONITOR lines to client names, then write the trace
const names = new Map();
for (const line of String(await marker.sendCommand(["CLIENT", "LIST"])).split("\n")) {
  const addr = /addr=(\S+)/.exec(line)?.[1];
  const name = /name=(\S*)/.exec(line)?.[1];
  if (addr && name) names.set(addr, name);
}
const trace = [{
  captured_with: {
    "socket.io": version("socket.io"),
    "socket.io-client": version("socket.io-client"),
    "@socket.io/redis-adapter": version("@socket.io/redis-adapter"),
    "@socket.io/redis-emitter": version("@socket.io/redis-emitter"),
    redis: version("redis"),
  },
}];
const payload = (b) => (b[0] === 0x7b ? { json: b.toString("utf8") } : { msgpack_hex: b.toString("hex") });
for (const line of monitorLines) {
  const m = /^\+[\d.]+ \[\d+ ([^\]]+)\] (.*)$/.exec(line);
  if (!m) continue;
  const by = names.get(m[1]);
  if (!by) continue;
  const [cmd, ...args] = parseArgs(m[2]);
  const op = cmd.toString().toUpperCase();
  if (by === "marker") {
    if (op !== "ECHO") continue;
    const text = args[0].toString("utf8");
    if (text.startsWith("step ")) trace.push({ step: text.slice(5) });
    else if (text.startsWith("result ")) trace.push({ result: JSON.parse(text.slice(7)) });
  } else if (op === "PUBLISH") {
    trace.push({ op, by, channel: args[0].toString("utf8"), ...payload(args[1]) });
  } else if (op === "SUBSCRIBE") {
    for (const c of args) trace.push({ op, by, channel: c.toString("utf8") });
  } else if (op === "PSUBSCRIBE") {
    for (const p of args) trace.push({ op, by, pattern: p.toString("utf8") });
  } else if (op === "PUBSUB") {
    trace.push({ op: `PUBSUB ${args[0].toString().toUpperCase()}`, by, channel: args[1].toString("utf8") });
  }
}
console.log("[\n" + trace.map((e) => JSON.stringify(e)).join(",\n") + "\n]");

for (const c of clients) c.disconnect();
for (const io of servers) io.close();
monitor.destroy();
process.exit(0);
