'use strict';
// Transports: polling-only full flow, polling→websocket upgrade, mixed transports on one
// topic, and oversize messages (> --max-payload) refused without affecting other clients.

const { describe, it, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/node');

const MAX_PAYLOAD = 8192;
const ABSENCE_MS = 250;

describe('transports', () => {
  let node;
  before(async () => {
    node = await h.startNode({
      args: ['--node-id', 'transports-node', '--max-payload', String(MAX_PAYLOAD), '--auth-timeout-ms', '2000'],
    });
  });
  after(async () => {
    h.closeAll();
    if (node) assert.equal(await node.stop(), 0);
  });
  afterEach(() => h.closeAll());

  it('polling only: handshake auth, event auth, subscribe, publish, methods, unsubscribe, logout', async () => {
    const u = await h.newUser(node.url, 'poll');
    const v = await h.newUser(node.url, 'poll2');
    const polling = { transports: ['polling'] };
    const a = await h.connect(node.url, { ...polling, auth: { token: u.token } });
    assert.equal(a.io.engine.transport.name, 'polling');
    const b = await h.connect(node.url, polling);
    const authed = h.once(b, 'authenticated', 3000);
    b.emit('authentication', { id: v.token, userId: v.userId });
    assert.deepEqual(await authed, { userId: v.userId });

    // before auth on polling: dropped with an unauthorized ack
    const anon = await h.connect(node.url, polling);
    assert.equal((await h.emitAck(anon, 'subscribe', 'x'))?.error?.code, 'unauthorized');

    const topic = h.uniqueName('polltopic');
    assert.deepEqual(await h.emitAck(a, 'subscribe', topic), { ok: true, topic });
    assert.deepEqual(await h.emitAck(b, 'subscribe', { topic }), { ok: true, topic });
    const gotA = h.collect(a, topic);
    const gotB = h.collect(b, topic);
    for (let i = 0; i < 5; i++) {
      assert.deepEqual(await h.emitAck(a, 'publish', { topic, data: { i, s: 'é€😀' } }), { ok: true });
    }
    await h.waitUntil(() => gotA.length === 5 && gotB.length === 5, 5000, 'polling deliveries');
    const expected = [0, 1, 2, 3, 4].map((i) => ({ i, s: 'é€😀' }));
    assert.deepEqual(gotA, expected);
    assert.deepEqual(gotB, expected);

    assert.deepEqual(await h.emitAck(a, 'whoami'), { result: { userId: u.userId, node: 'transports-node' } });
    assert.equal(typeof (await h.emitAck(a, 'time')).result, 'number');
    const pres = (await h.emitAck(a, 'presence', { topic })).result;
    assert.deepEqual([...pres].sort((x, y) => x - y), [u.userId, v.userId].sort((x, y) => x - y));
    assert.equal((await h.emitAck(a, 'nope'))?.error?.code, 'unknown_method');

    assert.deepEqual(await h.emitAck(b, 'unsubscribe', topic), { ok: true, topic });
    await h.emitAck(a, 'publish', { topic, data: 'after' });
    await h.waitUntil(() => gotA.length === 6, 5000, 'delivery after unsubscribe');
    await h.sleep(ABSENCE_MS);
    assert.equal(gotB.length, 5);
    assert.deepEqual(await h.emitAck(a, 'unsubscribeAll'), { ok: true, count: 1 });

    // REST model event to a polling subscriber
    await h.subscribe(b, { collectionName: 'PollModel', method: 'POST' });
    const ev = h.once(b, '/PollModel/POST', 5000);
    const created = await h.api(node.url, 'POST', '/api/models/PollModel', { p: 1 }, v.token);
    assert.deepEqual(await ev, created.body);

    // logout disconnects the polling socket with a server disconnect
    const d = h.once(b, 'disconnect', 5000);
    assert.equal((await h.api(node.url, 'POST', '/api/users/logout', undefined, v.token)).status, 204);
    assert.equal(await d, 'io server disconnect');
    assert.equal(a.connected, true);
  });

  it('polling only: authentication timeout disconnects', async () => {
    const s = await h.connect(node.url, { transports: ['polling'] });
    const un = h.once(s, 'unauthorized', 5000);
    const d = h.once(s, 'disconnect', 5000);
    assert.deepEqual(await un, { message: 'authentication timeout' });
    assert.equal(await d, 'io server disconnect');
  });

  it('polling → websocket upgrade keeps the session and its subscriptions', async () => {
    const u = await h.newUser(node.url, 'upg');
    const s = await h.connect(node.url, { transports: ['polling', 'websocket'], upgrade: true, auth: { token: u.token } });
    const engine = s.io.engine;
    const topic = h.uniqueName('upgrade');
    // subscribe while still on polling (the upgrade may not have happened yet)
    const sid = s.id;
    await h.subscribe(s, topic);
    if (engine.transport.name !== 'websocket') {
      await new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('no upgrade within 5 s')), 5000);
        engine.once('upgrade', () => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    assert.equal(engine.transport.name, 'websocket');
    assert.equal(s.id, sid, 'same Socket.IO session after the upgrade');
    const got = h.collect(s, topic);
    const other = await h.connect(node.url, { transports: ['polling'], auth: { token: u.token } });
    await h.emitAck(other, 'publish', { topic, data: 'over-ws' });
    await h.waitUntil(() => got.length === 1, 3000, 'delivery after upgrade');
    assert.deepEqual(got, ['over-ws']);
    assert.deepEqual(await h.emitAck(s, 'whoami'), { result: { userId: u.userId, node: 'transports-node' } });
  });

  it('websocket and polling clients share topics', async () => {
    const u = await h.newUser(node.url, 'mix');
    const topic = h.uniqueName('mix');
    const ws = await h.connect(node.url, { auth: { token: u.token } });
    const poll = await h.connect(node.url, { transports: ['polling'], auth: { token: u.token } });
    await h.subscribe(ws, topic);
    await h.subscribe(poll, topic);
    const gw = h.collect(ws, topic);
    const gp = h.collect(poll, topic);
    await h.emitAck(ws, 'publish', { topic, data: 'w' });
    await h.emitAck(poll, 'publish', { topic, data: 'p' });
    await h.waitUntil(() => gw.length === 2 && gp.length === 2, 5000, 'mixed deliveries');
    await h.sleep(ABSENCE_MS);
    assert.deepEqual(gw, ['w', 'p']);
    assert.deepEqual(gp, ['w', 'p']);
  });

  describe('oversize messages', () => {
    async function pair(transports) {
      const u = await h.newUser(node.url, 'big');
      const topic = h.uniqueName('big');
      const victim = await h.connect(node.url, { transports, auth: { token: u.token } });
      const bystander = await h.connect(node.url, { auth: { token: u.token } });
      const bystanderPoll = await h.connect(node.url, { transports: ['polling'], auth: { token: u.token } });
      await h.subscribe(bystander, topic);
      await h.subscribe(bystanderPoll, topic);
      return { u, topic, victim, bystander, bystanderPoll };
    }

    async function assertOthersFine({ u, topic, bystander, bystanderPoll }) {
      const g1 = h.collect(bystander, topic);
      const g2 = h.collect(bystanderPoll, topic);
      assert.equal(bystander.connected, true);
      assert.equal(bystanderPoll.connected, true);
      assert.deepEqual(await h.emitAck(bystander, 'publish', { topic, data: 'still-here' }), { ok: true });
      await h.waitUntil(() => g1.length === 1 && g2.length === 1, 5000, 'bystander deliveries');
      await h.sleep(ABSENCE_MS);
      assert.deepEqual(g1, ['still-here'], 'the oversize message was not delivered');
      assert.deepEqual(g2, ['still-here'], 'the oversize message was not delivered');
      assert.equal((await h.api(node.url, 'GET', '/healthz')).status, 200);
      const fresh = await h.connect(node.url, { auth: { token: u.token } });
      assert.equal((await h.emitAck(fresh, 'whoami')).result.userId, u.userId);
    }

    it('websocket: a message over --max-payload closes that connection only', async () => {
      const ctx = await pair(['websocket']);
      const d = h.once(ctx.victim, 'disconnect', 5000);
      ctx.victim.emit('publish', { topic: ctx.topic, data: 'x'.repeat(MAX_PAYLOAD * 2) });
      const reason = await d;
      assert.ok(['transport close', 'transport error'].includes(reason), `reason ${reason}`);
      await assertOthersFine(ctx);
    });

    it('websocket: a message just under --max-payload is delivered', async () => {
      const ctx = await pair(['websocket']);
      const data = 'y'.repeat(MAX_PAYLOAD - 200);
      const g = h.collect(ctx.bystander, ctx.topic);
      assert.deepEqual(await h.emitAck(ctx.victim, 'publish', { topic: ctx.topic, data }), { ok: true });
      await h.waitUntil(() => g.length === 1, 3000, 'near-limit delivery');
      assert.equal(g[0], data);
      assert.equal(ctx.victim.connected, true);
    });

    it('polling: a payload over --max-payload is refused and closes that session only', async () => {
      const ctx = await pair(['polling']);
      const d = h.once(ctx.victim, 'disconnect', 5000);
      ctx.victim.emit('publish', { topic: ctx.topic, data: 'x'.repeat(MAX_PAYLOAD * 2) });
      const reason = await d;
      assert.ok(['transport close', 'transport error'].includes(reason), `reason ${reason}`);
      await assertOthersFine(ctx);
    });

    it('polling: a raw POST over --max-payload gets an HTTP error, not a crash', async () => {
      const hs = await fetch(`${node.url}/socket.io/?EIO=4&transport=polling`);
      assert.equal(hs.status, 200);
      const body = await hs.text();
      const { sid, maxPayload } = JSON.parse(body.slice(1));
      assert.equal(maxPayload, MAX_PAYLOAD, 'the handshake advertises --max-payload');
      const big = await fetch(`${node.url}/socket.io/?EIO=4&transport=polling&sid=${sid}`, {
        method: 'POST',
        headers: { 'content-type': 'text/plain;charset=UTF-8' },
        body: '40' + 'z'.repeat(MAX_PAYLOAD * 4),
      }).catch((err) => ({ status: 'network-error', err }));
      assert.ok(big.status === 'network-error' || big.status >= 400, `status ${big.status}`);
      assert.equal((await h.api(node.url, 'GET', '/healthz')).status, 200);
    });
  });
});
