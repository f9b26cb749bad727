'use strict';
// REST API: users, login, logout, error shapes, operations endpoints.

const { describe, it, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/node');

const MAX_TTL = 1000;

function assertError(res, status, code, what = '') {
  assert.equal(res.status, status, `${what} status (body ${res.text})`);
  assert.equal(typeof res.body, 'object', `${what} JSON body: ${res.text}`);
  assert.equal(res.body?.error?.code, code, `${what} code (body ${res.text})`);
  assert.equal(typeof res.body.error.message, 'string', `${what} message`);
  assert.match(res.headers.get('content-type') || '', /application\/json/, `${what} content-type`);
}

describe('REST API', () => {
  let node;
  before(async () => {
    node = await h.startNode({ args: ['--node-id', 'rest-node', '--token-max-ttl', String(MAX_TTL), '--token-ttl', '600'] });
  });
  after(async () => {
    h.closeAll();
    if (node) assert.equal(await node.stop(), 0);
  });
  afterEach(() => h.closeAll());

  describe('POST /api/users', () => {
    it('creates a user → 201 { id, username, email }, no password in the answer', async () => {
      const username = h.uniqueName('create');
      const r = await h.createUser(node.url, { username, email: `${username}@Example.COM`, password: 'secret123' });
      assert.equal(r.status, 201);
      assert.equal(typeof r.body.id, 'number');
      assert.equal(r.body.username, username);
      assert.equal(r.body.email.toLowerCase(), `${username}@example.com`);
      assert.deepEqual(Object.keys(r.body).sort(), ['email', 'id', 'username']);
      const r2 = await h.createUser(node.url, {});
      assert.equal(r2.body.id, r.body.id + 1);
    });

    it('duplicate username or email → 409 conflict', async () => {
      const username = h.uniqueName('dup');
      assert.equal((await h.createUser(node.url, { username })).status, 201);
      assertError(await h.createUser(node.url, { username, email: `${h.uniqueName('x')}@example.com` }), 409, 'conflict', 'dup username');
      assertError(await h.createUser(node.url, { username: h.uniqueName('y'), email: `${username}@example.com` }), 409, 'conflict', 'dup email');
    });

    it('invalid values → 422 validation_failed', async () => {
      const n = () => h.uniqueName('v');
      const cases = [
        ['empty username', { username: '', email: `${n()}@example.com`, password: 'secret123' }],
        ['space in username', { username: 'a b', email: `${n()}@example.com`, password: 'secret123' }],
        ['65-char username', { username: 'x'.repeat(65), email: `${n()}@example.com`, password: 'secret123' }],
        ['bad email', { username: n(), email: 'not-an-email', password: 'secret123' }],
        ['email without domain dot', { username: n(), email: 'a@b', password: 'secret123' }],
        ['short password', { username: n(), email: `${n()}@example.com`, password: '12345' }],
        ['long password', { username: n(), email: `${n()}@example.com`, password: 'p'.repeat(1025) }],
        ['missing password', { username: n(), email: `${n()}@example.com` }],
        ['number username', { username: 42, email: `${n()}@example.com`, password: 'secret123' }],
      ];
      for (const [what, body] of cases) {
        assertError(await h.api(node.url, 'POST', '/api/users', body), 422, 'validation_failed', what);
      }
      // boundaries that are valid
      const u64 = 'x'.repeat(60) + String(Date.now() % 10000).padStart(4, '0');
      assert.equal((await h.createUser(node.url, { username: u64, password: '123456' })).status, 201);
      assert.equal((await h.createUser(node.url, { password: 'p'.repeat(1024) })).status, 201);
    });
  });

  describe('POST /api/users/login', () => {
    it('by username or email → 200 LoopBack AccessToken shape', async () => {
      const username = h.uniqueName('login');
      const c = await h.createUser(node.url, { username, password: 'secret123' });
      const r = await h.login(node.url, { username, password: 'secret123' });
      assert.equal(r.status, 200);
      assert.match(r.body.id, /^[0-9a-f]{64}$/);
      assert.equal(r.body.ttl, 600, 'default ttl is --token-ttl');
      assert.equal(r.body.userId, c.body.id);
      assert.ok(!Number.isNaN(Date.parse(r.body.created)), `created ${r.body.created}`);
      assert.match(r.body.created, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/);
      assert.ok(Math.abs(Date.parse(r.body.created) - Date.now()) < 60_000);
      const byEmail = await h.login(node.url, { email: `${username.toUpperCase()}@EXAMPLE.com`, password: 'secret123' });
      assert.equal(byEmail.status, 200, byEmail.text);
      assert.equal(byEmail.body.userId, c.body.id);
      assert.notEqual(byEmail.body.id, r.body.id, 'each login gets a new token');
    });

    it('ttl is honoured and capped at --token-max-ttl', async () => {
      const username = h.uniqueName('ttl');
      await h.createUser(node.url, { username, password: 'secret123' });
      assert.equal((await h.login(node.url, { username, password: 'secret123', ttl: 60 })).body.ttl, 60);
      assert.equal((await h.login(node.url, { username, password: 'secret123', ttl: MAX_TTL * 10 })).body.ttl, MAX_TTL);
      for (const ttl of [0, -5, 'ten', 1.5, {}, [60]]) {
        assertError(await h.login(node.url, { username, password: 'secret123', ttl }), 422, 'validation_failed', `ttl ${JSON.stringify(ttl)}`);
      }
    });

    it('bad password or unknown user → 401 unauthorized (same answer)', async () => {
      const username = h.uniqueName('badpw');
      await h.createUser(node.url, { username, password: 'secret123' });
      const a = await h.login(node.url, { username, password: 'wrong-password' });
      const b = await h.login(node.url, { username: h.uniqueName('ghost'), password: 'secret123' });
      const c = await h.login(node.url, { email: 'ghost@example.com', password: 'secret123' });
      assertError(a, 401, 'unauthorized', 'bad password');
      assertError(b, 401, 'unauthorized', 'unknown user');
      assertError(c, 401, 'unauthorized', 'unknown email');
      assert.equal(a.body.error.message, b.body.error.message, 'no user enumeration');
    });

    it('missing username and email → 422; malformed → 400', async () => {
      assertError(await h.login(node.url, { password: 'secret123' }), 422, 'validation_failed', 'no username');
      assertError(await h.api(node.url, 'POST', '/api/users/login', h.raw('{"username":')), 400, 'bad_request', 'truncated');
    });
  });

  describe('POST /api/users/logout', () => {
    for (const [label, mk] of [
      ['raw Authorization header', (t) => ({ token: t })],
      ['Bearer Authorization header', (t) => ({ token: `Bearer ${t}` })],
      ['?access_token=', (t) => ({ query: `?access_token=${t}` })],
    ]) {
      it(`with ${label} → 204 and the token is dead`, async () => {
        const u = await h.newUser(node.url, 'lo');
        const m = await h.api(node.url, 'GET', '/api/models/Thing', undefined, u.token);
        assert.equal(m.status, 200);
        const { token, query = '' } = mk(u.token);
        const r = await h.api(node.url, 'POST', `/api/users/logout${query}`, undefined, token);
        assert.equal(r.status, 204);
        assert.equal(r.text, '');
        assertError(await h.api(node.url, 'GET', '/api/models/Thing', undefined, u.token), 401, 'unauthorized', 'after logout');
        assertError(await h.api(node.url, 'POST', '/api/users/logout', undefined, u.token), 401, 'unauthorized', 'logout twice');
      });
    }

    it('without a token → 401', async () => {
      assertError(await h.api(node.url, 'POST', '/api/users/logout'), 401, 'unauthorized');
      assertError(await h.api(node.url, 'POST', '/api/users/logout', undefined, 'Bearer '), 401, 'unauthorized');
    });
  });

  describe('operations', () => {
    it('GET /healthz → 200, GET /readyz → 200 { ready: true }', async () => {
      const hz = await h.api(node.url, 'GET', '/healthz');
      assert.equal(hz.status, 200);
      const rz = await h.api(node.url, 'GET', '/readyz');
      assert.equal(rz.status, 200);
      assert.equal(rz.body.ready, true);
    });

    it('GET /metrics → Prometheus text with fanout_ metrics that track sockets', async () => {
      const u = await h.newUser(node.url, 'metrics');
      const gauge = 'fanout_sockets_connected{namespace="/"}';
      const res = await fetch(`${node.url}/metrics`);
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type'), /^text\/plain/);
      const text0 = await res.text();
      for (const line of text0.split('\n')) {
        // fanout's own metrics, plus the standard process_* metrics (RSS, fds, CPU).
        if (line && !line.startsWith('#')) assert.ok(/^(fanout_|process_)/.test(line), line);
      }
      assert.match(text0, /^process_resident_memory_bytes \d+/m);
      assert.match(text0, /^fanout_build_info\{[^}]*node="rest-node"[^}]*\} 1$/m);
      const base = h.metricValue(text0, gauge) || 0;
      const sockets = [];
      for (let i = 0; i < 3; i++) sockets.push(await h.connect(node.url, { auth: { token: u.token } }));
      assert.equal(h.metricValue(await h.metrics(node.url), gauge), base + 3);
      // a delivery is observed in the latency histogram
      const topic = h.uniqueName('lat');
      await h.subscribe(sockets[0], topic);
      const count0 = h.metricValue(await h.metrics(node.url), 'fanout_delivery_latency_seconds_count') || 0;
      const p = h.once(sockets[0], topic, 3000);
      await h.emitAck(sockets[1], 'publish', { topic, data: 1 });
      await p;
      await assert.rejects(h.connect(node.url, { auth: { token: 'e'.repeat(64) } }), { message: 'unauthorized' });
      const text1 = await h.metrics(node.url);
      assert.ok(h.metricValue(text1, 'fanout_delivery_latency_seconds_count') > count0);
      for (const name of [
        'fanout_build_info',
        'fanout_sockets_connected',
        'fanout_auth_failures_total',
        'fanout_topic_messages_published_total',
        'fanout_delivery_latency_seconds',
      ]) {
        assert.match(text1, new RegExp(`^# TYPE ${name} `, 'm'), `${name} declared`);
      }
      assert.ok(h.metricValue(text1, 'fanout_topic_messages_published_total{source="socket"}') >= 1);
      assert.ok(h.metricValue(text1, 'fanout_auth_failures_total{reason="invalid_token"}') >= 1);
      for (const s of sockets) s.close();
      const deadline = Date.now() + 3000;
      let v;
      do {
        v = h.metricValue(await h.metrics(node.url), gauge);
        if (v === base) break;
        await h.sleep(20);
      } while (Date.now() < deadline);
      assert.equal(v, base, 'gauge goes back down after disconnects');
    });

    it('unknown routes → 404 JSON not_found; wrong method → 405 JSON', async () => {
      for (const p of ['/nope', '/api', '/api/users/1/x', '/api/models', '/api/nope/x']) {
        assertError(await h.api(node.url, 'GET', p), 404, 'not_found', p);
      }
      const r = await h.api(node.url, 'DELETE', '/api/users');
      assert.equal(r.status, 405);
      assert.equal(typeof r.body.error.code, 'string');
      const r2 = await h.api(node.url, 'GET', '/api/users/login');
      assert.equal(r2.status, 405);
      assert.equal(typeof r2.body.error.code, 'string');
    });
  });
});
