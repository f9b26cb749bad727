'use strict';
// The plain-WebSocket endpoint /ws: JSON frames with callback_id, same topics and rules as
// Socket.IO clients, embedded and across a cluster.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { wsClient } = require('../lib/ws');
const {
  startNode, api, newUser, connectAuthed, closeAll, emitAck, collect, subscribe, waitUntil, sleep,
} = require('../lib/node');
const { startRedis } = require('../lib/redis');

describe('/ws on one node', () => {
  let node;
  before(async () => {
    node = await startNode({ args: ['--auth-timeout-ms', '1500'] });
  });
  after(async () => {
    closeAll();
    assert.equal(await node.stop(), 0);
  });

  it('authenticates, subscribes, publishes and calls methods with callback_id replies', async () => {
    const u = await newUser(node.url, 'ws');
    const c = await wsClient(node.url);
    const early = await c.request('subscribe', { topic: 'w1' });
    assert.equal(early.result, false);
    assert.equal(early.error.code, 'unauthorized');
    const auth = await c.request('authenticate', { token: u.token });
    assert.deepEqual(auth, { callback_id: 2, result: true, data: { userId: u.userId } });
    assert.deepEqual((await c.request('subscribe', { topic: 'w1' })).data, { ok: true, topic: 'w1' });
    assert.deepEqual((await c.request('publish', { topic: 'w1', data: { n: 1 } })).data, { ok: true });
    await waitUntil(() => c.events.length === 1, 2000, 'push');
    assert.deepEqual(c.events[0], { type: 'event', topic: 'w1', data: { n: 1 } });
    assert.deepEqual((await c.request('whoami')).data, { userId: u.userId, node: await emitWho(node, u) });
    const unknown = await c.request('nope', {});
    assert.equal(unknown.error.code, 'unknown_method');
    const forbidden = await c.request('publish', { topic: '/Order/POST', data: {} });
    assert.equal(forbidden.error.code, 'forbidden');
    c.close();
  });

  it('Socket.IO and /ws clients share topics in both directions', async () => {
    const u = await newUser(node.url, 'mix');
    const c = await wsClient(node.url);
    await c.request('authenticate', { token: u.token });
    await c.request('subscribe', { topic: 'mixed' });
    const s = await connectAuthed(node.url, u.token);
    const got = collect(s, 'mixed');
    await subscribe(s, 'mixed');
    await emitAck(s, 'publish', { topic: 'mixed', data: 'from-sio' });
    await c.request('publish', { topic: 'mixed', data: 'from-ws' });
    await waitUntil(() => got.length === 2 && c.events.length === 2, 2000, 'both deliveries');
    assert.deepEqual(got, ['from-sio', 'from-ws']);
    assert.deepEqual(c.events.map((e) => e.data), ['from-sio', 'from-ws']);
    c.close();
  });

  it('model writes reach /ws subscribers', async () => {
    const u = await newUser(node.url, 'wsm');
    const c = await wsClient(node.url);
    await c.request('authenticate', { id: u.token, userId: u.userId });
    await c.request('subscribe', { collectionName: 'Ticket', method: 'POST' });
    const res = await api(node.url, 'POST', '/api/models/Ticket', { t: 1 }, u.token);
    await waitUntil(() => c.events.length === 1, 2000, 'model event');
    assert.deepEqual(c.events[0], { type: 'event', topic: '/Ticket/POST', data: res.body });
    c.close();
  });

  it('answers garbage with error replies and keeps the connection', async () => {
    const u = await newUser(node.url, 'wsg');
    const c = await wsClient(node.url);
    await c.request('authenticate', { token: u.token });
    c.sendRaw('not json');
    c.sendRaw('[1,2,3]');
    c.sendRaw(JSON.stringify({ callback_id: 99 }));
    c.ws.send(Buffer.from([1, 2, 3]));
    await waitUntil(() => c.orphans.length >= 4, 2000, 'error replies');
    assert.ok(c.orphans.every((m) => m.result === false && typeof m.error.code === 'string'));
    assert.ok(c.orphans.some((m) => m.callback_id === 99 && m.error.code === 'bad_request'));
    const bad = await c.request('subscribe', { topic: '' });
    assert.equal(bad.error.code, 'invalid_topic');
    assert.equal((await c.request('time')).result, true);
    c.close();
  });

  it('many requests in flight are all answered with their own callback_id', async () => {
    const u = await newUser(node.url, 'wsf');
    const c = await wsClient(node.url);
    await c.request('authenticate', { token: u.token });
    const replies = await Promise.all(Array.from({ length: 50 }, (_, i) => c.request('subscribe', { topic: `f${i}` })));
    replies.forEach((r, i) => assert.deepEqual(r.data, { ok: true, topic: `f${i}` }));
    c.close();
  });

  it('closes unauthenticated connections after the timeout, and bad tokens at once', async () => {
    const idle = await wsClient(node.url);
    const closed = await idle.closed;
    assert.equal(closed.code, 1008);
    const bad = await wsClient(node.url);
    const reply = await bad.request('authenticate', { token: 'nope' });
    assert.equal(reply.error.code, 'unauthorized');
    assert.equal((await bad.closed).code, 1008);
  });

  it('logout closes the /ws connections of that token', async () => {
    const u = await newUser(node.url, 'wsl');
    const c = await wsClient(node.url);
    await c.request('authenticate', { token: u.token });
    assert.equal((await api(node.url, 'POST', '/api/users/logout', undefined, u.token)).status, 204);
    const closed = await c.closed;
    assert.equal(closed.code, 1008);
    assert.equal(closed.reason, 'token revoked');
  });

  it('closes a connection that sends a frame over the payload limit, others unaffected', async () => {
    const small = await startNode({ args: ['--max-payload', '2048'] });
    try {
      const u = await newUser(small.url, 'wsb');
      const big = await wsClient(small.url);
      const other = await wsClient(small.url);
      await big.request('authenticate', { token: u.token });
      await other.request('authenticate', { token: u.token });
      big.sendRaw(JSON.stringify({ type: 'publish', callback_id: 1, data: { topic: 'x', data: 'y'.repeat(5000) } }));
      assert.equal((await big.closed).code, 1009);
      assert.equal((await other.request('time')).result, true);
      other.close();
    } finally {
      await small.stop();
    }
  });
});

