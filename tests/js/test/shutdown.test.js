'use strict';
// Graceful shutdown: SIGTERM → /readyz 503, new Socket.IO handshakes refused with 503,
// existing connections closed at the transport level in batches (socket.io-client sees
// "transport close"/"transport error" and would reconnect), exit code 0 in bounded time.

const { describe, it, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const h = require('../lib/node');

const TRANSPORT_REASONS = ['transport close', 'transport error'];

/** GET on a fresh TCP connection; resolves { status, body } or { error }. */
function freshGet(port, path, ms = 1000) {
  return new Promise((resolve) => {
    const req = http.get({ host: h.HOST, port, path, agent: false, timeout: ms }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (text += d));
      res.on('end', () => {
        let body = text;
        try {
          body = JSON.parse(text);
        } catch {
          /* not JSON */
        }
        resolve({ status: res.statusCode, body });
      });
      res.on('error', (error) => resolve({ error }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (error) => resolve({ error }));
  });
}

async function connectMany(node, token, n, optsFor = () => ({})) {
  const sockets = [];
  for (let i = 0; i < n; i++) {
    const s = await h.connect(node.url, { auth: { token }, ...optsFor(i) });
    const rec = { socket: s, reason: null, at: null };
    s.on('disconnect', (reason) => {
      rec.reason = reason;
      rec.at = Date.now();
    });
    sockets.push(rec);
  }
  return sockets;
}

describe('graceful shutdown', () => {
  let node;
  afterEach(async () => {
    h.closeAll();
    if (node) {
      await node.stop('SIGKILL').catch(() => {});
      node = null;
    }
  });

  it('SIGTERM with --drain-batch 5 --drain-interval-ms 50: 20 clients get a transport close, exit 0', async () => {
    node = await h.startNode({ args: ['--drain-batch', '5', '--drain-interval-ms', '50'] });
    const u = await h.newUser(node.url, 'drain');
    const clients = await connectMany(node, u.token, 20, (i) => (i % 4 === 3 ? { transports: ['polling'] } : {}));
    // every client is really up: an ack round trip each
    await Promise.all(clients.map((c) => h.emitAck(c.socket, 'whoami')));

    // poll /readyz on fresh connections while the node drains
    const readyz = [];
    let polling = true;
    const poller = (async () => {
      while (polling) {
        const r = await freshGet(node.port, '/readyz', 500);
        readyz.push(r.status ?? 'error');
        await h.sleep(5);
      }
    })();

    const t0 = Date.now();
    const exitCode = node.stop('SIGTERM', 15_000);
    await h.waitUntil(() => clients.every((c) => c.reason), 10_000, 'all 20 clients disconnected');
    const code = await exitCode;
    polling = false;
    await poller;
    const elapsed = Date.now() - t0;

    const reasons = clients.map((c) => c.reason);
    assert.deepEqual(
      reasons.filter((r) => !TRANSPORT_REASONS.includes(r)),
      [],
      `every disconnect is a transport close (got ${JSON.stringify(reasons)})`,
    );
    assert.equal(code, 0, `exit code (logs: ${node.logs().slice(-2000)})`);
    assert.ok(elapsed < 10_000, `exit took ${elapsed} ms`);
    // readyz: once it said 503 it never said 200 again
    const first503 = readyz.indexOf(503);
    if (first503 >= 0) {
      assert.deepEqual(readyz.slice(first503).filter((s) => s === 200), [], `readyz sequence ${readyz}`);
    }
    node = null;
  });

  it('slow drain: readyz 503, new handshakes 503, batches spaced by the interval, clients would reconnect', async () => {
    node = await h.startNode({ args: ['--drain-batch', '5', '--drain-interval-ms', '800', '--drain-timeout-ms', '20000'] });
    const u = await h.newUser(node.url, 'slow');
    const clients = await connectMany(node, u.token, 20, (i) => (i % 5 === 4 ? { transports: ['polling'] } : {}));
    // one more client with reconnection on: it must try to reconnect after the transport close
    const reconnecting = h.rawSocket(node.url, {
      auth: { token: u.token },
      reconnection: true,
      reconnectionDelay: 100,
      reconnectionDelayMax: 200,
      reconnectionAttempts: 50,
    });
    await h.once(reconnecting, 'connect', 5000);
    const reconnectAttempt = h.once(reconnecting.io, 'reconnect_attempt', 15_000);
    const recDisc = h.once(reconnecting, 'disconnect', 15_000);
    assert.equal((await freshGet(node.port, '/readyz')).status, 200);

    const t0 = Date.now();
    process.kill(node.pid, 'SIGTERM');

    // readyz turns 503 with a JSON body saying so
    let ready;
    const deadline = Date.now() + 3000;
    do {
      ready = await freshGet(node.port, '/readyz', 500);
      if (ready.status === 503) break;
      await h.sleep(10);
    } while (Date.now() < deadline);
    assert.equal(ready.status, 503, `readyz during drain: ${JSON.stringify(ready)}`);
    assert.equal(ready.body.ready, false);
    assert.equal(ready.body.draining, true);

    // a new Socket.IO handshake (polling and websocket) is refused with 503
    const hs = await freshGet(node.port, '/socket.io/?EIO=4&transport=polling', 1000);
    assert.equal(hs.status, 503, `polling handshake during drain: ${JSON.stringify(hs)}`);
    assert.equal(hs.body?.error?.code, 'unavailable');
    await assert.rejects(h.connect(node.url, { auth: { token: u.token } }, 3000), 'websocket connect during drain must fail');
    // healthz still answers while draining (the process is alive)
    const hz = await freshGet(node.port, '/healthz', 1000);
    assert.ok(hz.status === 200 || hz.error, `healthz during drain: ${JSON.stringify(hz)}`);

    await h.waitUntil(() => clients.every((c) => c.reason), 15_000, 'all clients disconnected');
    const reasons = clients.map((c) => c.reason);
    assert.deepEqual(reasons.filter((r) => !TRANSPORT_REASONS.includes(r)), [], JSON.stringify(reasons));
    const times = clients.map((c) => c.at).sort((a, b) => a - b);
    // 21 connections in batches of 5 at 800 ms: the last batch closes ≥ 3 intervals after the first
    assert.ok(times[times.length - 1] - times[0] >= 3 * 800 - 300, `drain spread ${times[times.length - 1] - times[0]} ms`);
    assert.ok(times[0] - t0 < 2000, 'the first batch closes promptly');
    // no more than one batch (5 connections) closed within a window much shorter than the interval
    for (let i = 0; i + 5 < times.length; i++) {
      assert.ok(times[i + 5] - times[i] >= 300, `more than 5 connections closed within 300 ms (index ${i})`);
    }

    assert.ok(TRANSPORT_REASONS.includes(await recDisc));
    await reconnectAttempt; // socket.io-client tries to reconnect after a transport close
    reconnecting.close();

    const code = await node.stop('SIGTERM', 20_000);
    assert.equal(code, 0);
    node = null;
  });

  it('SIGINT on an idle node exits 0 promptly', async () => {
    node = await h.startNode({});
    const t0 = Date.now();
    assert.equal(await node.stop('SIGINT', 10_000), 0);
    assert.ok(Date.now() - t0 < 5000);
    node = null;
  });

  it('--drain-timeout-ms bounds the drain: exit 0 even with connections left', async () => {
    node = await h.startNode({ args: ['--drain-batch', '1', '--drain-interval-ms', '2000', '--drain-timeout-ms', '500'] });
    const u = await h.newUser(node.url, 'bounded');
    const clients = await connectMany(node, u.token, 5);
    const t0 = Date.now();
    const code = await node.stop('SIGTERM', 15_000);
    const elapsed = Date.now() - t0;
    assert.equal(code, 0);
    assert.ok(elapsed < 8000, `exit took ${elapsed} ms`);
    await h.waitUntil(() => clients.every((c) => c.reason), 5000, 'clients see the end');
    assert.deepEqual(clients.map((c) => c.reason).filter((r) => !TRANSPORT_REASONS.includes(r)), []);
    node = null;
  });
});
