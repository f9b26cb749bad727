'use strict';
// Resource limits at the HTTP / transport level (docs/OPERATIONS.md "Limits"): header and
// idle timeouts, the connection caps (per node, per client address, behind a trusted proxy),
// Socket.IO binary attachments, and the bound on anonymous /chat and /stream sockets.
// Real node processes on loopback; every wait is bounded.

const { describe, it, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const fs = require('node:fs');
const { spawnSync } = require('node:child_process');
const WebSocket = require('ws');
const h = require('../lib/node');

/** Open TCP connections and refusals, from /metrics. */
async function tcpStats(node) {
  const text = await h.metrics(node.url);
  const v = (sample) => h.metricValue(text, sample) ?? 0;
  return {
    open: v('fanout_tcp_connections'),
    maxConn: v('fanout_tcp_connections_rejected_total{reason="max_connections"}'),
    perIp: v('fanout_tcp_connections_rejected_total{reason="per_ip"}'),
    perIpForwarded: v('fanout_tcp_connections_rejected_total{reason="per_ip_forwarded"}'),
    headerTimeout: v('fanout_http_connections_closed_total{reason="header_timeout"}'),
    idle: v('fanout_http_connections_closed_total{reason="idle"}'),
    requestTimeout: v('fanout_http_connections_closed_total{reason="request_timeout"}'),
    chatIdle: v('fanout_sockets_idle_closed_total{namespace="/chat"}'),
    streamIdle: v('fanout_sockets_idle_closed_total{namespace="/stream"}'),
    parseErrors: v('fanout_disconnections_total{namespace="/chat",reason="packet_parsing_error"}'),
  };
}

/** Polls `fn` (async, → boolean) every 100 ms until true; fails after `ms`. */
async function eventually(what, ms, fn) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      if (await fn()) return;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`not within ${ms} ms: ${what}${last ? ` (${last.message})` : ''}`);
    }
    await h.sleep(100);
  }
}

/** Raw TCP sockets opened by a test; destroyed after each. */
const raw = new Set();
function tcp(port, { localAddress, write } = {}) {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: h.HOST, port, localAddress }, () => {
      if (write) s.write(write);
      resolve(s);
    });
    s.resume(); // flowing, so a close by the server surfaces as 'end' and 'close'
    s.closedByPeer = false;
    s.on('end', () => {
      s.closedByPeer = true;
    });
    s.on('close', () => {
      s.closedByPeer = true;
    });
    s.on('error', () => {
      s.closedByPeer = true;
    });
    s.once('error', reject);
    raw.add(s);
  });
}

/** Resolves true when `s` is closed by the server within `ms`, false otherwise. */
function closedWithin(s, ms) {
  if (s.closedByPeer) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    const done = () => {
      clearTimeout(t);
      resolve(true);
    };
    s.once('end', done);
    s.once('close', done);
  });
}

/** Resident set size of a process in bytes (Linux). */
function rss(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/VmRSS:\s+(\d+) kB/.exec(status)[1]);
  return kb * 1024;
}

/** A WebSocket upgrade to /ws: resolves { ws } once open, or { status } when refused. */
function wsUpgrade(node, { headers = {}, localAddress } = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${h.HOST}:${node.port}/ws`, { headers, localAddress });
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error('ws upgrade: no answer in 3 s'));
    }, 3000);
    ws.on('open', () => {
      clearTimeout(timer);
      resolve({ ws });
    });
    ws.on('unexpected-response', (_req, res) => {
      clearTimeout(timer);
      let body = '';
      res.on('data', (d) => {
        body += d;
      });
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    ws.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    openWs.add(ws);
  });
}
const openWs = new Set();

/**
 * A raw Engine.IO WebSocket connected to namespace `ns`; answers pings. Resolves once the
 * CONNECT reply arrives.
 */
function rawSio(node, ns) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${h.HOST}:${node.port}/socket.io/?EIO=4&transport=websocket`);
    openWs.add(ws);
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error('raw socket.io: no CONNECT answer in 3 s'));
    }, 3000);
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      const text = data.toString();
      if (text === '2') ws.send('3');
      // Namespace `/` is addressed without a prefix: CONNECT `40`, reply `40{"sid":…}`.
      const prefix = ns ? `40${ns},` : '40';
      if (text.startsWith('0{')) ws.send(prefix);
      if (text.startsWith(ns ? prefix : '40{')) {
        clearTimeout(timer);
        resolve(ws);
      }
    });
    ws.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

