'use strict';
// Authentication of namespace `/`: handshake token, socketio-auth `authentication` event
// (both { token } and LoopBack { id, userId }), timeout, refusals, events before auth, logout.

const { describe, it, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/node');

const AUTH_TIMEOUT_MS = 500;

describe('authentication', () => {
  let node;
  before(async () => {
    node = await h.startNode({
      args: ['--node-id', 'auth-node', '--auth-timeout-ms', String(AUTH_TIMEOUT_MS)],
    });
  });
  after(async () => {
    h.closeAll();
    if (node) assert.equal(await node.stop(), 0);
  });
  afterEach(() => h.closeAll());

  describe('handshake auth', () => {
    it('accepts { token } and the socket is authenticated at once', async () => {
      const u = await h.newUser(node.url, 'hs');
      const s = await h.connect(node.url, { auth: { token: u.token } });
      const ack = await h.emitAck(s, 'whoami');
      assert.deepEqual(ack, { result: { userId: u.userId, node: 'auth-node' } });
      // authenticated in the handshake: the auth timeout must not disconnect it
      const early = h.once(s, 'disconnect', AUTH_TIMEOUT_MS * 3).then(
        (r) => r,
        () => null,
      );
      assert.equal(await early, null, 'handshake-authenticated socket was disconnected');
      assert.equal(s.connected, true);
    });

    it('accepts the LoopBack form { id, userId } (number or string userId)', async () => {
      const u = await h.newUser(node.url, 'hslb');
      const s1 = await h.connect(node.url, { auth: { id: u.token, userId: u.userId } });
      assert.deepEqual((await h.emitAck(s1, 'whoami')).result.userId, u.userId);
      const s2 = await h.connect(node.url, { auth: { id: u.token, userId: String(u.userId) } });
      assert.deepEqual((await h.emitAck(s2, 'whoami')).result.userId, u.userId);
    });

    it('refuses a mismatched userId with connect_error "unauthorized"', async () => {
      const u = await h.newUser(node.url, 'hsmm');
      const other = await h.newUser(node.url, 'hsmm2');
      await assert.rejects(
        h.connect(node.url, { auth: { id: u.token, userId: other.userId } }),
        (err) => err.message === 'unauthorized',
      );
    });

    it('refuses a bad token, a non-string token and an empty token', async () => {
      for (const auth of [
        { token: 'f'.repeat(64) },
        { token: 'nope' },
        { token: 12345 },
        { token: '' },
        { id: 'f'.repeat(64), userId: 1 },
      ]) {
        await assert.rejects(
          h.connect(node.url, { auth }),
          (err) => err.message === 'unauthorized',
          `auth ${JSON.stringify(auth)} should be refused`,
        );
      }
    });

    it('counts refused handshakes in fanout_auth_failures_total', async () => {
      const sample = 'fanout_auth_failures_total{reason="invalid_token"}';
      const before = h.metricValue(await h.metrics(node.url), sample) || 0;
      await assert.rejects(h.connect(node.url, { auth: { token: 'a'.repeat(64) } }), {
        message: 'unauthorized',
      });
      const afterV = h.metricValue(await h.metrics(node.url), sample);
      assert.equal(afterV, before + 1);
    });

    it('honours a login ttl: the token works, then expires', async () => {
      const u = await h.newUser(node.url, 'ttl', { ttl: 1 });
      assert.equal(u.login.ttl, 1);
      const s = await h.connect(node.url, { auth: { token: u.token } });
      s.close();
      await h.sleep(1300);
      await assert.rejects(h.connect(node.url, { auth: { token: u.token } }), {
        message: 'unauthorized',
      });
      const r = await h.api(node.url, 'GET', '/api/models/Thing', undefined, u.token);
      assert.equal(r.status, 401);
    });
  });

  describe('socketio-auth `authentication` event', () => {
    it('{ token } → authenticated { userId } (event and ack)', async () => {
      const u = await h.newUser(node.url, 'ev');
      const s = await h.connect(node.url);
      const evt = h.once(s, 'authenticated', 3000);
      const ack = await h.emitAck(s, 'authentication', { token: u.token });
      assert.deepEqual(ack, { userId: u.userId });
      assert.deepEqual(await evt, { userId: u.userId });
      assert.deepEqual((await h.emitAck(s, 'whoami')).result.userId, u.userId);
    });

    it('{ token } without an ack → authenticated event', async () => {
      const u = await h.newUser(node.url, 'evna');
      const s = await h.connect(node.url);
      const evt = h.once(s, 'authenticated', 3000);
      s.emit('authentication', { token: u.token });
      assert.deepEqual(await evt, { userId: u.userId });
    });

    it('LoopBack { id, userId } → authenticated', async () => {
      const u = await h.newUser(node.url, 'evlb');
      const s = await h.connect(node.url);
      const evt = h.once(s, 'authenticated', 3000);
      s.emit('authentication', { id: u.token, userId: u.userId });
      assert.deepEqual(await evt, { userId: u.userId });
    });

    it('stays connected past the auth timeout once authenticated', async () => {
      const u = await h.newUser(node.url, 'evstay');
      const s = await h.connect(node.url);
      await h.emitAck(s, 'authentication', { token: u.token });
      const disc = h.once(s, 'disconnect', AUTH_TIMEOUT_MS * 3).then(
        (r) => r,
        () => null,
      );
      assert.equal(await disc, null, 'authenticated socket was disconnected by the auth timer');
      assert.equal((await h.emitAck(s, 'time')).result > 0, true);
    });

    for (const [label, makeArg] of [
      ['a wrong token', () => ({ token: 'b'.repeat(64) })],
      ['a mismatched userId', (u, o) => ({ id: u.token, userId: o.userId })],
      ['a non-object argument', () => 'not-an-object'],
      ['no token at all', () => ({})],
    ]) {
      it(`${label} → unauthorized { message } then server disconnect`, async () => {
        const u = await h.newUser(node.url, 'evbad');
        const o = await h.newUser(node.url, 'evbad2');
        const s = await h.connect(node.url);
        const unauth = h.once(s, 'unauthorized', 3000);
        const disc = h.once(s, 'disconnect', 3000);
        const authed = [];
        s.on('authenticated', (p) => authed.push(p));
        s.emit('authentication', makeArg(u, o));
        const payload = await unauth;
        assert.equal(typeof payload.message, 'string');
        assert.ok(payload.message.length > 0);
        assert.equal(await disc, 'io server disconnect');
        assert.deepEqual(authed, []);
      });
    }

    // LoopBack finds the token with where { id, userId }: a claimed userId that is not the
    // owner's id — whatever its JSON type — must not authenticate.
    const BAD_USER_IDS = [-1, 1.5, true, { x: 1 }, ['1'], ''];

    it('refuses { id, userId } whose userId is not the owner\'s id (any JSON type)', async () => {
      const u = await h.newUser(node.url, 'evtype');
      const accepted = [];
      for (const badUserId of BAD_USER_IDS) {
        const s = await h.connect(node.url);
        const outcome = Promise.race([
          h.once(s, 'unauthorized', 3000).then(() => 'unauthorized'),
          h.once(s, 'authenticated', 3000).then(() => 'authenticated'),
        ]);
        s.emit('authentication', { id: u.token, userId: badUserId });
        if ((await outcome) !== 'unauthorized') accepted.push(badUserId);
        s.close();
      }
      assert.deepEqual(accepted, [], `claimed userIds wrongly accepted for user ${u.userId}`);
    });

    it('handshake refuses { id, userId } whose userId is not the owner\'s id (any JSON type)', async () => {
      const u = await h.newUser(node.url, 'hstype');
      const accepted = [];
      for (const badUserId of BAD_USER_IDS) {
        try {
          const s = await h.connect(node.url, { auth: { id: u.token, userId: badUserId } });
          s.close();
          accepted.push(badUserId);
        } catch (err) {
          assert.equal(err.message, 'unauthorized');
        }
      }
      assert.deepEqual(accepted, [], `claimed userIds wrongly accepted for user ${u.userId}`);
    });

    it('no authentication within --auth-timeout-ms → unauthorized "authentication timeout" + disconnect', async () => {
      const s = await h.connect(node.url);
      const t0 = Date.now();
      const unauth = h.once(s, 'unauthorized', AUTH_TIMEOUT_MS + 3000);
      const disc = h.once(s, 'disconnect', AUTH_TIMEOUT_MS + 3000);
      assert.deepEqual(await unauth, { message: 'authentication timeout' });
      assert.equal(await disc, 'io server disconnect');
      const elapsed = Date.now() - t0;
      assert.ok(elapsed >= AUTH_TIMEOUT_MS - 100, `disconnected too early (${elapsed} ms)`);
      assert.ok(elapsed < AUTH_TIMEOUT_MS + 2000, `disconnected too late (${elapsed} ms)`);
    });

    it('authenticating twice answers authenticated again (same user)', async () => {
      const u = await h.newUser(node.url, 'twice');
      const s = await h.connect(node.url, { auth: { token: u.token } });
      const ack = await h.emitAck(s, 'authentication', { token: u.token });
      assert.deepEqual(ack, { userId: u.userId });
    });
  });

  describe('before authentication', () => {
    it('events with an ack get { error: { code: "unauthorized" } }', async () => {
      const s = await h.connect(node.url);
      for (const [ev, arg] of [
        ['subscribe', 'news'],
        ['unsubscribe', 'news'],
        ['unsubscribeAll', undefined],
        ['publish', { topic: 'news', data: 1 }],
        ['whoami', undefined],
        ['time', undefined],
        ['presence', { topic: 'news' }],
        ['find', { model: 'Order' }],
        ['noSuchMethod', {}],
      ]) {
        const ack = await h.emitAck(s, ev, arg);
        assert.equal(ack?.error?.code, 'unauthorized', `${ev}: ${JSON.stringify(ack)}`);
        assert.equal(typeof ack.error.message, 'string');
      }
    });

    it('events are dropped: an unauthenticated subscribe/publish has no effect', async () => {
      const topic = h.uniqueName('preauth');
      const u = await h.newUser(node.url, 'pre');
      const sub = await h.connect(node.url, { auth: { token: u.token } });
      await h.subscribe(sub, topic);
      const got = h.collect(sub, topic);

      const anon = await h.connect(node.url);
      const anonGot = h.collect(anon, topic);
      anon.emit('subscribe', topic); // no ack: dropped
      anon.emit('publish', { topic, data: 'from-anon' }); // no ack: dropped
      // a round trip on the anonymous socket proves the two events above were processed
      assert.equal((await h.emitAck(anon, 'time'))?.error?.code, 'unauthorized');

      assert.deepEqual(await h.emitAck(sub, 'publish', { topic, data: 'control' }), { ok: true });
      await h.waitUntil(() => got.length >= 1, 3000, 'control message');
      await h.sleep(200);
      assert.deepEqual(got, ['control'], 'the anonymous publish must not be delivered');
      assert.deepEqual(anonGot, [], 'the anonymous socket must not be subscribed');

      // after authenticating, the earlier subscribe still had no effect
      const u2 = await h.newUser(node.url, 'pre2');
      await h.emitAck(anon, 'authentication', { token: u2.token });
      await h.emitAck(sub, 'publish', { topic, data: 'second' });
      await h.waitUntil(() => got.length >= 2, 3000, 'second message');
      await h.sleep(200);
      assert.deepEqual(anonGot, []);
      const presence = await h.emitAck(anon, 'presence', { topic });
      assert.deepEqual(presence, { result: [u.userId] });
    });
  });

  describe('logout', () => {
    it('disconnects every socket of the token (handshake and event auth) but not another token of the same user', async () => {
      const username = h.uniqueName('logout');
      const created = await h.createUser(node.url, { username, password: 'secret123' });
      assert.equal(created.status, 201);
      const t1 = (await h.login(node.url, { username, password: 'secret123' })).body.id;
      const t2 = (await h.login(node.url, { username, password: 'secret123' })).body.id;
      assert.notEqual(t1, t2);

      const a = await h.connect(node.url, { auth: { token: t1 } });
      const b = await h.connect(node.url);
      await h.emitAck(b, 'authentication', { token: t1 });
      const c = await h.connect(node.url, { auth: { token: t2 } });
      const cPolling = await h.connect(node.url, { auth: { token: t1 }, transports: ['polling'] });
      const cDisc = [];
      c.on('disconnect', (r) => cDisc.push(r));

      const da = h.once(a, 'disconnect', 3000);
      const db = h.once(b, 'disconnect', 3000);
      const dp = h.once(cPolling, 'disconnect', 5000);
      const res = await h.api(node.url, 'POST', '/api/users/logout', undefined, `Bearer ${t1}`);
      assert.equal(res.status, 204);
      assert.equal(await da, 'io server disconnect');
      assert.equal(await db, 'io server disconnect');
      assert.equal(await dp, 'io server disconnect');

      // the other token's socket is untouched and works
      assert.deepEqual(await h.emitAck(c, 'whoami'), {
        result: { userId: created.body.id, node: 'auth-node' },
      });
      assert.deepEqual(cDisc, []);
      assert.equal(c.connected, true);

      // the token is dead everywhere
      const again = await h.api(node.url, 'POST', '/api/users/logout', undefined, t1);
      assert.equal(again.status, 401);
      assert.equal(again.body.error.code, 'unauthorized');
      await assert.rejects(h.connect(node.url, { auth: { token: t1 } }), {
        message: 'unauthorized',
      });
      const late = await h.connect(node.url);
      const un = h.once(late, 'unauthorized', 3000);
      late.emit('authentication', { token: t1 });
      assert.equal(typeof (await un).message, 'string');
    });

    it('logout with ?access_token= works too', async () => {
      const u = await h.newUser(node.url, 'logoutq');
      const s = await h.connect(node.url, { auth: { token: u.token } });
      const d = h.once(s, 'disconnect', 3000);
      const res = await h.api(node.url, 'POST', `/api/users/logout?access_token=${u.token}`);
      assert.equal(res.status, 204);
      assert.equal(await d, 'io server disconnect');
    });
  });
});
