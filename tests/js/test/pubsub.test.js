'use strict';
// subscribe / publish / unsubscribe / unsubscribeAll across several clients with exact
// delivery counts, topic validation, ACL (model topics, private /users/<id>/ topics), and
// REST publish.

const { describe, it, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/node');

/** How long we keep listening after a positive control to prove something did NOT arrive. */
const ABSENCE_MS = 250;

describe('pub/sub', () => {
  let node;
  before(async () => {
    node = await h.startNode({ args: ['--node-id', 'pubsub-node'] });
  });
  after(async () => {
    h.closeAll();
    if (node) assert.equal(await node.stop(), 0);
  });
  afterEach(() => h.closeAll());

  async function client(prefix = 'ps', opts = {}) {
    const u = await h.newUser(node.url, prefix);
    const socket = await h.connect(node.url, { ...opts, auth: { token: u.token } });
    return { ...u, socket };
  }

  it('delivers to every subscriber exactly once, in order, and to nobody else', async () => {
    const topic = h.uniqueName('news');
    const a = await client();
    const b = await client();
    const c = await client(); // not subscribed
    const b2 = await h.connect(node.url, { auth: { token: b.token } }); // b's second socket
    assert.deepEqual(await h.emitAck(a.socket, 'subscribe', topic), { ok: true, topic });
    assert.deepEqual(await h.emitAck(b.socket, 'subscribe', { topic }), { ok: true, topic });
    // subscribing twice must not double deliveries
    assert.deepEqual(await h.emitAck(b.socket, 'subscribe', topic), { ok: true, topic });
    await h.subscribe(b2, topic);

    const gotA = h.collect(a.socket, topic);
    const gotB = h.collect(b.socket, topic);
    const gotB2 = h.collect(b2, topic);
    const gotC = h.collect(c.socket, topic);

    const payloads = [{ n: 1 }, 'two', 3, [4, { four: true }], null, true, { nested: { deep: [1, 2, 3] } }];
    for (const data of payloads) {
      assert.deepEqual(await h.emitAck(a.socket, 'publish', { topic, data }), { ok: true });
    }
    // c publishes too (publishing does not require a subscription)
    assert.deepEqual(await h.emitAck(c.socket, 'publish', { topic, data: 'from-c' }), { ok: true });
    const expected = [...payloads, 'from-c'];
    await h.waitUntil(
      () => gotA.length >= expected.length && gotB.length >= expected.length && gotB2.length >= expected.length,
      3000,
      'all deliveries',
    );
    await h.sleep(ABSENCE_MS);
    assert.deepEqual(gotA, expected);
    assert.deepEqual(gotB, expected);
    assert.deepEqual(gotB2, expected);
    assert.deepEqual(gotC, []);
  });

  it('the event carries data as its single argument; missing data is delivered as null', async () => {
    const topic = h.uniqueName('args');
    const a = await client();
    await h.subscribe(a.socket, topic);
    const p = h.onceArgs(a.socket, topic, 3000);
    await h.emitAck(a.socket, 'publish', { topic, data: { x: 1 } });
    assert.deepEqual(await p, [{ x: 1 }]);
    const p2 = h.onceArgs(a.socket, topic, 3000);
    await h.emitAck(a.socket, 'publish', { topic });
    assert.deepEqual(await p2, [null]);
  });

  it('unsubscribe stops delivery to that socket only', async () => {
    const topic = h.uniqueName('unsub');
    const a = await client();
    const b = await client();
    await h.subscribe(a.socket, topic);
    await h.subscribe(b.socket, topic);
    const gotA = h.collect(a.socket, topic);
    const gotB = h.collect(b.socket, topic);

    assert.deepEqual(await h.emitAck(a.socket, 'unsubscribe', topic), { ok: true, topic });
    await h.emitAck(b.socket, 'publish', { topic, data: 1 });
    await h.waitUntil(() => gotB.length === 1, 3000, 'delivery to b');
    await h.sleep(ABSENCE_MS);
    assert.deepEqual(gotA, []);
    assert.deepEqual(gotB, [1]);

    // unsubscribe of a topic one is not subscribed to is fine; { topic } form too
    assert.deepEqual(await h.emitAck(a.socket, 'unsubscribe', { topic }), { ok: true, topic });
    // resubscribe works
    await h.subscribe(a.socket, topic);
    await h.emitAck(b.socket, 'publish', { topic, data: 2 });
    await h.waitUntil(() => gotA.length === 1 && gotB.length === 2, 3000, 'second delivery');
    await h.sleep(ABSENCE_MS);
    assert.deepEqual(gotA, [2]);
    assert.deepEqual(gotB, [1, 2]);
  });

  it('unsubscribeAll returns the count and stops every delivery', async () => {
    const a = await client();
    const watcher = await client();
    const topics = [h.uniqueName('ua1'), h.uniqueName('ua2'), h.uniqueName('ua3')];
    const gotA = [];
    const gotW = [];
    for (const t of topics) {
      await h.subscribe(a.socket, t);
      await h.subscribe(watcher.socket, t);
      a.socket.on(t, (d) => gotA.push([t, d]));
      watcher.socket.on(t, (d) => gotW.push([t, d]));
    }
    assert.deepEqual(await h.emitAck(a.socket, 'unsubscribeAll'), { ok: true, count: 3 });
    assert.deepEqual(await h.emitAck(a.socket, 'unsubscribeAll'), { ok: true, count: 0 });
    for (const t of topics) await h.emitAck(watcher.socket, 'publish', { topic: t, data: t });
    await h.waitUntil(() => gotW.length === 3, 3000, 'watcher deliveries');
    await h.sleep(ABSENCE_MS);
    assert.deepEqual(gotA, []);
    assert.deepEqual(gotW, topics.map((t) => [t, t]));
  });

  it('LoopBack subscribe form maps to model topics', async () => {
    const a = await client();
    const cases = [
      [{ collectionName: 'Order', method: 'POST' }, '/Order/POST'],
      [{ collectionName: 'Order', method: 'post' }, '/Order/POST'],
      [{ collectionName: 'Order', method: 'PUT', modelId: 42 }, '/Order/42/PUT'],
      [{ collectionName: 'Order', method: 'delete', modelId: '7' }, '/Order/7/DELETE'],
      [{ collectionName: 'Order', method: 'PUT', modelId: null }, '/Order/PUT'],
    ];
    for (const [arg, topic] of cases) {
      assert.deepEqual(await h.emitAck(a.socket, 'subscribe', arg), { ok: true, topic }, JSON.stringify(arg));
      assert.deepEqual(await h.emitAck(a.socket, 'unsubscribe', arg), { ok: true, topic }, JSON.stringify(arg));
    }
  });

  it('refuses invalid topics and argument shapes with the right error codes', async () => {
    const a = await client();
    const cases = [
      ['', 'invalid_topic'],
      ['x'.repeat(257), 'invalid_topic'],
      ['é'.repeat(129), 'invalid_topic'], // 258 bytes
      ['a\nb', 'invalid_topic'],
      ['a\u0000b', 'invalid_topic'],
      ['tab\there', 'invalid_topic'],
      ['del\u007f', 'invalid_topic'],
      ['disconnect', 'invalid_topic'],
      ['connect', 'invalid_topic'],
      ['connect_error', 'invalid_topic'],
      [{ topic: '' }, 'invalid_topic'],
      [{ topic: 5 }, 'invalid_topic'],
      [{ topic: null }, 'invalid_topic'],
      [null, 'bad_request'],
      [42, 'bad_request'],
      [true, 'bad_request'],
      [[1, 2], 'bad_request'],
      [{}, 'bad_request'],
      [{ collectionName: 'Order' }, 'bad_request'],
      [{ collectionName: 'Order', method: 'GET' }, 'validation_failed'],
      [{ collectionName: '9Order', method: 'POST' }, 'validation_failed'],
      [{ collectionName: 'users', method: 'POST' }, 'validation_failed'],
      [{ collectionName: 'Order', method: 'PUT', modelId: { a: 1 } }, 'validation_failed'],
    ];
    const wrong = [];
    for (const [arg, code] of cases) {
      for (const ev of ['subscribe', 'unsubscribe']) {
        const ack = await h.emitAck(a.socket, ev, arg);
        if (ack?.error?.code !== code || typeof ack.error.message !== 'string') {
          wrong.push({ ev, arg, expected: code, got: ack });
        }
      }
    }
    assert.deepEqual(wrong, []);
    // no subscription was created by any of these
    assert.deepEqual(await h.emitAck(a.socket, 'unsubscribeAll'), { ok: true, count: 0 });
    // the limits are inclusive: 256 bytes is fine
    const t256 = 'x'.repeat(256);
    assert.deepEqual(await h.emitAck(a.socket, 'subscribe', t256), { ok: true, topic: t256 });
    const t256u = 'é'.repeat(128);
    assert.deepEqual(await h.emitAck(a.socket, 'subscribe', t256u), { ok: true, topic: t256u });
  });

  it('publish refuses bad shapes and invalid topics', async () => {
    const a = await client();
    const cases = [
      [null, 'bad_request'],
      ['news', 'bad_request'],
      [[{ topic: 'news' }], 'bad_request'],
      [{ data: 1 }, 'bad_request'],
      [{ topic: 5, data: 1 }, 'bad_request'],
      [{ topic: '', data: 1 }, 'invalid_topic'],
      [{ topic: 'x'.repeat(257), data: 1 }, 'invalid_topic'],
      [{ topic: 'a\rb', data: 1 }, 'invalid_topic'],
      [{ topic: 'disconnect', data: 1 }, 'invalid_topic'],
    ];
    const wrong = [];
    for (const [arg, code] of cases) {
      const ack = await h.emitAck(a.socket, 'publish', arg);
      if (ack?.error?.code !== code) wrong.push({ arg, expected: code, got: ack });
    }
    assert.deepEqual(wrong, []);
  });

  describe('ACL', () => {
    it('model topics: subscribe allowed, publish forbidden (socket and REST)', async () => {
      const a = await client();
      const got = h.collect(a.socket, '/Order/POST');
      await h.subscribe(a.socket, '/Order/POST');
      for (const topic of ['/Order/POST', '/Order/42/PUT', '/Order/42/DELETE', '/Order/anything', '/Order', '/Widget_2/x']) {
        const ack = await h.emitAck(a.socket, 'publish', { topic, data: { forged: true } });
        assert.equal(ack?.error?.code, 'forbidden', `${topic}: ${JSON.stringify(ack)}`);
        const r = await h.api(node.url, 'POST', '/api/publish', { topic, data: { forged: true } }, a.token);
        assert.equal(r.status, 403, topic);
        assert.equal(r.body.error.code, 'forbidden');
        assert.equal(typeof r.body.error.message, 'string');
      }
      // control: a real model write reaches the subscriber, the forged ones did not
      const w = await h.api(node.url, 'POST', '/api/models/Order', { real: true }, a.token);
      assert.equal(w.status, 201);
      await h.waitUntil(() => got.length >= 1, 3000, 'model event');
      await h.sleep(ABSENCE_MS);
      assert.deepEqual(got, [w.body]);
    });

    it('topics that only look like model topics are publishable', async () => {
      const a = await client();
      for (const topic of ['/', '/9lives', '/_x/POST', '/users-1/x', 'Order/POST', '/-x/POST', '/Ordér/POST']) {
        await h.subscribe(a.socket, topic);
        const p = h.once(a.socket, topic, 3000);
        assert.deepEqual(await h.emitAck(a.socket, 'publish', { topic, data: topic }), { ok: true }, topic);
        assert.equal(await p, topic);
      }
    });

    it('private /users/<id>/… topics: only their user subscribes and publishes', async () => {
      const alice = await client('alice');
      const bob = await client('bob');
      const inbox = `/users/${alice.userId}/inbox`;
      const bare = `/users/${alice.userId}`;

      assert.deepEqual(await h.emitAck(alice.socket, 'subscribe', inbox), { ok: true, topic: inbox });
      const gotAlice = h.collect(alice.socket, inbox);
      const gotBob = h.collect(bob.socket, inbox);

      for (const t of [inbox, bare, `/users/${alice.userId}/a/b/c`]) {
        const sub = await h.emitAck(bob.socket, 'subscribe', t);
        assert.equal(sub?.error?.code, 'forbidden', `bob subscribe ${t}`);
        const pub = await h.emitAck(bob.socket, 'publish', { topic: t, data: 'evil' });
        assert.equal(pub?.error?.code, 'forbidden', `bob publish ${t}`);
        const pres = await h.emitAck(bob.socket, 'presence', { topic: t });
        assert.equal(pres?.error?.code, 'forbidden', `bob presence ${t}`);
        const r = await h.api(node.url, 'POST', '/api/publish', { topic: t, data: 'evil' }, bob.token);
        assert.equal(r.status, 403, `bob REST publish ${t}`);
        assert.equal(r.body.error.code, 'forbidden');
      }
      // alice publishes to her own topic (socket and REST)
      assert.deepEqual(await h.emitAck(alice.socket, 'publish', { topic: inbox, data: 'hi' }), { ok: true });
      const r = await h.api(node.url, 'POST', '/api/publish', { topic: inbox, data: 'rest' }, alice.token);
      assert.equal(r.status, 202);
      await h.waitUntil(() => gotAlice.length >= 2, 3000, 'alice deliveries');
      await h.sleep(ABSENCE_MS);
      assert.deepEqual(gotAlice, ['hi', 'rest']);
      assert.deepEqual(gotBob, []);
      // bob's own private topic is fine for bob
      const own = `/users/${bob.userId}/inbox`;
      assert.deepEqual(await h.emitAck(bob.socket, 'subscribe', own), { ok: true, topic: own });
    });
  });

  describe('REST publish', () => {
    it('POST /api/publish → 202 { ok: true } and subscribers receive it', async () => {
      const topic = h.uniqueName('rest');
      const a = await client();
      const b = await client();
      await h.subscribe(a.socket, topic);
      const gotA = h.collect(a.socket, topic);
      const gotB = h.collect(b.socket, topic);
      const r = await h.api(node.url, 'POST', '/api/publish', { topic, data: { via: 'rest' } }, `Bearer ${b.token}`);
      assert.equal(r.status, 202);
      assert.deepEqual(r.body, { ok: true });
      await h.waitUntil(() => gotA.length >= 1, 3000, 'REST delivery');
      await h.sleep(ABSENCE_MS);
      assert.deepEqual(gotA, [{ via: 'rest' }]);
      assert.deepEqual(gotB, []);
    });

    it('refuses missing/bad tokens, invalid topics and bad shapes', async () => {
      const a = await client();
      let r = await h.api(node.url, 'POST', '/api/publish', { topic: 'x', data: 1 });
      assert.equal(r.status, 401);
      assert.equal(r.body.error.code, 'unauthorized');
      r = await h.api(node.url, 'POST', '/api/publish', { topic: 'x', data: 1 }, 'c'.repeat(64));
      assert.equal(r.status, 401);
      for (const topic of ['', 'x'.repeat(257), 'a\u0001b', 'disconnect']) {
        r = await h.api(node.url, 'POST', '/api/publish', { topic, data: 1 }, a.token);
        assert.equal(r.status, 422, JSON.stringify(topic));
        assert.equal(r.body.error.code, 'invalid_topic');
      }
      r = await h.api(node.url, 'POST', '/api/publish', { data: 1 }, a.token);
      assert.equal(r.status, 400);
      assert.equal(r.body.error.code, 'bad_request');
      r = await h.api(node.url, 'POST', '/api/publish', [1], a.token);
      assert.equal(r.status, 400);
      assert.equal(r.body.error.code, 'bad_request');
    });

    it('counts publishes by source in fanout_topic_messages_published_total', async () => {
      const a = await client();
      const topic = h.uniqueName('m');
      const text0 = await h.metrics(node.url);
      const sock0 = h.metricValue(text0, 'fanout_topic_messages_published_total{source="socket"}') || 0;
      const rest0 = h.metricValue(text0, 'fanout_topic_messages_published_total{source="rest"}') || 0;
      await h.emitAck(a.socket, 'publish', { topic, data: 1 });
      await h.emitAck(a.socket, 'publish', { topic, data: 2 });
      await h.api(node.url, 'POST', '/api/publish', { topic, data: 3 }, a.token);
      const text1 = await h.metrics(node.url);
      assert.equal(h.metricValue(text1, 'fanout_topic_messages_published_total{source="socket"}'), sock0 + 2);
      assert.equal(h.metricValue(text1, 'fanout_topic_messages_published_total{source="rest"}'), rest0 + 1);
    });
  });

  it('presence lists the user ids subscribed, and forgets disconnected sockets', async () => {
    const topic = h.uniqueName('pres');
    const a = await client();
    const b = await client();
    const b2 = await h.connect(node.url, { auth: { token: b.token } });
    assert.deepEqual(await h.emitAck(a.socket, 'presence', { topic }), { result: [] });
    await h.subscribe(a.socket, topic);
    await h.subscribe(b.socket, topic);
    await h.subscribe(b2, topic);
    const ids = (await h.emitAck(a.socket, 'presence', { topic })).result;
    assert.deepEqual([...ids].sort((x, y) => x - y), [a.userId, b.userId].sort((x, y) => x - y));
    // b still present through b2 after b unsubscribes
    await h.emitAck(b.socket, 'unsubscribe', topic);
    const ids2 = (await h.emitAck(a.socket, 'presence', topic)).result;
    assert.deepEqual([...ids2].sort((x, y) => x - y), [a.userId, b.userId].sort((x, y) => x - y));
    b2.close();
    const deadline = Date.now() + 3000;
    let ids3;
    do {
      ids3 = (await h.emitAck(a.socket, 'presence', { topic })).result;
      if (ids3.length === 1) break;
      await h.sleep(20);
    } while (Date.now() < deadline);
    assert.deepEqual(ids3, [a.userId]);
    await h.emitAck(a.socket, 'unsubscribeAll');
    assert.deepEqual(await h.emitAck(a.socket, 'presence', { topic }), { result: [] });
  });
});