function wsClosed(ws, ms) {
  if (ws.readyState === WebSocket.CLOSED) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    ws.once('close', () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

function cleanup() {
  for (const s of raw) s.destroy();
  raw.clear();
  for (const ws of openWs) ws.terminate();
  openWs.clear();
  h.closeAll();
}

describe('limits', () => {
  let node;
  afterEach(async () => {
    cleanup();
    if (node) {
      assert.equal(await node.stop(), 0, node.logs());
      node = null;
    }
  });
  after(cleanup);

  it('the connection cap has a production default derived from the open-file limit', () => {
    const help = spawnSync(h.BIN, ['--help'], { encoding: 'utf8', timeout: 10_000 });
    assert.equal(help.status, 0, help.stderr);
    const m = /--max-connections <MAX_CONNECTIONS>[\s\S]*?\[default: (\d+)\]/.exec(help.stdout);
    assert.ok(m, 'default shown in --help');
    assert.ok(Number(m[1]) > 0, `default ${m[1]} is a limit`);
    for (const flag of [
      'FANOUT_MAX_CONNECTIONS_PER_IP',
      'FANOUT_TRUSTED_PROXIES',
      'FANOUT_HTTP_HEADER_TIMEOUT_MS',
      'FANOUT_HTTP_IDLE_TIMEOUT_MS',
      'FANOUT_MAX_ATTACHMENTS',
      'FANOUT_ATTACHMENT_TIMEOUT_MS',
      'FANOUT_ANONYMOUS_IDLE_MS',
    ]) {
      assert.ok(help.stdout.includes(flag), `${flag} in --help`);
    }
  });

  it('600 silent and half-sent-header connections are closed by the header timeout', async () => {
    node = await h.startNode({ env: { FANOUT_HTTP_HEADER_TIMEOUT_MS: '2000' } });
    const silent = [];
    const halfHeaders = [];
    for (let i = 0; i < 300; i++) {
      silent.push(await tcp(node.port));
      halfHeaders.push(await tcp(node.port, { write: `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ${i}` }));
    }
    // The accept loop may lag the kernel's backlog by a moment.
    await eventually('all 600 connections open at first', 1500, async () => (await tcpStats(node)).open >= 600);
    const all = [...silent, ...halfHeaders];
    const closed = await Promise.all(all.map((s) => closedWithin(s, 8000)));
    assert.equal(closed.filter(Boolean).length, 600, 'every silent connection closed');
    await eventually('connections gone from fanout_tcp_connections', 3000, async () => {
      const now = await tcpStats(node);
      return now.open <= 2 && now.headerTimeout >= 600;
    });
    // A connection that does send its request in time is served normally.
    assert.equal((await h.api(node.url, 'GET', '/healthz')).status, 200);
  });

  it('a connection with nothing in flight and nothing moving is closed by the idle timeout', async () => {
    node = await h.startNode({
      env: {
        FANOUT_HTTP_HEADER_TIMEOUT_MS: '60000',
        FANOUT_HTTP_IDLE_TIMEOUT_MS: '2000',
      },
    });
    // Pipelined requests whose responses are never read: the server's writes stall once the
    // socket buffers fill; no request is in flight and no byte moves.
    const s = await tcp(node.port);
    s.pause();
    s.write('GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(3000));
    await eventually('the stalled connection reaped as idle', 8000, async () => (await tcpStats(node)).idle >= 1);
    await eventually('fanout_tcp_connections back down', 3000, async () => (await tcpStats(node)).open <= 2);
  });

  it('a request body trickled in a byte at a time gets 408 at the request timeout', async () => {
    node = await h.startNode({
      env: { FANOUT_PING_INTERVAL_MS: '1000', FANOUT_HTTP_REQUEST_TIMEOUT_MS: '2000' },
    });
    const s = await tcp(node.port);
    let answer = '';
    s.on('data', (d) => {
      answer += d.toString();
    });
    s.write('POST /api/users/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n');
    const trickle = setInterval(() => {
      if (!s.closedByPeer) s.write(' ');
    }, 200);
    try {
      assert.ok(await closedWithin(s, 6000), 'connection closed');
    } finally {
      clearInterval(trickle);
    }
    assert.match(answer, /^HTTP\/1\.1 408/);
    assert.ok((await tcpStats(node)).requestTimeout >= 1);
    // Long-polling still works with the same settings (a GET waits up to the ping interval).
    const polling = await h.connect(node.url, { transports: ['polling'], auth: {} });
    await h.sleep(3000);
    assert.ok(polling.connected, 'a long-polling client outlives the request timeout');
  });

  it('the node-wide connection cap refuses past the limit and counts', async () => {
    node = await h.startNode({ env: { FANOUT_MAX_CONNECTIONS: '20' } });
    const held = [];
    for (let i = 0; i < 15; i++) held.push(await tcp(node.port));
    await eventually('15 connections open', 3000, async () => (await tcpStats(node)).open >= 15);
    const extra = [];
    for (let i = 0; i < 10; i++) extra.push(await tcp(node.port));
    const closed = await Promise.all(extra.map((s) => closedWithin(s, 3000)));
    // 20 fit (the metrics connection may hold one); the rest are closed at once.
    assert.ok(closed.filter(Boolean).length >= 5, `refused: ${closed.filter(Boolean).length}`);
    assert.equal((await Promise.all(held.map((s) => closedWithin(s, 100)))).filter(Boolean).length, 0);
    for (const s of held) s.destroy();
    await eventually('refusals counted', 3000, async () => (await tcpStats(node)).maxConn >= 5);
  });

  it('the per-address cap applies to direct peers and ignores their X-Forwarded-For', async () => {
    node = await h.startNode({
      env: {
        FANOUT_MAX_CONNECTIONS_PER_IP: '3',
        FANOUT_TRUSTED_PROXIES: '10.0.0.0/8',
        FANOUT_AUTH_TIMEOUT_MS: '30000',
      },
    });
    // 127.0.0.2 is an untrusted direct peer; /metrics is fetched from 127.0.0.1.
    const held = [];
    for (let i = 0; i < 3; i++) held.push(await tcp(node.port, { localAddress: '127.0.0.2' }));
    const fourth = await tcp(node.port, { localAddress: '127.0.0.2' });
    assert.ok(await closedWithin(fourth, 3000), 'fourth connection from 127.0.0.2 refused');
    // A forged X-Forwarded-For from an untrusted peer changes nothing.
    await assert.rejects(
      wsUpgrade(node, { localAddress: '127.0.0.2', headers: { 'X-Forwarded-For': '203.0.113.50' } }),
    );
    // Another address is not affected.
    const other = await wsUpgrade(node, { localAddress: '127.0.0.3' });
    assert.ok(other.ws, 'other address upgrades');
    assert.ok((await tcpStats(node)).perIp >= 2);
    held[0].destroy();
    await eventually('a slot frees when a connection closes', 3000, async () => {
      const s = await tcp(node.port, { localAddress: '127.0.0.2' });
      return !(await closedWithin(s, 300));
    });
  });

  it('behind a trusted proxy the per-address cap counts WebSocket upgrades by X-Forwarded-For', async () => {
    node = await h.startNode({
      env: {
        FANOUT_MAX_CONNECTIONS_PER_IP: '2',
        FANOUT_TRUSTED_PROXIES: '127.0.0.4, 10.0.0.0/8',
        FANOUT_AUTH_TIMEOUT_MS: '30000',
      },
    });
    const proxy = { localAddress: '127.0.0.4' };
    // The proxy itself is not capped at accept: it carries many clients.
    for (let i = 0; i < 5; i++) await tcp(node.port, proxy);
    const xff = (v) => ({ ...proxy, headers: { 'X-Forwarded-For': v } });
    const a = await wsUpgrade(node, xff('198.51.100.7'));
    const b = await wsUpgrade(node, xff('198.51.100.7, 10.1.2.3'));
    assert.ok(a.ws && b.ws, 'two upgrades for 198.51.100.7');
    const c = await wsUpgrade(node, xff('198.51.100.7'));
    assert.equal(c.status, 429);
    assert.equal(JSON.parse(c.body).error.code, 'too_many_connections');
    // A client cannot escape by prepending an address: the right-most untrusted hop counts.
    const forged = await wsUpgrade(node, xff('192.0.2.99, 198.51.100.7'));
    assert.equal(forged.status, 429);
    // Socket.IO's WebSocket transport is capped the same way.
    const sio = await new Promise((resolve) => {
      const ws = new WebSocket(`ws://${h.HOST}:${node.port}/socket.io/?EIO=4&transport=websocket`, xff('198.51.100.7'));
      openWs.add(ws);
      ws.on('unexpected-response', (_req, res) => resolve(res.statusCode));
      ws.on('open', () => resolve('open'));
      ws.on('error', () => resolve('error'));
    });
    assert.equal(sio, 429);
    const other = await wsUpgrade(node, xff('198.51.100.8'));
    assert.ok(other.ws, 'another client behind the proxy upgrades');
    assert.ok((await tcpStats(node)).perIpForwarded >= 3);
    a.ws.close();
    await eventually('the slot frees when the upgraded connection closes', 3000, async () => {
      const d = await wsUpgrade(node, xff('198.51.100.7'));
      return Boolean(d.ws);
    });
  });

  describe('Socket.IO binary attachments', () => {
    it('a BINARY_EVENT announcing 10,000 attachments closes the connection at once', async () => {
      node = await h.startNode();
      const ws = await rawSio(node, '/chat');
      ws.send('4510000-/chat,["msg",{"_placeholder":true,"num":0}]');
      assert.ok(await wsClosed(ws, 3000), 'closed');
      await eventually('counted as a parse error', 3000, async () => (await tcpStats(node)).parseErrors >= 1);
    });

    it('attachments over FANOUT_MAX_PAYLOAD in total close the connection; memory is not held', async () => {
      node = await h.startNode({ env: { FANOUT_MAX_PAYLOAD: '1000000' } });
      const baseline = rss(node.pid);
      const chunk = Buffer.alloc(900_000, 7);
      // Each announces 11 attachments and sends 10 (9 MB): socketioxide's default 10 MB
      // bound would park all of it per socket, waiting for the 11th.
      const placeholders = Array.from({ length: 11 }, (_, n) => `{"_placeholder":true,"num":${n}}`);
      let closed = 0;
      for (let i = 0; i < 20; i++) {
        const ws = await rawSio(node, '/chat');
        ws.send(`4511-/chat,["msg",${placeholders.join(',')}]`);
        for (let n = 0; n < 10; n++) ws.send(chunk);
        if (await wsClosed(ws, 3000)) closed++;
      }
      assert.equal(closed, 20, 'every socket closed');
      await h.sleep(500);
      const grown = rss(node.pid) - baseline;
      // socketioxide's default (10 MB) let each socket park ~9 MB: 180 MB here.
      assert.ok(grown < 60 * 1024 * 1024, `RSS grew ${(grown / 1048576).toFixed(1)} MB`);
      assert.equal((await h.api(node.url, 'GET', '/healthz')).status, 200);
    });

    it('an attachment arriving after FANOUT_ATTACHMENT_TIMEOUT_MS closes the connection', async () => {
      node = await h.startNode({ env: { FANOUT_ATTACHMENT_TIMEOUT_MS: '500' } });
      const ws = await rawSio(node, '/chat');
      ws.send('452-/chat,["msg",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]');
      ws.send(Buffer.from('first'));
      await h.sleep(1000);
      ws.send(Buffer.from('late'));
      assert.ok(await wsClosed(ws, 3000), 'closed');
    });

    it('a packet within the limits still works (the connection stays)', async () => {
      node = await h.startNode({ env: { FANOUT_ATTACHMENT_TIMEOUT_MS: '2000' } });
      const ws = await rawSio(node, '/chat');
      const frames = [];
      ws.on('message', (d, isBinary) => frames.push(isBinary ? d : d.toString()));
      ws.send('452-/chat,["nope",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]');
      ws.send(Buffer.from('a'));
      ws.send(Buffer.from('b'));
      // The complete packet reaches the namespace: an unknown event gets an `error` event.
      await h
        .waitUntil(() => frames.some((f) => typeof f === 'string' && f.startsWith('42/chat,["error"')), 3000, 'error event')
        .catch((err) => {
          throw new Error(`${err.message}; frames: ${JSON.stringify(frames)}`);
        });
      assert.equal(await wsClosed(ws, 300), false);
    });
  });

  describe('anonymous /chat and /stream sockets', () => {
    const env = { FANOUT_ANONYMOUS_IDLE_MS: '1500' };

    it('a silent /chat socket is closed after the bound; a seated one stays', async () => {
      node = await h.startNode({ env });
      const silent = await h.connect(`${node.url}/chat`);
      const seated = await h.connect(`${node.url}/chat`);
      const room = h.uniqueName('room');
      seated.emit('login', { user: 'ann', avatar: 'ann@example.com', id: room });
      await h.once(seated, 'img', 3000);
      const reason = await h.once(silent, 'disconnect', 5000);
      assert.equal(reason, 'transport close');
      await h.sleep(1000);
      assert.ok(seated.connected, 'the seated socket stays');
      assert.ok((await tcpStats(node)).chatIdle >= 1);
    });

    it('a /chat socket parking a partial binary packet is closed and freed', async () => {
      node = await h.startNode({ env });
      const ws = await rawSio(node, '/chat');
      ws.send('452-/chat,["msg",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]');
      ws.send(Buffer.alloc(500_000, 1));
      assert.ok(await wsClosed(ws, 5000), 'closed by the anonymous bound');
    });

    it('an unauthenticated / socket parking a partial packet loses its connection at the auth timeout', async () => {
      node = await h.startNode({ env: { FANOUT_AUTH_TIMEOUT_MS: '1000' } });
      const ws = await rawSio(node, '');
      ws.send('452-["publish",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]');
      ws.send(Buffer.alloc(500_000, 1));
      // The namespace DISCONNECT alone would leave the Engine.IO session (and the 500 KB) open.
      assert.ok(await wsClosed(ws, 5000), 'connection closed after the auth timeout');
    });

    it('a /stream socket without a term is closed; one with a term stays', async () => {
      node = await h.startNode({ env });
      const idle = await h.connect(`${node.url}/stream`);
      const listening = await h.connect(`${node.url}/stream`);
      listening.emit('updateTerm', 'rust');
      await h.once(listening, 'updatedTerm', 3000);
      assert.equal(await h.once(idle, 'disconnect', 5000), 'transport close');
      await h.sleep(1000);
      assert.ok(listening.connected, 'the listening socket stays');
      assert.ok((await tcpStats(node)).streamIdle >= 1);
    });

    it('sharing a connection with namespace /, only the /chat namespace is disconnected', async () => {
      node = await h.startNode({ env: { ...env, FANOUT_AUTH_TIMEOUT_MS: '30000' } });
      const user = await h.newUser(node.url, 'limits');
      const main = await h.connect(node.url, { auth: { token: user.token } });
      const chat = main.io.socket('/chat');
      await new Promise((resolve) => chat.once('connect', resolve));
      assert.equal(await h.once(chat, 'disconnect', 5000), 'io server disconnect');
      await h.sleep(300);
      assert.ok(main.connected, 'namespace / keeps its connection');
      assert.ok((await h.emitAck(main, 'whoami')).result, 'and works');
    });
  });
});
