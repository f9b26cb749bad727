'use strict';
// Sessions end when their token dies, on every node, whatever the client does: logout with
// stalled Socket.IO and /ws readers (closed within 1 s, refusals checked server-side), token
// expiry without any message (reason token_expired), a lost revocation message healed by
// re-validation, a logout retried after its revocation could not be published, and the
// per-connection request rate (both transports).

const { describe, it, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const {
  startNode, api, login, newUser, connectAuthed, closeAll, once, emitAck, collect, subscribe,
  metrics, metricValue, metricSum, sleep, uniqueName,
} = require('../lib/node');
const { startRedis } = require('../lib/redis');
const { wsClient, stalledSocketIo, stalledWs } = require('../lib/ws');

const REVALIDATE_MS = 500;
const CACHE_MS = 5000; // the token cache's positive TTL (node/src/store/cache.rs)

/** Disconnections with `reason` on namespace `ns` of every node, read now. */
async function disconnections(nodes, ns, reason) {
  const texts = await Promise.all(nodes.map((n) => metrics(n.url)));
  return texts.map((t) => metricValue(t, `fanout_disconnections_total{namespace="${ns}",reason="${reason}"}`) || 0);
}

/** Polls the async predicate every 25 ms until it holds; rejects with `what` after `ms`. */
async function eventually(what, ms, predicate) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await predicate();
    if (last === true) return;
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${what} (last: ${JSON.stringify(last)})`);
    await sleep(25);
  }
}

const sha256 = (s) => crypto.createHash('sha256').update(s).digest('hex');

/** Sends a raw Socket.IO publish from a stalled (not reading) client, if its socket still takes it. */
function rawPublish(stalled, topic, data) {
  try {
    stalled.ws.send(`42${JSON.stringify(['publish', { topic, data }])}`, () => {});
  } catch {
    /* closed */
  }
}

describe('sessions end when their token dies', () => {
  let redis;
  let nodes;

  before(async () => {
    redis = await startRedis();
    nodes = [];
    for (let i = 0; i < 2; i += 1) {
      nodes.push(await startNode({
        env: {
          FANOUT_REDIS_URL: redis.url,
          FANOUT_SESSION_REVALIDATE_MS: String(REVALIDATE_MS),
          // Large byte budget: the stalled readers below stay stalled instead of being closed
          // as slow consumers, so a logout finds their queues full.
          FANOUT_CLIENT_QUEUE_BYTES: String(64 * 1024 * 1024),
        },
        args: ['--node-id', `sess${i}`],
      }));
    }
  });

  after(async () => {
    closeAll();
    for (const node of nodes || []) assert.equal(await node.stop(), 0);
    await redis?.stop();
  });

  afterEach(() => closeAll());

  it('logout ends stalled Socket.IO and /ws readers on every node within 1 s; they can do nothing meanwhile', async () => {
    const u = await newUser(nodes[0].url, 'kick');
    // A second token of the same user watches the user's private topic: whatever the
    // logged-out connections still manage to publish there would show up here.
    const other = await login(nodes[0].url, { username: u.username, password: u.password });
    assert.equal(other.status, 200);
    const watcher = await connectAuthed(nodes[0].url, other.body.id);
    const privateTopic = `/users/${u.userId}`;
    const leaked = collect(watcher, privateTopic);
    await subscribe(watcher, privateTopic);

    const topic = uniqueName('flood');
    const stalledSio = [];
    const stalledWss = [];
    for (const node of nodes) {
      stalledSio.push(await stalledSocketIo(node.url, u.token, topic));
      stalledWss.push(await stalledWs(node.url, u.token, topic));
    }
    // A reading connection of the same token on each node, told the polite way.
    const live = [];
    for (const node of nodes) live.push(await connectAuthed(node.url, u.token));
    const liveGone = live.map((s) => once(s, 'disconnect', 5000));

    // Fill the stalled readers' queues: far more than the TCP buffers take, well under the
    // byte budget and the message cap.
    const pad = 'x'.repeat(32 * 1024);
    for (let i = 0; i < 600; i += 1) {
      const res = await api(nodes[0].url, 'POST', '/api/publish', { topic, data: { i, pad } }, other.body.id);
      assert.equal(res.status, 202, res.text);
    }
    await sleep(300);
    const sioBefore = await disconnections(nodes, '/', 'token_revoked');
    const wsBefore = await disconnections(nodes, '/ws', 'token_revoked');

    const t0 = Date.now();
    const out = await api(nodes[1].url, 'POST', '/api/users/logout', undefined, u.token);
    assert.equal(out.status, 204, out.text);
    // Straight away, before any transport is gone: what the stalled ones send is refused.
    for (const s of stalledSio) rawPublish(s, privateTopic, 'leak-sio');
    for (const c of stalledWss) c.sendRaw(JSON.stringify({ type: 'publish', callback_id: 99, data: { topic: privateTopic, data: 'leak-ws' } }));

    await eventually('every session of the token closed on both nodes, server side', 1000, async () => {
      const sio = (await disconnections(nodes, '/', 'token_revoked')).map((v, i) => v - sioBefore[i]);
      const ws = (await disconnections(nodes, '/ws', 'token_revoked')).map((v, i) => v - wsBefore[i]);
      return (sio.every((d) => d === 2) && ws.every((d) => d === 1)) || { sio, ws };
    });
    const took = Date.now() - t0;
    assert.ok(took <= 1000, `took ${took} ms`);
    for (const gone of liveGone) assert.equal(await gone, 'io server disconnect');
    const texts = await Promise.all(nodes.map((n) => metrics(n.url)));
    for (const text of texts) {
      assert.equal(metricValue(text, 'fanout_sockets_connected{namespace="/ws"}'), 0);
    }
    await sleep(300);
    assert.deepEqual(leaked, [], 'nothing published after the logout');
    // REST refuses the token too, on both nodes.
    for (const node of nodes) {
      assert.equal((await api(node.url, 'GET', '/api/models/Thing', undefined, u.token)).status, 401);
    }
  });

  it('a token with ttl 2 ends its Socket.IO and /ws sessions at ~2 s without any message (token_expired)', async () => {
    const u = await newUser(nodes[0].url, 'ttl', { ttl: 2 });
    const created = Date.parse(u.login.created);
    const sio = await connectAuthed(nodes[0].url, u.token);
    const sioGone = once(sio, 'disconnect', 5000);
    const ws = await wsClient(nodes[1].url);
    assert.equal((await ws.request('authenticate', { token: u.token })).result, true);
    const sioBefore = await disconnections(nodes, '/', 'token_expired');
    const wsBefore = await disconnections(nodes, '/ws', 'token_expired');
    // Before the expiry both sessions work.
    assert.equal((await emitAck(sio, 'whoami')).result.userId, u.userId);
    assert.equal((await ws.request('whoami')).result, true);

    assert.equal(await sioGone, 'io server disconnect');
    const sioAt = Date.now() - created;
    const closed = await ws.closed;
    const wsAt = Date.now() - created;
    assert.deepEqual(closed, { code: 1008, reason: 'token expired' });
    for (const at of [sioAt, wsAt]) assert.ok(at >= 1900 && at <= 2700, `ended ${at} ms after login`);
    const sioAfter = await disconnections(nodes, '/', 'token_expired');
    const wsAfter = await disconnections(nodes, '/ws', 'token_expired');
    assert.equal(sioAfter[0] - sioBefore[0], 1);
    assert.equal(wsAfter[1] - wsBefore[1], 1);
  });

  it('a revocation whose message was lost is healed by re-validation within its bound', async () => {
    const u = await newUser(nodes[0].url, 'lost');
    const sio = await connectAuthed(nodes[0].url, u.token);
    const sioGone = once(sio, 'disconnect', 10_000);
    const ws = await wsClient(nodes[1].url);
    assert.equal((await ws.request('authenticate', { token: u.token })).result, true);
    const before = await disconnections(nodes, '/', 'token_revoked');
    // Deleted behind fanout's back: no revocation message is ever sent.
    assert.match(await redis.command('DEL', `fanout:token:${sha256(u.token)}`), /^:1/);
    const t0 = Date.now();
    assert.equal(await sioGone, 'io server disconnect');
    const closed = await ws.closed;
    const took = Date.now() - t0;
    assert.deepEqual(closed, { code: 1008, reason: 'token revoked' });
    assert.ok(took <= REVALIDATE_MS + CACHE_MS + 500, `healed after ${took} ms`);
    const after = await disconnections(nodes, '/', 'token_revoked');
    assert.equal(after[0] - before[0], 1);
    const checks = metricSum(await metrics(nodes[0].url), 'fanout_session_checks_total', { outcome: 'dead' });
    assert.ok(checks >= 1, `dead checks: ${checks}`);
  });

  it('a logout whose revocation could not be published answers 503 and its retry ends the sessions', async () => {
    const u = await newUser(nodes[0].url, 'retry');
    const sio = await connectAuthed(nodes[0].url, u.token);
    const sioGone = once(sio, 'disconnect', 5000);
    const stalled = await stalledWs(nodes[1].url, u.token, uniqueName('t'));
    const wsBefore = await disconnections(nodes, '/ws', 'token_revoked');
    // PUBLISH refused by Redis (everything else works): the revocation cannot go out.
    assert.match(await redis.command('ACL', 'SETUSER', 'default', '-publish'), /^\+OK/);
    let failed;
    try {
      failed = await api(nodes[0].url, 'POST', '/api/users/logout', undefined, u.token);
    } finally {
      assert.match(await redis.command('ACL', 'SETUSER', 'default', '+publish'), /^\+OK/);
    }
    assert.equal(failed.status, 503, failed.text);
    assert.equal(failed.body.error.code, 'unavailable');
    // The token still works (nothing half done), so the retry can do it all again.
    assert.equal((await emitAck(sio, 'whoami')).result.userId, u.userId);
    const t0 = Date.now();
    const retry = await api(nodes[0].url, 'POST', '/api/users/logout', undefined, u.token);
    assert.equal(retry.status, 204, retry.text);
    assert.equal(await sioGone, 'io server disconnect');
    await eventually('the stalled /ws session on the other node closed', 1000, async () => {
      const ws = await disconnections(nodes, '/ws', 'token_revoked');
      return ws[1] - wsBefore[1] === 1 || ws;
    });
    assert.ok(Date.now() - t0 <= 1000);
    stalled.close();
    // A third attempt: the token is gone.
    assert.equal((await api(nodes[0].url, 'POST', '/api/users/logout', undefined, u.token)).status, 401);
  });
});

describe('per-connection request rate', () => {
  let node;

  before(async () => {
    // Defaults: 100 requests/s, burst 200, closed after 100 refusals in a row.
    node = await startNode({ args: ['--node-id', 'rate'] });
  });

  after(async () => {
    closeAll();
    assert.equal(await node?.stop(), 0);
  });

  it('a burst of 1000 Socket.IO publishes: refused past the burst, counted, the connection closed; others unaffected', async () => {
    const u = await newUser(node.url, 'rate');
    const flooder = await connectAuthed(node.url, u.token);
    const gone = once(flooder, 'disconnect', 5000);
    const normal = await connectAuthed(node.url, u.token);
    const got = collect(normal, 'calm');
    await subscribe(normal, 'calm');
    const before = await metrics(node.url);

    const acks = [];
    for (let i = 0; i < 1000; i += 1) {
      acks.push(emitAck(flooder, 'publish', { topic: 'flood', data: i }, 3000).catch(() => 'no ack'));
    }
    // Meanwhile a normal client publishes within its own rate: all accepted.
    const calm = [];
    for (let i = 0; i < 20; i += 1) calm.push(await emitAck(normal, 'publish', { topic: 'calm', data: i }));
    assert.ok(calm.every((a) => a.ok === true), JSON.stringify(calm));

    const results = await Promise.all(acks);
    const ok = results.filter((a) => a && a.ok === true).length;
    const limited = results.filter((a) => a && a.error && a.error.code === 'rate_limited').length;
    assert.ok(ok >= 200 && ok <= 300, `accepted ${ok}: ${JSON.stringify(results.slice(0, 2))}`);
    assert.ok(limited >= 100, `rate_limited ${limited}`);
    assert.equal(ok + limited + results.filter((a) => a === 'no ack').length, 1000);
    assert.equal(await gone, 'transport close', 'closed at the transport level');

    const after = await metrics(node.url);
    const delta = (sample) => (metricValue(after, sample) || 0) - (metricValue(before, sample) || 0);
    // Refusals read before the close but never answered are counted too.
    assert.ok(delta('fanout_bad_input_total{code="rate_limited",origin="socket"}') >= limited);
    assert.equal(delta('fanout_disconnections_total{namespace="/",reason="rate_limited"}'), 1);
    assert.ok(normal.connected);
    assert.equal((await emitAck(normal, 'whoami')).result.userId, u.userId);
    assert.equal(got.length, 20);
  });

  it('a burst of 1000 /ws publishes: the same rule', async () => {
    const u = await newUser(node.url, 'rate-ws');
    const c = await wsClient(node.url);
    assert.equal((await c.request('authenticate', { token: u.token })).result, true);
    const before = await metrics(node.url);
    const replies = [];
    for (let i = 0; i < 1000; i += 1) {
      replies.push(c.request('publish', { topic: 'wsflood', data: i }, 3000).catch(() => 'no reply'));
    }
    const results = await Promise.all(replies);
    const ok = results.filter((r) => r.result === true).length;
    const limited = results.filter((r) => r.error && r.error.code === 'rate_limited').length;
    // The `authenticate` request took one token of the burst of 200: with no refill before
    // the burst is over (a fast machine), exactly 199 publishes are accepted.
    assert.ok(ok >= 199 && ok <= 300, `accepted ${ok}: ${JSON.stringify(results.slice(0, 2))}`);
    assert.ok(limited >= 100, `rate_limited ${limited}`);
    const closed = await c.closed;
    assert.equal(closed.code, 1006, 'closed at the transport level, no close frame');
    const after = await metrics(node.url);
    const delta = (sample) => (metricValue(after, sample) || 0) - (metricValue(before, sample) || 0);
    assert.equal(delta('fanout_disconnections_total{namespace="/ws",reason="rate_limited"}'), 1);
    assert.ok(delta('fanout_bad_input_total{code="rate_limited",origin="ws"}') >= limited);
  });
});

/**
 * A raw Engine.IO long-polling client: handshake, CONNECT to `/` with `token`, `subscribe` to
 * `topic` (acked) — then it stops polling, so whatever is sent to it stays in its buffer.
 */
async function stalledPolling(base, token, topic) {
  const url = (sid) => `${base}/socket.io/?EIO=4&transport=polling${sid ? `&sid=${sid}` : ''}`;
  const opened = await (await fetch(url(), { signal: AbortSignal.timeout(3000) })).text();
  const { sid } = JSON.parse(opened.slice(1));
  const post = async (body) => {
    const res = await fetch(url(sid), {
      method: 'POST', body, headers: { 'content-type': 'text/plain;charset=UTF-8' }, signal: AbortSignal.timeout(3000),
    });
    await res.text();
    return res.status;
  };
  const pollUntil = async (prefix) => {
    for (let i = 0; i < 5; i += 1) {
      const packets = (await (await fetch(url(sid), { signal: AbortSignal.timeout(3000) })).text()).split('\x1e');
      if (packets.some((p) => p.startsWith(prefix))) return packets;
    }
    throw new Error(`no ${prefix} packet`);
  };
  assert.equal(await post(`40${JSON.stringify({ token })}`), 200);
  await pollUntil('40');
  assert.equal(await post(`420${JSON.stringify(['subscribe', topic])}`), 200);
  const acked = await pollUntil('430');
  assert.ok(acked.find((p) => p.startsWith('430')).includes('"ok":true'));
  return { sid, url: url(sid), post };
}

describe('a long-polling session whose buffer is full', () => {
  const CAP = 16;
  let node;

  before(async () => {
    node = await startNode({ env: { FANOUT_CLIENT_QUEUE_MESSAGES: String(CAP) }, args: ['--node-id', 'poll-full'] });
  });

  after(async () => {
    closeAll();
    assert.equal(await node?.stop(), 0);
  });

  it('is ended within 1 s of the logout, though its DISCONNECT cannot be queued', async () => {
    const u = await newUser(node.url, 'pollfull');
    const topic = uniqueName('pf');
    const stalled = await stalledPolling(node.url, u.token, topic);
    // Exactly fill its buffer (one more would make it a slow consumer).
    for (let i = 0; i < CAP; i += 1) {
      assert.equal((await api(node.url, 'POST', '/api/publish', { topic, data: i }, u.token)).status, 202);
    }
    const before = await disconnections([node], '/', 'token_revoked');
    const t0 = Date.now();
    assert.equal((await api(node.url, 'POST', '/api/users/logout', undefined, u.token)).status, 204);
    await eventually('the polling session ended', 1000, async () => {
      const now = await disconnections([node], '/', 'token_revoked');
      return now[0] - before[0] === 1 || now;
    });
    assert.ok(Date.now() - t0 <= 1000);
    // Its Engine.IO session is gone: a request on it is refused.
    const res = await fetch(stalled.url, { signal: AbortSignal.timeout(3000) });
    await res.text();
    assert.equal(res.status, 400);
  });

  it('one message over its cap makes it a slow consumer, closed at once (not at its heartbeat)', async () => {
    const u = await newUser(node.url, 'pollslow');
    const topic = uniqueName('ps');
    const stalled = await stalledPolling(node.url, u.token, topic);
    const before = await disconnections([node], '/', 'slow_consumer');
    const t0 = Date.now();
    for (let i = 0; i <= CAP; i += 1) {
      assert.equal((await api(node.url, 'POST', '/api/publish', { topic, data: i }, u.token)).status, 202);
    }
    await eventually('the stalled poller closed as a slow consumer', 1000, async () => {
      const now = await disconnections([node], '/', 'slow_consumer');
      return now[0] - before[0] === 1 || now;
    });
    assert.ok(Date.now() - t0 <= 2000);
    const res = await fetch(stalled.url, { signal: AbortSignal.timeout(3000) });
    await res.text();
    assert.equal(res.status, 400, 'its Engine.IO session is gone');
  });
});
