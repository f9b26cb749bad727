'use strict';
// Logins and model permissions against real node processes (and a real redis-server):
// login/signup throttles per account name and per client address (429 + Retry-After), the
// unknown-user timing, a login flood from one address vs a login from another, record
// ownership (403 for others), the `authenticated` and `readonly` policies, size and count
// quotas, and model events — embedded and in a cluster over Redis.
//
// Distinct client addresses are distinct loopback addresses (127.0.0.x): the node throttles
// by TCP peer address, so each test speaks from addresses of its own.

const { describe, it, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/node');
const { startRedis } = require('../lib/redis');

const ABSENCE_MS = 300;

const { apiFrom } = h;

const signup = (addr, base, username, password = 'secret123') =>
  apiFrom(addr, base, 'POST', '/api/users', { username, email: `${username}@example.com`, password });
const loginFrom = (addr, base, body) => apiFrom(addr, base, 'POST', '/api/users/login', body);

/** Creates and logs in a user from `addr`: { username, password, userId, token }. */
async function userFrom(addr, base, prefix) {
  const username = h.uniqueName(prefix);
  const created = await signup(addr, base, username);
  assert.equal(created.status, 201, created.text);
  const res = await loginFrom(addr, base, { username, password: 'secret123' });
  assert.equal(res.status, 200, res.text);
  return { username, password: 'secret123', userId: res.body.userId, token: res.body.id };
}

function assertThrottled(res, maxRetryAfter, what) {
  assert.equal(res.status, 429, `${what}: ${res.status} ${res.text}`);
  assert.equal(res.body.error.code, 'rate_limited', what);
  const retry = Number(res.headers['retry-after']);
  assert.ok(Number.isInteger(retry) && retry >= 1 && retry <= maxRetryAfter, `${what}: Retry-After ${res.headers['retry-after']}`);
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
};

async function metricSum(base, prefix) {
  const text = await h.metrics(base);
  return text
    .split('\n')
    .filter((l) => l.startsWith(prefix))
    .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
}

describe('accounts: login and signup throttles', () => {
  let node;
  before(async () => {
    node = await h.startNode({
      env: {
        FANOUT_LOGIN_PER_USERNAME_PER_MINUTE: '3',
        FANOUT_LOGIN_PER_IP_PER_MINUTE: '5',
        FANOUT_SIGNUP_PER_IP_PER_MINUTE: '4',
      },
    });
  });
  after(async () => {
    if (node) assert.equal(await node.stop(), 0);
  });

  it('per account name: the 4th attempt is 429 with Retry-After, from any address; other accounts are unaffected', async () => {
    const alice = await userFrom('127.0.0.20', node.url, 'alice');
    const bob = await userFrom('127.0.0.20', node.url, 'bob');
    // alice's one successful login above used 1 of her 3; two wrong passwords use the rest.
    for (let i = 0; i < 2; i += 1) {
      const r = await loginFrom('127.0.0.21', node.url, { username: alice.username, password: 'wrong-password' });
      assert.equal(r.status, 401, r.text);
    }
    // Even the right password, from another address, is refused now: no guess is checked.
    const refused = await loginFrom('127.0.0.22', node.url, { username: alice.username, password: alice.password });
    assertThrottled(refused, 20, 'alice, 4th attempt');
    // bob, from the address that made alice's failed attempts, is fine.
    const ok = await loginFrom('127.0.0.21', node.url, { username: bob.username, password: bob.password });
    assert.equal(ok.status, 200, ok.text);
    // alice's existing token still works.
    assert.equal((await h.api(node.url, 'GET', '/api/models/Thing', undefined, alice.token)).status, 200);
    assert.ok((await metricSum(node.url, 'fanout_credentials_throttled_total{limit="username",route="login"}')) >= 1);
  });

  it('per client address: the 6th login from one address is 429 whatever the account; another address logs in', async () => {
    const carol = await userFrom('127.0.0.30', node.url, 'carol');
    for (let i = 0; i < 5; i += 1) {
      const r = await loginFrom('127.0.0.31', node.url, { username: h.uniqueName('ghost'), password: 'secret123' });
      assert.equal(r.status, 401, r.text);
    }
    const refused = await loginFrom('127.0.0.31', node.url, { username: carol.username, password: carol.password });
    assertThrottled(refused, 12, '6th login from 127.0.0.31');
    const byEmail = await loginFrom('127.0.0.31', node.url, { email: `${carol.username}@example.com`, password: carol.password });
    assertThrottled(byEmail, 12, 'by e-mail from 127.0.0.31');
    const elsewhere = await loginFrom('127.0.0.32', node.url, { username: carol.username, password: carol.password });
    assert.equal(elsewhere.status, 200, elsewhere.text);
    assert.ok((await metricSum(node.url, 'fanout_credentials_throttled_total{limit="ip",route="login"}')) >= 2);
  });

  it('signups per address: invalid ones do not count, the 5th valid one is 429, another address signs up', async () => {
    for (const body of [{}, { username: 'a b', email: 'x@example.com', password: 'secret123' }, { username: 'ok', email: 'nope', password: 'secret123' }]) {
      const r = await apiFrom('127.0.0.40', node.url, 'POST', '/api/users', body);
      assert.equal(r.status, 422, r.text);
    }
    for (let i = 0; i < 4; i += 1) {
      const r = await signup('127.0.0.40', node.url, h.uniqueName('s'));
      assert.equal(r.status, 201, r.text);
    }
    assertThrottled(await signup('127.0.0.40', node.url, h.uniqueName('s')), 15, '5th signup');
    assert.equal((await signup('127.0.0.41', node.url, h.uniqueName('s'))).status, 201);
    assert.ok((await metricSum(node.url, 'fanout_credentials_throttled_total{limit="ip",route="signup"}')) >= 1);
  });
});

describe('accounts: login timing does not reveal which usernames exist', () => {
  let node;
  before(async () => {
    node = await h.startNode({ env: { FANOUT_LOGIN_PER_USERNAME_PER_MINUTE: '0', FANOUT_LOGIN_PER_IP_PER_MINUTE: '0' } });
  });
  after(async () => {
    if (node) assert.equal(await node.stop(), 0);
  });

  it('unknown user and wrong password take the same time (medians of 20, ratio within 0.5–2)', async () => {
    const user = await userFrom('127.0.0.50', node.url, 'timing');
    const wrong = () => loginFrom('127.0.0.50', node.url, { username: user.username, password: 'wrong-password' });
    const unknown = () => loginFrom('127.0.0.50', node.url, { username: h.uniqueName('nobody'), password: 'wrong-password' });
    for (let i = 0; i < 3; i += 1) {
      await wrong();
      await unknown();
    }
    const times = { wrong: [], unknown: [] };
    for (let i = 0; i < 20; i += 1) {
      const a = await wrong();
      const b = await unknown();
      assert.equal(a.status, 401);
      assert.equal(b.status, 401);
      assert.deepEqual(a.body, b.body, 'the same answer');
      times.wrong.push(a.ms);
      times.unknown.push(b.ms);
    }
    const ratio = median(times.unknown) / median(times.wrong);
    console.log(`# login medians: wrong password ${median(times.wrong).toFixed(1)} ms, unknown user ${median(times.unknown).toFixed(1)} ms, ratio ${ratio.toFixed(2)}`);
    assert.ok(ratio > 0.5 && ratio < 2, `ratio ${ratio}`);
  });
});

describe('accounts: a login flood from one address does not lock out another', () => {
  // 400 concurrent logins for 400 usernames from 127.0.0.1 while a legitimate user logs in
  // from 127.0.0.2. Measured on a debug build (2 shared cores): the legitimate login takes
  // ~1 s, of which ~0.6 s is the node accepting 400 fresh connections (a flood of cheap 422s
  // costs as much); without the per-address bound on password jobs it takes 4–9 s and 100+
  // flood requests get 503 (the control case below).
  const flood = async (env) => {
    const node = await h.startNode({ env });
    try {
      const legit = await userFrom('127.0.0.2', node.url, 'legit');
      const baseline = [];
      for (let i = 0; i < 3; i += 1) {
        const r = await loginFrom('127.0.0.2', node.url, { username: legit.username, password: legit.password });
        assert.equal(r.status, 200, r.text);
        baseline.push(r.ms);
      }
      const attempts = Array.from({ length: 400 }, () =>
        loginFrom('127.0.0.1', node.url, { username: h.uniqueName('attacker'), password: 'guess-123' }).catch((err) => ({ status: 0, err })),
      );
      await h.sleep(50);
      const during = await loginFrom('127.0.0.2', node.url, { username: legit.username, password: legit.password });
      const results = await Promise.all(attempts);
      const byStatus = {};
      for (const r of results) byStatus[r.status] = (byStatus[r.status] || 0) + 1;
      const text = await h.metrics(node.url);
      return { during, baseline: median(baseline), results, byStatus, text, url: node.url };
    } finally {
      assert.equal(await node.stop(), 0);
    }
  };

  for (const [label, env, expectedLimit] of [
    // Only the hashing queue's per-address bound protects the legitimate user.
    ['address throttle off: the hashing queue is fair', { FANOUT_LOGIN_PER_IP_PER_MINUTE: '0' }, 'hash_per_ip'],
    ['default settings', {}, 'ip'],
  ]) {
    it(label, { timeout: 60_000 }, async () => {
      const { during, baseline, results, byStatus, text } = await flood(env);
      console.log(`# ${label}: legit login ${during.ms.toFixed(0)} ms during the flood (baseline median ${baseline.toFixed(0)} ms); flood answers ${JSON.stringify(byStatus)}`);
      assert.equal(during.status, 200, during.text);
      assert.ok(during.ms < 3000, `the legitimate login took ${during.ms} ms`);
      assert.equal(byStatus[503] || 0, 0, 'nobody gets 503: one address never fills the queue');
      assert.equal(byStatus[0] || 0, 0, 'every flood request is answered');
      assert.ok((byStatus[429] || 0) >= 200, 'most of the flood is refused before any hashing');
      const refused = results.filter((r) => r.status === 429);
      assert.ok(refused.every((r) => r.body.error.code === 'rate_limited' && Number(r.headers['retry-after']) >= 1));
      assert.ok(h.metricValue(text, `fanout_credentials_throttled_total{limit="${expectedLimit}",route="login"}`) > 0);
      // Once the flood is over, the pool is empty again.
      assert.equal(h.metricValue(text, 'fanout_password_hash_jobs'), 0);
    });
  }

  it('control: without the per-address bound the same flood fills the queue (503s)', { timeout: 90_000 }, async () => {
    const { during, results, byStatus, text } = await flood({ FANOUT_LOGIN_PER_IP_PER_MINUTE: '0', FANOUT_PASSWORD_HASH_PER_IP: '1000' });
    console.log(`# control: legit login ${during.status} in ${during.ms.toFixed(0)} ms during the flood; flood answers ${JSON.stringify(byStatus)}`);
    assert.ok((byStatus[503] || 0) > 0, 'the queue filled up');
    const full = results.filter((r) => r.status === 503);
    assert.ok(full.every((r) => r.body.error.code === 'unavailable' && r.headers['retry-after'] === '1'), 'queue full: 503 + Retry-After: 1');
    assert.ok(h.metricValue(text, 'fanout_credentials_throttled_total{limit="hash_queue",route="login"}') > 0);
    // The legitimate login's delay (measured 4–9 s here) depends on the machine: logged, not asserted.
  });
});

/** The model permission suite, run embedded and in a cluster; `nodes()` gives [a, b]. */
function modelSuite(label, start) {
  describe(`accounts: model permissions (${label})`, () => {
    let ctx;
    let a;
    let b;
    let alice;
    let bob;
    let carol;
    before(async () => {
      ctx = await start({ FANOUT_MODEL_ACL: 'Public=authenticated,Feed=readonly' });
      [a, b] = ctx.nodes;
      alice = await h.newUser(a.url, 'alice');
      bob = await h.newUser(b.url, 'bob');
      carol = await h.newUser(b.url, 'carol');
    });
    after(async () => {
      h.closeAll();
      await ctx?.stop();
    });
    afterEach(() => h.closeAll());

    it('only the owner updates or deletes (403 forbidden otherwise); everyone reads; events follow the writes that happened', async () => {
      const M = 'Order';
      const watcher = await h.connectAuthed(b.url, carol.token);
      const events = [];
      watcher.onAny((event, data) => events.push([event, data]));
      await h.subscribe(watcher, { collectionName: M, method: 'POST' });

      const created = await h.api(a.url, 'POST', `/api/models/${M}`, { item: 'tea', qty: 1 }, alice.token);
      assert.equal(created.status, 201, created.text);
      const id = created.body.id;
      assert.deepEqual(created.body, { id, item: 'tea', qty: 1 }, 'the record carries no owner field');
      await h.subscribe(watcher, { collectionName: M, method: 'PUT', modelId: id });
      await h.subscribe(watcher, { collectionName: M, method: 'DELETE', modelId: id });

      for (const [method, body] of [['PUT', { item: 'stolen' }], ['PATCH', { qty: 99 }], ['DELETE']]) {
        const r = await h.api(b.url, method, `/api/models/${M}/${id}`, body, bob.token);
        assert.equal(r.status, 403, `bob ${method}: ${r.text}`);
        assert.equal(r.body.error.code, 'forbidden');
      }
      // bob still reads it, unchanged, over REST and with find.
      assert.deepEqual((await h.api(b.url, 'GET', `/api/models/${M}/${id}`, undefined, bob.token)).body, created.body);
      const bobSocket = await h.connectAuthed(b.url, bob.token);
      const found = await h.emitAck(bobSocket, 'find', { model: M });
      assert.deepEqual(found.result.find((r) => r.id === id), created.body);

      const patched = await h.api(b.url, 'PATCH', `/api/models/${M}/${id}`, { qty: 2 }, alice.token);
      assert.equal(patched.status, 200, patched.text);
      assert.deepEqual(patched.body, { id, item: 'tea', qty: 2 });
      const replaced = await h.api(a.url, 'PUT', `/api/models/${M}/${id}`, { item: 'green tea' }, alice.token);
      assert.deepEqual(replaced.body, { id, item: 'green tea' });
      // The owner survives a PUT: bob still cannot delete it, alice can.
      assert.equal((await h.api(a.url, 'DELETE', `/api/models/${M}/${id}`, undefined, bob.token)).status, 403);
      const deleted = await h.api(b.url, 'DELETE', `/api/models/${M}/${id}`, undefined, alice.token);
      assert.deepEqual(deleted.body, { count: 1 });

      await h.waitUntil(() => events.length >= 4, 3000, 'four model events');
      await h.sleep(ABSENCE_MS);
      assert.deepEqual(events, [
        [`/${M}/POST`, created.body],
        [`/${M}/${id}/PUT`, patched.body],
        [`/${M}/${id}/PUT`, replaced.body],
        [`/${M}/${id}/DELETE`, replaced.body],
      ], 'refused writes publish nothing');
    });

    it('an owner field in the body is only data: the creator stays the owner', async () => {
      const r = await h.api(a.url, 'POST', '/api/models/Order', { item: 'x', ownerId: alice.userId, userId: alice.userId }, bob.token);
      assert.equal(r.status, 201);
      assert.equal(r.body.ownerId, alice.userId, 'kept as data');
      assert.equal((await h.api(a.url, 'PATCH', `/api/models/Order/${r.body.id}`, { item: 'mine' }, alice.token)).status, 403);
      assert.equal((await h.api(b.url, 'PATCH', `/api/models/Order/${r.body.id}`, { item: 'mine' }, bob.token)).status, 200);
    });

    it('policy authenticated: anyone signed in updates and deletes; readonly: no REST writes', async () => {
      const p = await h.api(a.url, 'POST', '/api/models/Public', { note: 'hi' }, alice.token);
      assert.equal(p.status, 201);
      const put = await h.api(b.url, 'PUT', `/api/models/Public/${p.body.id}`, { note: 'edited by bob' }, bob.token);
      assert.equal(put.status, 200, put.text);
      assert.equal((await h.api(b.url, 'DELETE', `/api/models/Public/${p.body.id}`, undefined, carol.token)).status, 200);
      for (const [method, path] of [['POST', '/api/models/Feed'], ['PUT', '/api/models/Feed/1'], ['PATCH', '/api/models/Feed/1'], ['DELETE', '/api/models/Feed/1']]) {
        const r = await h.api(a.url, method, path, method === 'DELETE' ? undefined : { a: 1 }, alice.token);
        assert.equal(r.status, 403, `${method} ${path}`);
        assert.equal(r.body.error.code, 'forbidden');
      }
      assert.equal((await h.api(a.url, 'GET', '/api/models/Feed', undefined, alice.token)).status, 200);
      assert.ok((await metricSum(a.url, 'fanout_model_writes_refused_total{reason="readonly"}')) >= 4);
    });

    it('quotas: record size 413, records per user and models 422 quota_exceeded; nothing is published for them', async () => {
      const q = await start({ FANOUT_MODEL_RECORD_MAX_BYTES: '100', FANOUT_MODEL_MAX_RECORDS_PER_USER: '3', FANOUT_MODEL_MAX_MODELS: '3' });
      try {
        const [qa, qb] = q.nodes;
        const dave = await h.newUser(qa.url, 'dave');
        const erin = await h.newUser(qb.url, 'erin');
        const watcher = await h.connectAuthed(qb.url, erin.token);
        const events = [];
        watcher.onAny((event) => events.push(event));
        await h.subscribe(watcher, { collectionName: 'Q', method: 'POST' });

        const big = { text: 'x'.repeat(100) };
        const tooBig = await h.api(qa.url, 'POST', '/api/models/Q', big, dave.token);
        assert.equal(tooBig.status, 413, tooBig.text);
        assert.equal(tooBig.body.error.code, 'payload_too_large');
        const ids = [];
        for (let i = 0; i < 3; i += 1) {
          const r = await h.api(i % 2 ? qb.url : qa.url, 'POST', '/api/models/Q', { i }, dave.token);
          assert.equal(r.status, 201, r.text);
          ids.push(r.body.id);
        }
        assert.deepEqual(ids, [1, 2, 3], 'refused creates use no id');
        const fourth = await h.api(qb.url, 'POST', '/api/models/Q', { i: 3 }, dave.token);
        assert.equal(fourth.status, 422, fourth.text);
        assert.equal(fourth.body.error.code, 'quota_exceeded');
        assert.equal((await h.api(qa.url, 'POST', '/api/models/Q', { erin: 1 }, erin.token)).status, 201, 'erin has her own quota');
        // Growing a record past the size limit is refused too, and changes nothing.
        const grow = await h.api(qa.url, 'PATCH', `/api/models/Q/${ids[0]}`, big, dave.token);
        assert.equal(grow.status, 413, grow.text);
        assert.equal((await h.api(qa.url, 'PUT', `/api/models/Q/${ids[0]}`, big, dave.token)).status, 413);
        assert.deepEqual((await h.api(qb.url, 'GET', `/api/models/Q/${ids[0]}`, undefined, dave.token)).body, { id: 1, i: 0 });
        // A delete frees a place.
        assert.equal((await h.api(qb.url, 'DELETE', `/api/models/Q/${ids[0]}`, undefined, dave.token)).status, 200);
        assert.equal((await h.api(qa.url, 'POST', '/api/models/Q', { i: 4 }, dave.token)).status, 201);
        // Models: Q plus two more, then no new one.
        assert.equal((await h.api(qa.url, 'POST', '/api/models/Q2', {}, dave.token)).status, 201);
        assert.equal((await h.api(qb.url, 'POST', '/api/models/Q3', {}, erin.token)).status, 201);
        const fourthModel = await h.api(qa.url, 'POST', '/api/models/Q4', {}, erin.token);
        assert.equal(fourthModel.status, 422, fourthModel.text);
        assert.equal(fourthModel.body.error.code, 'quota_exceeded');
        assert.equal((await h.api(qb.url, 'POST', '/api/models/Q2', {}, erin.token)).status, 201, 'existing models still take records');

        // dave's ids 1–3, erin's 4, dave's 5 after the delete.
        await h.waitUntil(() => events.length >= 5, 3000, 'create events');
        await h.sleep(ABSENCE_MS);
        assert.equal(events.length, 5, `only the accepted creates of Q are published: ${JSON.stringify(events)}`);
        for (const reason of ['too_large', 'user_quota', 'model_quota']) {
          const refused = (await metricSum(qa.url, `fanout_model_writes_refused_total{reason="${reason}"}`)) +
            (await metricSum(qb.url, `fanout_model_writes_refused_total{reason="${reason}"}`));
          assert.ok(refused >= 1, reason);
        }
      } finally {
        await q.stop();
      }
    });
  });
}

modelSuite('embedded', async (env) => {
  const node = await h.startNode({ env });
  // One node serves as both "a" and "b".
  return { nodes: [node, node], stop: async () => assert.equal(await node.stop(), 0) };
});

let prefixSeq = 0;
modelSuite('cluster over Redis', async (env) => {
  const redis = await startRedis();
  const prefix = `acct${process.pid}_${(prefixSeq += 1)}`;
  const nodes = [];
  for (let i = 0; i < 2; i += 1) {
    nodes.push(await h.startNode({ env: { FANOUT_REDIS_URL: redis.url, FANOUT_PREFIX: prefix, ...env }, args: ['--node-id', `acct${i}`] }));
  }
  return {
    nodes,
    stop: async () => {
      for (const n of nodes) assert.equal(await n.stop(), 0);
      await redis.stop();
    },
  };
});
