'use strict';
// Delivery guarantees under real traffic: per-connection order across nodes (Socket.IO, /ws,
// the events channel), slow-consumer isolation within byte budgets, and every drop counted.

const fs = require('node:fs');
const net = require('node:net');
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const {
  startNode, api, newUser, connectAuthed, closeAll, emitAck, collect, subscribe, waitUntil,
  sleep, metrics, metricValue, metricSum,
} = require('../lib/node');
const { startRedis, startCluster } = require('../lib/redis');
const { wsClient, stalledSocketIo, stalledWs } = require('../lib/ws');

const range = (n) => Array.from({ length: n }, (_, i) => i);
// These tests send thousands of back-to-back requests from one connection on purpose: their
// nodes raise the per-connection request rate (default 100/s, burst 200) far above that.
const UNTHROTTLED = { FANOUT_CLIENT_RATE: '1000000', FANOUT_CLIENT_BURST: '100000' };

/** Resident memory of a process in bytes (Linux). */
function rss(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/VmRSS:\s+(\d+) kB/.exec(status)[1]);
  return kb * 1024;
}

/** Subscribes a /ws client (authenticated with `token`) to `topic`; returns it. */
async function wsSubscriber(base, token, topic) {
  const client = await wsClient(base);
  assert.equal((await client.request('authenticate', { token })).result, true);
  assert.equal((await client.request('subscribe', { topic })).result, true);
  return client;
}

/** Publishes many raw messages on a Redis channel in one pipelined write. */
function pipelinePublish(port, channel, messages) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let replies = 0;
    let buf = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error('redis pipeline timeout'));
    }, 10_000);
    socket.on('error', reject);
    socket.on('data', (d) => {
      buf += d.toString();
      replies = buf.split('\r\n').filter((l) => l.startsWith(':')).length;
      if (replies >= messages.length) {
        clearTimeout(timer);
        socket.end();
        resolve(replies);
      }
    });
    const cmd = (parts) => `*${parts.length}\r\n${parts.map((p) => `$${Buffer.byteLength(p)}\r\n${p}\r\n`).join('')}`;
    socket.write(messages.map((m) => cmd(['PUBLISH', channel, m])).join(''));
  });
}

describe('per-connection order across a cluster', () => {
  const N = 1000;
  let cluster;
  let redis;
  let nodes;

  before(async () => {
    cluster = await startCluster(3, 'order', UNTHROTTLED);
    ({ redis, nodes } = cluster);
  });

  after(async () => {
    closeAll();
    if (cluster) assert.deepEqual(await cluster.stop(), [0, 0, 0]);
  });

  it('1000 back-to-back Socket.IO publishes arrive in order on every node, Socket.IO and /ws', async () => {
    const alice = await newUser(nodes[0].url, 'order');
    const publisher = await connectAuthed(nodes[0].url, alice.token);
    const subs = [await connectAuthed(nodes[1].url, alice.token), await connectAuthed(nodes[2].url, alice.token)];
    const got = subs.map((s) => collect(s, 'burst'));
    for (const s of subs) await subscribe(s, 'burst');
    const wsSub = await wsSubscriber(nodes[1].url, alice.token, 'burst');

    const acks = range(N).map((i) => emitAck(publisher, 'publish', { topic: 'burst', data: { i } }, 30_000));
    for (const ack of await Promise.all(acks)) assert.deepEqual(ack, { ok: true });
    await waitUntil(() => got.every((g) => g.length >= N) && wsSub.events.length >= N, 20_000, 'all deliveries');
    const expected = range(N).map((i) => ({ i }));
    for (const g of got) assert.deepEqual(g, expected);
    assert.deepEqual(wsSub.events.map((e) => e.data), expected);
    wsSub.close();
  });

  it('1000 back-to-back /ws publishes arrive in order on every node', async () => {
    const bob = await newUser(nodes[0].url, 'order-ws');
    const publisher = await wsClient(nodes[0].url);
    assert.equal((await publisher.request('authenticate', { token: bob.token })).result, true);
    const sio = await connectAuthed(nodes[2].url, bob.token);
    const got = collect(sio, 'ws-burst');
    await subscribe(sio, 'ws-burst');
    const wsSub = await wsSubscriber(nodes[1].url, bob.token, 'ws-burst');

    const replies = range(N).map((i) => publisher.request('publish', { topic: 'ws-burst', data: { i } }, 30_000));
    for (const reply of await Promise.all(replies)) assert.equal(reply.result, true, JSON.stringify(reply));
    await waitUntil(() => got.length >= N && wsSub.events.length >= N, 20_000, 'all deliveries');
    const expected = range(N).map((i) => ({ i }));
    assert.deepEqual(got, expected);
    assert.deepEqual(wsSub.events.map((e) => e.data), expected);
    publisher.close();
    wsSub.close();
  });

  it('a publish right after a subscribe (neither awaited) is seen by the same connection', async () => {
    const carol = await newUser(nodes[0].url, 'order-self');
    for (const transport of ['sio', 'ws']) {
      const topic = `self-${transport}`;
      if (transport === 'sio') {
        const s = await connectAuthed(nodes[0].url, carol.token);
        const got = collect(s, topic);
        const sub = emitAck(s, 'subscribe', topic);
        const pub = emitAck(s, 'publish', { topic, data: 'me' });
        assert.deepEqual(await sub, { ok: true, topic });
        assert.deepEqual(await pub, { ok: true });
        await waitUntil(() => got.length === 1, 3000, 'own message');
      } else {
        const c = await wsClient(nodes[0].url);
        const auth = c.request('authenticate', { token: carol.token });
        const sub = c.request('subscribe', { topic });
        const pub = c.request('publish', { topic, data: 'me' });
        assert.equal((await auth).result, true);
        assert.equal((await sub).result, true);
        assert.equal((await pub).result, true);
        await waitUntil(() => c.events.length === 1, 3000, 'own message');
        c.close();
      }
    }
  });

  it('the events channel delivers a producer\'s 1000 messages in order on every node', async () => {
    const dave = await newUser(nodes[0].url, 'order-events');
    const subs = await Promise.all(nodes.map((n) => connectAuthed(n.url, dave.token)));
    const got = subs.map((s) => collect(s, 'from-cron'));
    for (const s of subs) await subscribe(s, 'from-cron');
    const messages = range(N).map((i) => JSON.stringify({ topic: 'from-cron', data: { i, 'prénom': 'Zoé' } }));
    await pipelinePublish(redis.port, 'fanout:events', messages);
    await waitUntil(() => got.every((g) => g.length >= N), 20_000, 'events deliveries');
    for (const g of got) assert.deepEqual(g, range(N).map((i) => ({ i, 'prénom': 'Zoé' })));
  });
});