describe('/ws during a graceful drain', () => {
  it('SIGTERM sends every /ws connection a 1001 close in batches, then the node exits 0', async () => {
    const node = await startNode({ args: ['--drain-batch', '2', '--drain-interval-ms', '50'] });
    const u = await newUser(node.url, 'wsd');
    const clients = [];
    for (let i = 0; i < 5; i += 1) {
      const c = await wsClient(node.url);
      await c.request('authenticate', { token: u.token });
      clients.push(c);
    }
    const stopped = node.stop('SIGTERM');
    const closes = await Promise.all(clients.map((c) => c.closed));
    for (const close of closes) assert.deepEqual(close, { code: 1001, reason: 'server draining' });
    assert.equal(await stopped, 0);
  });
});

async function emitWho(node, u) {
  const s = await connectAuthed(node.url, u.token);
  const who = await emitAck(s, 'whoami');
  s.close();
  return who.result.node;
}

describe('/ws across a cluster', () => {
  it('a Socket.IO publish on node A reaches /ws subscribers on node B and back', async () => {
    const redis = await startRedis();
    const nodes = [];
    try {
      nodes.push(await startNode({ env: { FANOUT_REDIS_URL: redis.url } }));
      nodes.push(await startNode({ env: { FANOUT_REDIS_URL: redis.url } }));
      const u = await newUser(nodes[0].url, 'wsc');
      const c = await wsClient(nodes[1].url);
      await c.request('authenticate', { token: u.token });
      await c.request('subscribe', { topic: 'xnode' });
      const s = await connectAuthed(nodes[0].url, u.token);
      const got = collect(s, 'xnode');
      await subscribe(s, 'xnode');
      await emitAck(s, 'publish', { topic: 'xnode', data: 'sio-on-A' });
      await c.request('publish', { topic: 'xnode', data: 'ws-on-B' });
      await waitUntil(() => c.events.length === 2 && got.length === 2, 3000, 'cross-node deliveries');
      await sleep(200);
      assert.deepEqual(c.events.map((e) => e.data).sort(), ['sio-on-A', 'ws-on-B']);
      assert.deepEqual([...got].sort(), ['sio-on-A', 'ws-on-B']);
      c.close();
    } finally {
      closeAll();
      for (const n of nodes) await n.stop();
      await redis.stop();
    }
  });
});
