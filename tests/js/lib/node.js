'use strict';
// Test harness for the fanout-node interop suite: start/stop a node process, REST helpers and
// socket.io-client helpers. Everything is bounded in time and only talks to 127.0.0.1.

const { spawn } = require('node:child_process');
const net = require('node:net');
const path = require('node:path');
const crypto = require('node:crypto');
const http = require('node:http');
const { io } = require('socket.io-client');

const REPO = path.resolve(__dirname, '..', '..', '..');
const BIN = process.env.FANOUT_NODE_BIN || path.join(REPO, 'target', 'debug', 'fanout-node');
const HOST = '127.0.0.1';

/** Nodes started by this process and not stopped yet (killed on exit as a last resort). */
const liveNodes = new Set();
process.on('exit', () => {
  for (const proc of liveNodes) {
    try {
      process.kill(proc.pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
});

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A free TCP port on 127.0.0.1: listen on port 0, read it, close. */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, HOST, () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Starts a fanout-node on a free port and waits until GET /healthz answers 200 (10 s max).
 * Returns { url, port, proc, pid, logs(), stop(signal) → Promise<exitCode>, exited }.
 */
async function startNode({ env = {}, args = [], readyTimeoutMs = 10_000 } = {}) {
  const port = await freePort();
  const url = `http://${HOST}:${port}`;
  let output = '';
  const proc = spawn(BIN, ['--bind', `${HOST}:${port}`, ...args], {
    env: { ...process.env, FANOUT_LOG: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  liveNodes.add(proc);
  proc.stdout.on('data', (d) => {
    output += d.toString();
  });
  proc.stderr.on('data', (d) => {
    output += d.toString();
  });
  let exitInfo = null;
  const exited = new Promise((resolve) => {
    proc.on('exit', (code, signal) => {
      exitInfo = { code, signal };
      liveNodes.delete(proc);
      resolve(exitInfo);
    });
    proc.on('error', (err) => {
      exitInfo = { code: null, signal: null, error: err };
      liveNodes.delete(proc);
      resolve(exitInfo);
    });
  });

  const deadline = Date.now() + readyTimeoutMs;
  for (;;) {
    if (exitInfo) {
      throw new Error(
        `fanout-node exited before it was healthy (${JSON.stringify(exitInfo)}); logs:\n${output}`,
      );
    }
    try {
      const res = await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(1000) });
      if (res.status === 200) {
        await res.arrayBuffer();
        break;
      }
    } catch {
      /* not listening yet */
    }
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`fanout-node not healthy within ${readyTimeoutMs} ms; logs:\n${output}`);
    }
    await sleep(50);
  }

  return {
    url,
    port,
    proc,
    pid: proc.pid,
    exited,
    logs: () => output,
    /** Sends `signal` to this node's PID; resolves with the exit code (SIGKILL after 20 s). */
    async stop(signal = 'SIGTERM', timeoutMs = 20_000) {
      if (exitInfo) return exitInfo.code;
      try {
        process.kill(proc.pid, signal);
      } catch {
        /* already gone */
      }
      let timer;
      const timeout = new Promise((resolve) => {
        timer = setTimeout(() => resolve('timeout'), timeoutMs);
      });
      const first = await Promise.race([exited, timeout]);
      clearTimeout(timer);
      if (first === 'timeout') {
        try {
          process.kill(proc.pid, 'SIGKILL');
        } catch {
          /* gone */
        }
        await exited;
        throw new Error(`fanout-node did not exit within ${timeoutMs} ms after ${signal}`);
      }
      return first.code;
    },
  };
}

// ---------------------------------------------------------------- REST

/** A request body sent as is (contentType null: no Content-Type header). */
class RawBody {
  constructor(bytes, contentType = 'application/json') {
    this.bytes = bytes;
    this.contentType = contentType;
  }
}
const raw = (bytes, contentType) => new RawBody(bytes, contentType);

/**
 * Calls the REST API. body: a JS value (sent as JSON) or raw(bytes, contentType).
 * Returns { status, body (parsed JSON, else text), text, headers }.
 */
async function api(base, method, urlPath, body, token, { headers = {}, timeoutMs = 10_000 } = {}) {
  const init = { method, headers: { ...headers }, signal: AbortSignal.timeout(timeoutMs) };
  if (token) init.headers.authorization = token;
  if (body !== undefined) {
    if (body instanceof RawBody) {
      init.body = body.bytes;
      if (body.contentType !== null) init.headers['content-type'] = body.contentType;
    } else {
      init.body = JSON.stringify(body);
      init.headers['content-type'] = 'application/json';
    }
  }
  const res = await fetch(base + urlPath, init);
  const text = await res.text();
  let parsed = text;
  try {
    parsed = text.length ? JSON.parse(text) : null;
  } catch {
    /* not JSON */
  }
  return { status: res.status, body: parsed, text, headers: res.headers };
}

/** Like h.api, but from a chosen local address. Returns { status, body, headers, ms }. */
function apiFrom(localAddress, base, method, path, body, token) {
  return new Promise((resolve, reject) => {
    const url = new URL(base + path);
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers = {};
    if (payload) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = payload.length;
    }
    if (token) headers.authorization = token;
    const started = process.hrtime.bigint();
    const req = http.request(
      { host: url.hostname, port: url.port, path: url.pathname + url.search, method, headers, localAddress, agent: false, timeout: 20_000 },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const ms = Number(process.hrtime.bigint() - started) / 1e6;
          const text = Buffer.concat(chunks).toString();
          let parsed = text;
          try {
            parsed = text.length ? JSON.parse(text) : null;
          } catch {
            /* not JSON */
          }
          resolve({ status: res.statusCode, body: parsed, text, headers: res.headers, ms });
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${method} ${path} from ${localAddress}: timeout`)));
    req.on('error', reject);
    if (payload) req.write(payload);
    req.end();
  });
}

let userCounter = 0;
/** A unique username (tests must not share users). */
function uniqueName(prefix = 'u') {
  userCounter += 1;
  return `${prefix}-${process.pid}-${userCounter}-${crypto.randomBytes(3).toString('hex')}`;
}

/** POST /api/users; returns the response. */
function createUser(base, { username, email, password = 'secret123' } = {}) {
  username = username || uniqueName();
  email = email || `${username}@example.com`;
  return api(base, 'POST', '/api/users', { username, email, password });
}

/** POST /api/users/login; returns the response. */
function login(base, body) {
  return api(base, 'POST', '/api/users/login', body);
}

/** Creates a unique user and logs in: { username, userId, token, login }. Throws on failure. */
async function newUser(base, prefix = 'u', loginExtra = {}) {
  const username = uniqueName(prefix);
  const password = 'secret123';
  const created = await createUser(base, { username, password });
  if (created.status !== 201) {
    throw new Error(`createUser: ${created.status} ${created.text}`);
  }
  const res = await login(base, { username, password, ...loginExtra });
  if (res.status !== 200) throw new Error(`login: ${res.status} ${res.text}`);
  return { username, password, userId: res.body.userId, token: res.body.id, login: res.body };
}

// ---------------------------------------------------------------- Socket.IO

/** Sockets created by connect()/rawSocket() and not yet closed by closeAll(). */
const openSockets = new Set();

/** A socket.io-client socket, not connected yet awaited, tracked for closeAll(). */
function rawSocket(url, opts = {}) {
  const socket = io(url, {
    forceNew: true,
    reconnection: false,
    transports: ['websocket'],
    timeout: 5000,
    ...opts,
  });
  openSockets.add(socket);
  return socket;
}

/**
 * A connected socket.io-client socket. Rejects with the error on connect_error, or after
 * `ms` (default 5 s).
 */
function connect(url, opts = {}, ms = 5000) {
  const socket = rawSocket(url, opts);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      socket.close();
      reject(new Error(`connect timeout after ${ms} ms`));
    }, ms);
    const onConnect = () => {
      cleanup();
      resolve(socket);
    };
    const onError = (err) => {
      cleanup();
      socket.close();
      reject(err);
    };
    function cleanup() {
      clearTimeout(timer);
      socket.off('connect', onConnect);
      socket.off('connect_error', onError);
    }
    socket.on('connect', onConnect);
    socket.on('connect_error', onError);
  });
}

/** Connects with the handshake token. */
function connectAuthed(url, token, opts = {}) {
  return connect(url, { ...opts, auth: { token } });
}

/** Closes every socket created through this module. */
function closeAll() {
  for (const s of openSockets) {
    try {
      s.close();
    } catch {
      /* ignore */
    }
  }
  openSockets.clear();
}

/** Resolves with the first argument of the next `event` (reject after `ms`). */
function once(socket, event, ms = 3000) {
  return onceArgs(socket, event, ms).then((args) => args[0]);
}

/** Resolves with all arguments of the next `event` (reject after `ms`). */
function onceArgs(socket, event, ms = 3000) {
  const p = new Promise((resolve, reject) => {
    const handler = (...args) => {
      clearTimeout(timer);
      resolve(args);
    };
    const timer = setTimeout(() => {
      socket.off(event, handler);
      reject(new Error(`timeout: no "${event}" within ${ms} ms`));
    }, ms);
    socket.once(event, handler);
  });
  // a test that fails before awaiting this must not also cause an unhandled rejection
  p.catch(() => {});
  return p;
}

/** socket.timeout(ms).emitWithAck(event, arg); with arg === undefined no argument is sent. */
function emitAck(socket, event, arg, ms = 3000) {
  const t = socket.timeout(ms);
  return arg === undefined ? t.emitWithAck(event) : t.emitWithAck(event, arg);
}

/** Like emitAck with any number of arguments. */
function emitAckArgs(socket, event, args, ms = 3000) {
  return socket.timeout(ms).emitWithAck(event, ...args);
}

/** Records every payload of `event` (first argument) in an array. */
function collect(socket, event) {
  const got = [];
  socket.on(event, (...args) => got.push(args.length <= 1 ? args[0] : args));
  return got;
}

/**
 * Polls `predicate` every 10 ms until it is true; rejects after `ms` with `what`. An async
 * predicate is awaited (its promise, always truthy, is never taken for the answer).
 */
async function waitUntil(predicate, ms = 3000, what = 'condition') {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timeout after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** Subscribes and asserts the ack is { ok: true, topic }. */
async function subscribe(socket, arg, ms = 3000) {
  const ack = await emitAck(socket, 'subscribe', arg, ms);
  if (!ack || ack.ok !== true) throw new Error(`subscribe ${JSON.stringify(arg)} failed: ${JSON.stringify(ack)}`);
  return ack;
}

/** GET /metrics as text. */
async function metrics(base) {
  const res = await fetch(`${base}/metrics`, { signal: AbortSignal.timeout(5000) });
  return res.text();
}

/** Value of one Prometheus sample line (`name{labels}`), or undefined. */
function metricValue(text, sample) {
  for (const line of text.split('\n')) {
    if (line.startsWith(sample + ' ')) return Number(line.slice(sample.length + 1));
  }
  return undefined;
}

/** Sum of every sample of `name` whose labels include all of `labels` (none: every sample). */
function metricSum(text, name, labels = {}) {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const want = Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`));
    if (want) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

module.exports = {
  BIN,
  HOST,
  REPO,
  sleep,
  freePort,
  startNode,
  api,
  apiFrom,
  raw,
  uniqueName,
  createUser,
  login,
  newUser,
  rawSocket,
  connect,
  connectAuthed,
  closeAll,
  once,
  onceArgs,
  emitAck,
  emitAckArgs,
  collect,
  waitUntil,
  subscribe,
  metrics,
  metricValue,
  metricSum,
};