describe('slow consumers are isolated and closed', () => {
  const N = 10_000;
  const SIZE = 32 * 1024;
  let node;

  before(async () => {
    // A message cap far above N: only the byte budget (default 1 MiB) protects the node.
    node = await startNode({ env: { FANOUT_CLIENT_QUEUE_MESSAGES: '100000', ...UNTHROTTLED }, args: ['--node-id', 'slow'] });
  });

  after(async () => {
    closeAll();
    assert.equal(await node?.stop(), 0);
  });

  it('10,000 × 32 KB: three readers lose nothing, stalled Socket.IO and /ws readers are closed, memory stays bounded', async () => {
    const user = await newUser(node.url, 'slow');
    const publisher = await connectAuthed(node.url, user.token);
    const readers = [];
    const got = [];
    for (let r = 0; r < 3; r += 1) {
      const s = await connectAuthed(node.url, user.token);
      const mine = [];
      s.on('firehose', (data) => mine.push(data.i));
      await subscribe(s, 'firehose');
      readers.push(s);
      got.push(mine);
    }
    await stalledSocketIo(node.url, user.token, 'firehose');
    await stalledWs(node.url, user.token, 'firehose');
    const before = await metrics(node.url);
    const rssBefore = rss(node.pid);
    let rssPeak = rssBefore;
    const sampler = setInterval(() => {
      rssPeak = Math.max(rssPeak, rss(node.pid));
    }, 100);

    const pad = 'x'.repeat(SIZE);
    const WINDOW = 16; // the readers' flow control: never more than 16 unread messages each
    const acks = [];
    for (let i = 0; i < N; i += 1) {
      while (Math.min(...got.map((g) => g.length)) < i - WINDOW) await sleep(1);
      acks.push(emitAck(publisher, 'publish', { topic: 'firehose', data: { i, pad } }, 60_000));
      if (acks.length % WINDOW === 0) await acks[acks.length - WINDOW];
    }
    const results = await Promise.all(acks);
    assert.equal(results.filter((a) => a && a.ok === true).length, N, 'every publish acked ok');
    await waitUntil(() => got.every((g) => g.length >= N), 30_000, 'readers got everything');
    clearInterval(sampler);
    for (const g of got) assert.deepEqual(g, range(N), 'in order, nothing lost');

    const after = await metrics(node.url);
    const delta = (name, labels) => metricSum(after, name, labels) - metricSum(before, name, labels);
    assert.equal(metricValue(after, 'fanout_disconnections_total{namespace="/",reason="slow_consumer"}'), 1);
    assert.equal(metricValue(after, 'fanout_disconnections_total{namespace="/ws",reason="slow_consumer"}'), 1);
    assert.ok(delta('fanout_messages_dropped_total', { transport: 'socketio', reason: 'slow_consumer' }) >= 1);
    assert.ok(delta('fanout_messages_dropped_total', { transport: 'ws', reason: 'slow_consumer' }) >= 1);
    // Delivered = the three readers' 3 × N + what the stalled two took before their budget.
    // (what the kernel's socket buffers absorbed — several MB on loopback — plus the budget).
    const delivered = delta('fanout_topic_messages_delivered_total');
    const stalledTook = delivered - 3 * N;
    const grew = rssPeak - rssBefore;
    console.log(`# slow consumer run: RSS ${(rssBefore / 1048576).toFixed(1)} → peak ${(rssPeak / 1048576).toFixed(1)} MiB; stalled took ${stalledTook}`);
    assert.ok(stalledTook >= 2 && stalledTook * SIZE < 2 * 14 * 1024 * 1024, `stalled readers took ${stalledTook}`);
    // Without the byte budget the two stalled readers alone would hold ~2 × 320 MB.
    assert.ok(grew < 96 * 1024 * 1024, `RSS grew by ${(grew / 1048576).toFixed(1)} MiB`);
  });
  it('a long-polling reader that keeps polling gets megabytes without being taken for a slow one', async () => {
    // Its polls come on any connection: only the message cap applies, never the byte budget.
    const user = await newUser(node.url, 'poller');
    const publisher = await connectAuthed(node.url, user.token);
    const poller = await connectAuthed(node.url, user.token, { transports: ['polling'] });
    const got = [];
    poller.on('big-poll', (data) => got.push(data.i));
    await subscribe(poller, 'big-poll');
    const before = await metrics(node.url);
    const pad = 'p'.repeat(64 * 1024);
    for (let i = 0; i < 48; i += 1) { // 3 MiB in all, 3 × the byte budget
      assert.deepEqual(await emitAck(publisher, 'publish', { topic: 'big-poll', data: { i, pad } }, 10_000), { ok: true });
      await waitUntil(() => got.length > i, 10_000, `message ${i} by polling`);
    }
    assert.deepEqual(got, range(48));
    const after = await metrics(node.url);
    assert.equal(
      metricSum(after, 'fanout_disconnections_total', { reason: 'slow_consumer' }),
      metricSum(before, 'fanout_disconnections_total', { reason: 'slow_consumer' }),
    );
    assert.equal(poller.connected, true);
  });
});

