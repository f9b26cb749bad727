'use strict';
// Cluster mode: 3 fanout-node processes + one real redis-server, driven with socket.io-client.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const {
  startNode, api, newUser, connectAuthed, closeAll, once, emitAck, collect, subscribe,
  waitUntil, sleep, metrics, metricValue,
} = require('../lib/node');
const { startRedis } = require('../lib/redis');

describe('cluster of 3 nodes over Redis', () => {
  let redis;
  let nodes;

  before(async () => {
    redis = await startRedis();
    nodes = [];
    for (let i = 0; i < 3; i += 1) {
      nodes.push(await startNode({ env: { FANOUT_REDIS_URL: redis.url }, args: ['--node-id', `node${i}`] }));
    }
    for (const node of nodes) {
      const ready = await api(node.url, 'GET', '/readyz');
      assert.equal(ready.status, 200, JSON.stringify(ready.body));
    }
  });

  after(async () => {
    closeAll();
    for (const node of nodes || []) assert.equal(await node.stop(), 0);
    await redis?.stop();
  });

  it('a publish on node 0 reaches subscribers on every node exactly once', async () => {
    const alice = await newUser(nodes[0].url, 'alice');
    const sockets = await Promise.all(nodes.map((n) => connectAuthed(n.url, alice.token)));
    const received = sockets.map((s) => collect(s, 'cluster-news'));
    for (const s of sockets) await subscribe(s, 'cluster-news');
    const outsider = await connectAuthed(nodes[2].url, alice.token);
    const outsiderGot = collect(outsider, 'cluster-news');
    for (let i = 0; i < 5; i += 1) {
      assert.deepEqual(await emitAck(sockets[0], 'publish', { topic: 'cluster-news', data: { i } }), { ok: true });
    }
    await waitUntil(() => received.every((r) => r.length >= 5), 3000, 'deliveries on all nodes');
    await sleep(200);
    for (const r of received) assert.deepEqual(r, [0, 1, 2, 3, 4].map((i) => ({ i })));
    assert.equal(outsiderGot.length, 0);
  });

  it('user ids, tokens and models are shared: login on one node, use on another', async () => {
    const bob = await newUser(nodes[1].url, 'bob');
    const s = await connectAuthed(nodes[2].url, bob.token);
    const who = await emitAck(s, 'whoami');
    assert.deepEqual(who, { result: { userId: bob.userId, node: 'node2' } });
    await subscribe(s, { collectionName: 'Invoice', method: 'POST' });
    const created = once(s, '/Invoice/POST');
    const res = await api(nodes[0].url, 'POST', '/api/models/Invoice', { total: 5 }, bob.token);
    assert.equal(res.status, 201);
    assert.deepEqual(await created, res.body);
    const got = await api(nodes[1].url, 'GET', `/api/models/Invoice/${res.body.id}`, undefined, bob.token);
    assert.deepEqual(got.body, res.body);
    const dup = await api(nodes[2].url, 'POST', '/api/users', { username: bob.username, email: 'x@y.io', password: 'secret123' });
    assert.equal(dup.status, 409);
  });

  it('a model write is delivered exactly once per subscriber across nodes', async () => {
    const carol = await newUser(nodes[0].url, 'carol');
    const sockets = await Promise.all(nodes.map((n) => connectAuthed(n.url, carol.token)));
    const got = sockets.map((s) => collect(s, '/Parcel/POST'));
    for (const s of sockets) await subscribe(s, '/Parcel/POST');
    const res = await api(nodes[1].url, 'POST', '/api/models/Parcel', { w: 1 }, carol.token);
    assert.equal(res.status, 201);
    await waitUntil(() => got.every((g) => g.length === 1), 3000, 'model event everywhere');
    await sleep(200);
    for (const g of got) assert.deepEqual(g, [res.body]);
  });

  it('presence lists users subscribed on any node', async () => {
    const [u1, u2] = [await newUser(nodes[0].url, 'p1'), await newUser(nodes[0].url, 'p2')];
    const s1 = await connectAuthed(nodes[0].url, u1.token);
    const s2 = await connectAuthed(nodes[1].url, u2.token);
    await subscribe(s1, 'presence-room');
    await subscribe(s2, 'presence-room');
    const ids = [u1.userId, u2.userId].sort((a, b) => a - b);
    assert.deepEqual(await emitAck(s1, 'presence', { topic: 'presence-room' }), { result: ids });
    s2.close();
    await sleep(300);
    assert.deepEqual(await emitAck(s1, 'presence', { topic: 'presence-room' }), { result: [u1.userId] });
  });

  it('logout on one node disconnects the token\'s sockets on every node', async () => {
    const dave = await newUser(nodes[0].url, 'dave');
    const other = await newUser(nodes[0].url, 'dave2');
    const sockets = await Promise.all(nodes.map((n) => connectAuthed(n.url, dave.token)));
    const keep = await connectAuthed(nodes[1].url, other.token);
    const reasons = sockets.map((s) => once(s, 'disconnect', 3000));
    const out = await api(nodes[2].url, 'POST', '/api/users/logout', undefined, dave.token);
    assert.equal(out.status, 204);
    assert.deepEqual(await Promise.all(reasons), ['io server disconnect', 'io server disconnect', 'io server disconnect']);
    assert.equal(keep.connected, true);
    for (const node of nodes) {
      const r = await api(node.url, 'POST', '/api/publish', { topic: 'x', data: 1 }, dave.token);
      assert.equal(r.status, 401, `token still accepted by ${node.url}`);
    }
  });

  it('external producers publish on the events channel; garbage is counted, never fatal', async () => {
    const erin = await newUser(nodes[0].url, 'erin');
    const sockets = await Promise.all(nodes.map((n) => connectAuthed(n.url, erin.token)));
    const got = sockets.map((s) => collect(s, 'from-cron'));
    const orders = sockets.map((s) => collect(s, '/Order/77/PUT'));
    for (const s of sockets) {
      await subscribe(s, 'from-cron');
      await subscribe(s, { collectionName: 'Order', method: 'PUT', modelId: 77 });
    }
    const before = await metrics(nodes[0].url);
    const bad0 = Number(metricValue(before, 'fanout_bad_input_total{code="bad_request",origin="events"}') || 0);
    for (const garbage of ['not json', '[]', '{"topic":""}', '{"model":"Order","method":"GET","id":1}', '\u0000\u00ff']) {
      await redis.publish('fanout:events', garbage);
    }
    await redis.publish('fanout:events', JSON.stringify({ topic: 'from-cron', data: { ok: 1 } }));
    await redis.publish('fanout:events', JSON.stringify({ model: 'Order', method: 'PUT', id: '77', data: { id: 77 } }));
    await waitUntil(() => got.every((g) => g.length === 1) && orders.every((o) => o.length === 1), 3000, 'events delivered');
    await sleep(200);
    for (const g of got) assert.deepEqual(g, [{ ok: 1 }]);
    for (const o of orders) assert.deepEqual(o, [{ id: 77 }]);
    const after = await metrics(nodes[0].url);
    const bad1 = Number(metricValue(after, 'fanout_bad_input_total{code="bad_request",origin="events"}') || 0);
    assert.ok(bad1 >= bad0 + 3, `malformed events counted (${bad0} → ${bad1})`);
    for (const node of nodes) assert.equal((await api(node.url, 'GET', '/healthz')).status, 200);
  });
});

