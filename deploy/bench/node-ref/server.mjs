// node-ref: what a team would run instead of fanout — one Node.js process per node,
// socket.io 4.8 with @socket.io/redis-adapter 8.3 (classic protocol) — serving the part of
// fanout's client protocol that fanout-loadtest drives (docs/PROTOCOL.md, namespace "/"):
//
//   handshake  auth { token }: GET <prefix>:token:<sha256 hex of token> must hold a JSON
//              record with a userId, else connect_error "unauthorized"
//   subscribe / unsubscribe   "topic" | { topic }  -> join/leave the room, ack { ok: true, topic }
//   publish    { topic, data }                     -> every subscriber gets event <topic> with
//              data, through the adapter; ack { ok: true }
//   <prefix>:events  { topic, data } published on Redis by an external producer -> each node
//              delivers to its own subscribers
//   GET /healthz -> 200 "ok"
//
// No REST API, /ws, methods or model topics: a load generator writes tokens into Redis
// itself (fanout-loadtest --seed-redis). Invalid topics get fanout's error shape.
//
// Env: PORT (3000), BIND_HOST (127.0.0.1), REDIS_URL (redis://127.0.0.1:6379),
//      FANOUT_PREFIX (fanout).
import { createHash } from "node:crypto";
import { createServer } from "node:http";
import { createClient } from "redis";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-adapter";

const port = Number(process.env.PORT ?? 3000);
const host = process.env.BIND_HOST ?? "127.0.0.1";
const redisUrl = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const prefix = process.env.FANOUT_PREFIX ?? "fanout";

const RESERVED = new Set(["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"]);

/** fanout's topic rule: 1–256 bytes, no control characters, not a reserved event name. */
function parseTopic(value) {
  const topic = value !== null && typeof value === "object" ? value.topic : value;
  if (typeof topic !== "string") return null;
  const bytes = Buffer.byteLength(topic);
  // eslint-disable-next-line no-control-regex
  if (bytes < 1 || bytes > 256 || /[\u0000-\u001f\u007f-\u009f]/.test(topic) || RESERVED.has(topic)) {
    return null;
  }
  return topic;
}

const invalidTopic = { error: { code: "invalid_topic", message: "invalid topic" } };
const reply = (ack, value) => typeof ack === "function" && ack(value);

async function redis(name) {
  const client = createClient({ url: redisUrl, name });
  client.on("error", (err) => console.error(`redis ${name}: ${err.message}`));
  await client.connect();
  return client;
}

const [pub, sub, cmd, events] = await Promise.all(
  ["node-ref-pub", "node-ref-sub", "node-ref-cmd", "node-ref-events"].map(redis),
);

const http = createServer((req, res) => {
  if (req.url === "/healthz") {
    res.writeHead(200, { "content-type": "text/plain" }).end("ok");
  } else {
    res.writeHead(404).end();
  }
});
const io = new Server(http, { adapter: createAdapter(pub, sub), cors: { origin: true } });

io.use(async (socket, next) => {
  const token = socket.handshake.auth?.token;
  if (typeof token !== "string" || token === "") return next(new Error("unauthorized"));
  try {
    const hash = createHash("sha256").update(token).digest("hex");
    const record = JSON.parse((await cmd.get(`${prefix}:token:${hash}`)) ?? "null");
    if (record?.userId == null) return next(new Error("unauthorized"));
    socket.data.userId = record.userId;
    next();
  } catch {
    next(new Error("unauthorized"));
  }
});

io.on("connection", (socket) => {
  socket.on("subscribe", (arg, ack) => {
    const topic = parseTopic(arg);
    if (topic === null) return reply(ack, invalidTopic);
    socket.join(topic);
    reply(ack, { ok: true, topic });
  });
  socket.on("unsubscribe", (arg, ack) => {
    const topic = parseTopic(arg);
    if (topic === null) return reply(ack, invalidTopic);
    socket.leave(topic);
    reply(ack, { ok: true, topic });
  });
  socket.on("publish", (arg, ack) => {
    const topic = arg !== null && typeof arg === "object" ? parseTopic(arg.topic) : null;
    if (topic === null) return reply(ack, invalidTopic);
    io.to(topic).emit(topic, arg.data ?? null);
    reply(ack, { ok: true });
  });
});

// Every node receives the events channel: deliver to local subscribers only.
await events.subscribe(`${prefix}:events`, (message) => {
  try {
    const { topic: raw, data } = JSON.parse(message);
    const topic = parseTopic(raw);
    if (topic !== null) io.local.to(topic).emit(topic, data ?? null);
  } catch {
    // not JSON: ignored, as fanout counts and skips it
  }
});

http.listen(port, host, () => console.error(`node-ref listening on ${host}:${port}`));

function shutdown() {
  io.close();
  Promise.allSettled([pub, sub, cmd, events].map((c) => c.quit())).finally(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