describe('every drop is counted', () => {
  let node;
  let redis;
  let clustered;

  before(async () => {
    node = await startNode({ env: { FANOUT_CLIENT_QUEUE_BYTES: '4096' }, args: ['--node-id', 'drops'] });
    redis = await startRedis();
    clustered = await startNode({ env: { FANOUT_REDIS_URL: redis.url }, args: ['--node-id', 'drops-cluster'] });
  });

  after(async () => {
    closeAll();
    assert.equal(await node?.stop(), 0);
    assert.equal(await clustered?.stop(), 0);
    await redis?.stop();
  });

  it('published × subscribers = delivered + dropped (a message larger than the budget)', async () => {
    const user = await newUser(node.url, 'drops');
    const publisher = await connectAuthed(node.url, user.token);
    const subs = [await connectAuthed(node.url, user.token), await connectAuthed(node.url, user.token)];
    const got = subs.map((s) => collect(s, 'budgeted'));
    for (const s of subs) await subscribe(s, 'budgeted');
    const ws = await wsSubscriber(node.url, user.token, 'budgeted');
    const before = await metrics(node.url);

    assert.deepEqual(await emitAck(publisher, 'publish', { topic: 'budgeted', data: 'y'.repeat(8192) }), { ok: true });
    for (let i = 0; i < 50; i += 1) {
      assert.deepEqual(await emitAck(publisher, 'publish', { topic: 'budgeted', data: i }), { ok: true });
    }
    await waitUntil(() => got.every((g) => g.length >= 50) && ws.events.length >= 50, 5000, 'small ones');
    const after = await metrics(node.url);
    const delta = (name, labels) => metricSum(after, name, labels) - metricSum(before, name, labels);
    const published = delta('fanout_topic_messages_published_total', { source: 'socket' });
    const delivered = delta('fanout_topic_messages_delivered_total');
    const dropped = delta('fanout_messages_dropped_total');
    assert.equal(published, 51);
    assert.equal(delivered, 150);
    assert.equal(delta('fanout_messages_dropped_total', { transport: 'socketio', reason: 'too_large' }), 2);
    assert.equal(delta('fanout_messages_dropped_total', { transport: 'ws', reason: 'too_large' }), 1);
    assert.equal(published * 3, delivered + dropped);
    for (const g of got) assert.deepEqual(g, range(50), 'the connections stay open and in order');
    ws.close();
  });

  it('a publish while Redis is down: local subscribers get it, the rest is counted, the publisher told', async () => {
    const user = await newUser(clustered.url, 'drops-redis');
    const publisher = await connectAuthed(clustered.url, user.token);
    const sub = await connectAuthed(clustered.url, user.token);
    const got = collect(sub, 'island');
    await subscribe(sub, 'island');
    await redis.stop();
    try {
      const ack = await emitAck(publisher, 'publish', { topic: 'island', data: 1 }, 10_000);
      assert.equal(ack.error?.code, 'unavailable', JSON.stringify(ack));
      await waitUntil(() => got.length === 1, 3000, 'local delivery');
      const text = await metrics(clustered.url);
      assert.equal(metricSum(text, 'fanout_messages_dropped_total', { transport: 'redis', reason: 'redis_down' }), 1);
    } finally {
      await redis.start();
    }
  });
});