describe('losing Redis', () => {
  it('nodes stay up, report not-ready, keep local delivery, and recover without restart', async () => {
    const redis = await startRedis();
    const nodes = [];
    try {
      for (let i = 0; i < 2; i += 1) {
        nodes.push(await startNode({ env: { FANOUT_REDIS_URL: redis.url }, args: ['--node-id', `r${i}`] }));
      }
      const user = await newUser(nodes[0].url, 'outage');
      const [a, b] = await Promise.all(nodes.map((n) => connectAuthed(n.url, user.token)));
      const aGot = collect(a, 'outage');
      const bGot = collect(b, 'outage');
      await subscribe(a, 'outage');
      await subscribe(b, 'outage');
      const readiness = [];
      const probe = setInterval(async () => {
        for (const [node, n] of nodes.entries()) {
          try {
            readiness.push({ node, t: Date.now(), status: (await api(n.url, 'GET', '/readyz', undefined, undefined, { timeoutMs: 500 })).status });
          } catch {
            readiness.push({ node, t: Date.now(), status: 'error' });
          }
        }
      }, 100);

      await redis.stop();
      const downAt = Date.now();
      await waitUntil(() => readiness.some((r) => r.t > downAt && r.status === 503), 3000, 'readyz 503 while Redis is down');
      // Local delivery still works while Redis is down (node 0's own subscriber).
      await emitAck(a, 'publish', { topic: 'outage', data: 'during' }, 3000).catch(() => null);
      await waitUntil(() => aGot.includes('during'), 3000, 'local delivery during the outage');
      await sleep(5000 - (Date.now() - downAt));
      for (const n of nodes) assert.equal(n.proc.exitCode, null, 'node exited during the outage');

      await redis.start();
      const upAt = Date.now();
      await waitUntil(
        () => nodes.every((_, i) => readiness.some((r) => r.node === i && r.t > upAt && r.status === 200)),
        15000,
        'readyz 200 again after Redis is back',
      );
      clearInterval(probe);
      // While Redis was down, no probe said ready.
      const duringOutage = readiness.filter((r) => r.t > downAt + 1500 && r.t < upAt);
      assert.ok(duringOutage.length > 0);
      assert.ok(duringOutage.every((r) => r.status !== 200), 'readyz claimed ready while Redis was down');
      // Cross-node delivery resumes without restarting anything.
      const ack = await emitAck(a, 'publish', { topic: 'outage', data: 'after' }, 3000);
      assert.deepEqual(ack, { ok: true });
      await waitUntil(() => bGot.includes('after') && aGot.includes('after'), 5000, 'delivery after recovery');
      assert.equal(bGot.filter((x) => x === 'after').length, 1);
    } finally {
      closeAll();
      for (const n of nodes) await n.stop();
      await redis.stop();
    }
  });
});
