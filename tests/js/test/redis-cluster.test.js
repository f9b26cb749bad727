'use strict';
// fanout on a Redis Cluster (FANOUT_REDIS_URL=redis+cluster://…): 3 fanout-node processes on a
// real 3-master/3-replica cluster (deploy/local/redis-cluster), driven with socket.io-client and
// /ws clients. Delivery, stores on every shard, a master SIGKILLed under traffic, a room's slot
// migrated under traffic, and the startup failures.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFile, spawn } = require('node:child_process');
const {
  BIN, HOST, REPO, startNode, api, newUser, connect, connectAuthed, closeAll, once, emitAck, collect, subscribe,
  waitUntil, sleep, metrics, metricSum, freePort,
} = require('../lib/node');
const { wsClient } = require('../lib/ws');
const { startRedisCluster } = require('../lib/redis-cluster');

const clusterUrl = (ports) => `redis+cluster://${ports.map((p) => `${HOST}:${p}`).join(',')}`;
const roomChannel = (room, nsp = '/') => `socket.io#${nsp}#${room}#`;
const sha256 = (text) => crypto.createHash('sha256').update(text).digest('hex');
/** True when nothing listens on 127.0.0.1:PORT. */
function portFree(port) {
  return new Promise((resolve) => {
    const srv = require('node:net').createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, HOST, () => srv.close(() => resolve(true)));
  });
}
const range = (from, to) => Array.from({ length: to - from }, (_, i) => from + i);

async function readyz(node) {
  try {
    return (await fetch(`${node.url}/readyz`, { signal: AbortSignal.timeout(2000) })).status;
  } catch {
    return 0;
  }
}

async function waitReady(nodes, ms = 20_000) {
  await waitUntil(async () => (await Promise.all(nodes.map(readyz))).every((s) => s === 200), ms, 'every node ready');
}

/** redis-cli -c (follows MOVED) against PORT → stdout. */
function cliCluster(port, ...args) {
  return new Promise((resolve, reject) => {
    execFile('redis-cli', ['-c', '-h', HOST, '-p', String(port), ...args.map(String)], { timeout: 5000 }, (err, out) =>
      err ? reject(err) : resolve(out.trim()),
    );
  });
}

/** Subscribers of a sharded channel on the master that serves it. */
async function shardSubscribers(cluster, channel) {
  const master = await cluster.masterOf(channel);
  const out = await cluster.cli(master, 'PUBSUB', 'SHARDNUMSUB', channel);
  return Number(out.trim().split('\n')[1]);
}

/**
 * Subscribers of TOPIC: a Socket.IO socket and a /ws client on each given node. Returns
 * { all: [{ name, got() → data[] }], close() }.
 */
async function subscribers(nodes, token, topic) {
  const all = [];
  const clients = [];
  for (const [i, node] of nodes.entries()) {
    const s = await connectAuthed(node.url, token);
    const got = collect(s, topic);
    await subscribe(s, topic);
    all.push({ name: `sio@${i}`, got: () => got });
    const c = await wsClient(node.url);
    clients.push(c);
    await c.request('authenticate', { token });
    const sub = await c.request('subscribe', { topic });
    assert.deepEqual(sub.data, { ok: true, topic }, JSON.stringify(sub));
    all.push({ name: `ws@${i}`, got: () => c.events.filter((e) => e.topic === topic).map((e) => e.data) });
  }
  return { all, close: () => clients.forEach((c) => c.close()) };
}

/** Publishes { seq } messages every `everyMs` from socket `s` until stop(); records acks. */
function publishLoop(s, topic, everyMs = 20) {
  const acked = [];
  let seq = 0;
  let running = true;
  const done = (async () => {
    while (running) {
      const n = seq++;
      const sent = Date.now();
      emitAck(s, 'publish', { topic, data: { seq: n } }, 15_000)
        .then((r) => acked.push({ seq: n, ok: r.ok === true, sent, at: Date.now() }))
        .catch(() => acked.push({ seq: n, ok: false, sent, at: Date.now() }));
      await sleep(everyMs);
    }
  })();
  return {
    acked,
    next: () => seq,
    async stop() {
      running = false;
      await done;
      await sleep(300);
    },
  };
}

/** The seqs a subscriber got, in arrival order. */
const seqs = (sub) => sub.got().map((d) => d.seq);

describe('3 fanout nodes on a Redis Cluster (3 masters + 3 replicas)', () => {
  let cluster;
  let nodes;
  let url;

  before(async () => {
    cluster = await startRedisCluster();
    url = clusterUrl(cluster.ports.slice(0, 2));
    nodes = [];
    for (let i = 0; i < 3; i += 1) {
      // The delivery test publishes hundreds of messages back to back on one connection.
      nodes.push(await startNode({ env: { FANOUT_REDIS_URL: url, FANOUT_CLIENT_RATE: '10000', FANOUT_CLIENT_BURST: '10000' }, args: ['--node-id', `rc${i}`] }));
    }
    await waitReady(nodes);
  });

  after(async () => {
    closeAll();
    for (const node of nodes || []) assert.equal(await node.stop(), 0, node.logs());
    await cluster?.stop();
  });

  it('cross-node delivery: hundreds back to back, exactly once and in order, Socket.IO and /ws', async () => {
    const u = await newUser(nodes[0].url, 'rcdel');
    const subs = await subscribers(nodes, u.token, 'rc-news');
    // Every node hosts the topic, so every node holds its room channel.
    assert.equal(await shardSubscribers(cluster, roomChannel('rc-news')), 3);
    const publisher = await connectAuthed(nodes[0].url, u.token);
    const acks = range(0, 300).map((seq) => emitAck(publisher, 'publish', { topic: 'rc-news', data: { seq } }, 10_000));
    for (const ack of await Promise.all(acks)) assert.deepEqual(ack, { ok: true });
    await waitUntil(() => subs.all.every((s) => s.got().length >= 300), 10_000, 'all 300 everywhere');
    await sleep(300);
    for (const s of subs.all) assert.deepEqual(seqs(s), range(0, 300), s.name);
    subs.close();
  });

  it('a node holds a room channel only while it has a subscriber there (Socket.IO or /ws)', async () => {
    const u = await newUser(nodes[0].url, 'rcdyn');
    const channel = roomChannel('rc-only-on-2');
    assert.equal(await shardSubscribers(cluster, channel), 0);
    const c = await wsClient(nodes[2].url);
    await c.request('authenticate', { token: u.token });
    await c.request('subscribe', { topic: 'rc-only-on-2' });
    assert.equal(await shardSubscribers(cluster, channel), 1);
    // Kept by the /ws hub (the room keeper) across sweeps, though no Socket.IO socket is in it.
    await sleep(6000);
    assert.equal(await shardSubscribers(cluster, channel), 1);
    const s = await connectAuthed(nodes[0].url, u.token);
    await emitAck(s, 'publish', { topic: 'rc-only-on-2', data: 'hi' });
    await waitUntil(() => c.events.length === 1, 3000, '/ws delivery');
    c.close();
    await waitUntil(async () => (await shardSubscribers(cluster, channel)) === 0, 15_000, 'channel dropped by the sweep');
  });

  it('users and tokens work whatever slot they land on; uniqueness holds cluster-wide', async () => {
    const users = [];
    for (let i = 0; i < 12; i += 1) users.push(await newUser(nodes[i % 3].url, `rcu${i}`));
    for (const [i, u] of users.entries()) {
      const s = await connectAuthed(nodes[(i + 1) % 3].url, u.token);
      assert.deepEqual(await emitAck(s, 'whoami'), { result: { userId: u.userId, node: `rc${(i + 1) % 3}` } });
      s.close();
    }
    const masters = new Set(await Promise.all(users.map((u) => cluster.masterOf(`fanout:token:${sha256(u.token)}`))));
    assert.ok(masters.size >= 2, `tokens on ${masters.size} master(s)`);
    const dupName = await api(nodes[2].url, 'POST', '/api/users', { username: users[0].username, email: 'other@x.io', password: 'secret123' });
    assert.equal(dupName.status, 409);
    const dupMail = await api(nodes[1].url, 'POST', '/api/users', { username: 'rc-unique-x', email: `${users[1].username}@example.com`, password: 'secret123' });
    assert.equal(dupMail.status, 409, JSON.stringify(dupMail.body));
  });

  it('model events, concurrent patches, presence and chat seats across nodes', async () => {
    const u = await newUser(nodes[0].url, 'rcm');
    const sockets = await Promise.all(nodes.map((n) => connectAuthed(n.url, u.token)));
    const created = sockets.map((s) => collect(s, '/RcParcel/POST'));
    for (const s of sockets) await subscribe(s, '/RcParcel/POST');
    const res = await api(nodes[1].url, 'POST', '/api/models/RcParcel', { w: 1 }, u.token);
    assert.equal(res.status, 201);
    await waitUntil(() => created.every((g) => g.length === 1), 3000, 'model event everywhere');
    await sleep(200);
    for (const g of created) assert.deepEqual(g, [res.body]);
    // Twelve PATCHes of one record at once, through all nodes: none is lost.
    const patches = await Promise.all(range(0, 12).map((i) =>
      api(nodes[i % 3].url, 'PATCH', `/api/models/RcParcel/${res.body.id}`, { [`f${i}`]: i }, u.token)));
    for (const p of patches) assert.equal(p.status, 200, JSON.stringify(p.body));
    const merged = (await api(nodes[2].url, 'GET', `/api/models/RcParcel/${res.body.id}`, undefined, u.token)).body;
    for (const i of range(0, 12)) assert.equal(merged[`f${i}`], i, JSON.stringify(merged));

    const v = await newUser(nodes[0].url, 'rcp');
    await subscribe(sockets[0], 'rc-presence');
    const other = await connectAuthed(nodes[2].url, v.token);
    await subscribe(other, 'rc-presence');
    const ids = [u.userId, v.userId].sort((a, b) => a - b);
    assert.deepEqual(await emitAck(sockets[1], 'presence', { topic: 'rc-presence' }), { result: ids });

    const room = `rc-chat-${Date.now()}`;
    const a = await connect(`${nodes[0].url}/chat`);
    const b = await connect(`${nodes[1].url}/chat`);
    const c = await connect(`${nodes[2].url}/chat`);
    const startA = once(a, 'startChat', 5000);
    const startB = once(b, 'startChat', 5000);
    a.emit('login', { user: 'ann', avatar: 'ann@example.com', id: room });
    await once(a, 'img');
    b.emit('login', { user: 'bob', avatar: 'bob@example.com', id: room });
    assert.deepEqual((await startA).users, ['ann', 'bob']);
    assert.deepEqual((await startB).users, ['ann', 'bob']);
    c.emit('login', { user: 'cid', avatar: 'cid@example.com', id: room });
    assert.deepEqual(await once(c, 'tooMany'), { boolean: true });
    const got = once(b, 'receive', 3000);
    a.emit('msg', { msg: 'across shards' });
    assert.equal((await got).msg, 'across shards');
  });

  it('logout on one node disconnects the token\'s sockets on every node and revokes it everywhere', async () => {
    const d = await newUser(nodes[0].url, 'rcout');
    const sockets = await Promise.all(nodes.map((n) => connectAuthed(n.url, d.token)));
    const reasons = sockets.map((s) => once(s, 'disconnect', 5000));
    assert.equal((await api(nodes[2].url, 'POST', '/api/users/logout', undefined, d.token)).status, 204);
    assert.deepEqual(await Promise.all(reasons), Array(3).fill('io server disconnect'));
    for (const node of nodes) {
      assert.equal((await api(node.url, 'POST', '/api/publish', { topic: 'x', data: 1 }, d.token)).status, 401);
    }
  });

  it('an external producer SPUBLISHes on fanout:events; every node delivers it once', async () => {
    const u = await newUser(nodes[0].url, 'rcev');
    const sockets = await Promise.all(nodes.map((n) => connectAuthed(n.url, u.token)));
    const got = sockets.map((s) => collect(s, 'rc-cron'));
    for (const s of sockets) await subscribe(s, 'rc-cron');
    const out = await cliCluster(cluster.ports[0], 'SPUBLISH', 'fanout:events', JSON.stringify({ topic: 'rc-cron', data: { ok: 1 } }));
    assert.equal(out, '3', 'three nodes subscribe fanout:events');
    await waitUntil(() => got.every((g) => g.length === 1), 3000, 'event everywhere');
    await sleep(200);
    for (const g of got) assert.deepEqual(g, [{ ok: 1 }]);
  });

  it('fanout-loadtest drives a cluster: tokens seeded on every shard, the redis workload SPUBLISHes, nothing lost', async () => {
    const loadtest = path.join(path.dirname(BIN), 'fanout-loadtest');
    const report = path.join(os.tmpdir(), `fanout-rc-loadtest-${process.pid}.json`);
    const args = ['run', 'redis', '--url', nodes.map((n) => n.url).join(','), '--seed-redis', url,
      '-c', '30', '-t', '3', '-p', '2', '-r', '60', '-d', '3s', '--warmup', '1s', '--json', report, '--no-progress'];
    const out = await new Promise((resolve) => {
      execFile(loadtest, args, { timeout: 60_000 }, (err, stdout, stderr) => resolve({ code: err ? err.code : 0, text: stdout + stderr }));
    });
    assert.equal(out.code, 0, out.text);
    const r = JSON.parse(fs.readFileSync(report, 'utf8'));
    fs.rmSync(report, { force: true });
    assert.equal(r.connected, 30, out.text);
    assert.equal(r.auth_failures, 0, out.text);
    assert.ok(r.deliveries.published > 100, out.text);
    assert.equal(r.deliveries.publish_errors, 0, out.text);
    assert.equal(r.deliveries.lost, 0, out.text);
    assert.equal(r.deliveries.duplicates, 0, out.text);
  });

  it('Redis ACL on every cluster node: a node running as user fanout (deploy/redis/users.acl.in) uses every feature with no denial', async () => {
    const password = crypto.randomBytes(16).toString('hex');
    const line = fs.readFileSync(path.join(REPO, 'deploy', 'redis', 'users.acl.in'), 'utf8')
      .split('\n').find((l) => l.startsWith('user fanout '));
    const rules = line.replace('@FANOUT_PASSWORD@', password).split(/\s+/).slice(2);
    for (const port of cluster.ports) {
      assert.equal((await cluster.cli(port, 'ACL', 'SETUSER', 'fanout', ...rules)).trim(), 'OK');
      await cluster.cli(port, 'ACL', 'LOG', 'RESET');
    }
    const seeds = cluster.ports.slice(0, 2).map((p) => `${HOST}:${p}`).join(',');
    const node = await startNode({ env: { FANOUT_REDIS_URL: `redis+cluster://fanout:${password}@${seeds}` }, args: ['--node-id', 'rc-acl'] });
    try {
      await waitReady([node]);
      const u = await newUser(node.url, 'rcacl');
      const q = `?access_token=${u.token}`;
      const created = await api(node.url, 'POST', `/api/models/RcAcl${q}`, { status: 'new' });
      assert.equal(created.status, 201, created.text);
      for (const [method, body] of [['PATCH', { status: 'paid' }], ['PUT', { status: 'shipped' }], ['GET'], ['DELETE']]) {
        const r = await api(node.url, method, `/api/models/RcAcl/${created.body.id}${q}`, body);
        assert.equal(r.status, 200, `${method}: ${r.text}`);
      }
      const s = await connectAuthed(node.url, u.token);
      const got = collect(s, 'rc-acl');
      await subscribe(s, 'rc-acl');
      assert.deepEqual(await emitAck(s, 'presence', { topic: 'rc-acl' }), { result: [u.userId] });
      const other = await connectAuthed(nodes[0].url, u.token);
      await emitAck(other, 'publish', { topic: 'rc-acl', data: 'from rc0' });
      await emitAck(s, 'publish', { topic: 'rc-acl', data: 'local' });
      await cliCluster(cluster.ports[0], 'SPUBLISH', 'fanout:events', JSON.stringify({ topic: 'rc-acl', data: 'events' }));
      await waitUntil(() => got.length === 3, 3000, 'three deliveries');
      const chat = await connect(`${node.url}/chat`);
      const img = once(chat, 'img');
      chat.emit('login', { user: 'acl', avatar: 'acl@example.com', id: `rc-acl-${created.body.id}` });
      assert.match(await img, /^https?:/);
      const stream = await api(node.url, 'POST', `/api/stream${q}`, { name: 'a', screen_name: 'a', text: 'acl', user_profile_image: 'a' });
      assert.equal(stream.status, 202, stream.text);
      const gone = once(s, 'disconnect', 5000);
      assert.equal((await api(node.url, 'POST', `/api/users/logout${q}`)).status, 204);
      await gone;
      // The adapter's periodic checks (every 5 s: CLIENT INFO, PING…) run under the ACL too.
      await sleep(6000);
      for (const port of cluster.ports) {
        const log = (await cluster.cli(port, 'ACL', 'LOG')).trim();
        assert.equal(log, '', `denied on ${port}:\n${log}`);
      }
      assert.equal(await node.stop(), 0);
    } finally {
      if (node.proc.exitCode === null) await node.stop();
    }
  });

  it('a subscribe or chat login whose room channel cannot be subscribed in time fails and leaves nothing behind', async () => {
    // Freeze (SIGSTOP, shorter than the cluster node timeout: no failover) the master serving
    // a topic's and a chat room's channels, while their other keys (presence, seats) live
    // elsewhere. (CLIENT PAUSE would not do: Redis does not pause (S)SUBSCRIBE.)
    const paused = (await cluster.masters())[0];
    const pick = async (prefix, channelOf, otherKeyOf) => {
      for (let n = 0; ; n += 1) {
        const name = `${prefix}-${n}`;
        if ((await cluster.masterOf(channelOf(name))) === paused && (await cluster.masterOf(otherKeyOf(name))) !== paused) return name;
      }
    };
    const topic = await pick('rc-paused', (t) => roomChannel(t), (t) => `fanout:presence:${t}`);
    const room = await pick('rc-pchat', (r) => roomChannel(r, '/chat'), (r) => `fanout:{chat:${r}}`);
    const u = await newUser(nodes[1].url, 'rcpause');
    const s = await connectAuthed(nodes[1].url, u.token);
    const got = collect(s, topic);
    const chat = await connect(`${nodes[1].url}/chat`);
    const chatError = once(chat, 'error', 8000).catch(() => null);
    const pid = Number(fs.readFileSync(path.join(cluster.runDir, 'pids', `${paused}.pid`), 'utf8'));
    process.kill(pid, 'SIGSTOP');
    let refused;
    try {
      const subscribing = emitAck(s, 'subscribe', topic, 8000);
      chat.emit('login', { user: 'pat', avatar: 'pat@example.com', id: room });
      refused = await subscribing;
      assert.ok(await chatError, 'the chat login got an error');
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    assert.equal(refused.error?.code, 'unavailable', JSON.stringify(refused));
    await waitReady(nodes);
    // Not subscribed, not present, no seat taken.
    assert.deepEqual(await emitAck(s, 'presence', { topic }), { result: [] });
    const publisher = await connectAuthed(nodes[0].url, u.token);
    assert.deepEqual(await emitAck(publisher, 'publish', { topic, data: 'not for s' }), { ok: true });
    const watcher = await connect(`${nodes[2].url}/chat`);
    const people = once(watcher, 'peopleinchat');
    watcher.emit('load', room);
    assert.deepEqual(await people, { number: 0 });
    // And once the shard answers again, both work.
    await subscribe(s, topic);
    assert.deepEqual(await emitAck(publisher, 'publish', { topic, data: 'for s' }), { ok: true });
    await waitUntil(() => got.length >= 1, 3000, 'delivery after the retry');
    await sleep(200);
    assert.deepEqual(got, ['for s']);
    const img = once(chat, 'img', 5000);
    chat.emit('login', { user: 'pat', avatar: 'pat@example.com', id: room });
    assert.match(await img, /^https?:/);
  });

  it('a room\'s slot migrated under traffic: the subscriptions follow, later messages arrive', async () => {
    const topic = 'rc-moving';
    const channel = roomChannel(topic);
    const u = await newUser(nodes[0].url, 'rcmv');
    const subs = await subscribers(nodes.slice(1), u.token, topic);
    const publisher = await connectAuthed(nodes[0].url, u.token);
    const loop = publishLoop(publisher, topic);
    await sleep(500);
    const from = await cluster.masterOf(channel);
    const to = (await cluster.masters()).find((p) => p !== from);
    assert.equal(await cluster.cli(from, 'PUBSUB', 'SHARDNUMSUB', channel).then((o) => Number(o.split('\n')[1])), 2);
    const moved = await cluster.moveSlotOf(channel, to);
    assert.equal(await cluster.masterOf(channel), to);
    await waitUntil(async () => (await shardSubscribers(cluster, channel)) === 2, 15_000, `subscriptions on the new owner (slot ${moved.slot})`);
    await waitReady(nodes);
    const after = loop.next();
    await sleep(1500);
    await loop.stop();
    const last = loop.next();
    assert.ok(last - after > 20, `published ${last - after} after the move`);
    const expected = range(after, last).filter((seq) => loop.acked.find((a) => a.seq === seq)?.ok);
    assert.equal(expected.length, last - after, 'every publish after the move acked');
    await waitUntil(() => subs.all.every((s) => expected.every((seq) => seqs(s).includes(seq))), 5000, 'post-move messages everywhere');
    for (const s of subs.all) {
      const got = seqs(s);
      assert.equal(new Set(got).size, got.length, `${s.name}: no duplicates`);
      assert.deepEqual(got.filter((seq) => seq >= after), expected, `${s.name}: in order after the move`);
    }
    subs.close();
  });

  it('SIGKILL the master of a busy room: replica takes over, nodes recover without restart, readyz honest, nothing lost after', async () => {
    const topic = 'rc-failover';
    const channel = roomChannel(topic);
    const u = await newUser(nodes[0].url, 'rcfo');
    const subs = await subscribers(nodes.slice(1), u.token, topic);
    const publisher = await connectAuthed(nodes[0].url, u.token);
    const probes = nodes.map(() => []);
    let probing = true;
    const prober = (async () => {
      while (probing) {
        const statuses = await Promise.all(nodes.map(readyz));
        statuses.forEach((s, i) => probes[i].push(s));
        await sleep(100);
      }
    })();
    const gaps0 = await Promise.all(nodes.slice(1).map(async (n) => metricSum(await metrics(n.url), 'fanout_adapter_subscription_gaps_total')));
    const dropped0 = metricSum(await metrics(nodes[0].url), 'fanout_messages_dropped_total', { reason: 'redis_down' });
    const loop = publishLoop(publisher, topic);
    await sleep(500);
    const victim = await cluster.masterOf(channel);
    const killedAt = Date.now();
    const { promoted } = await cluster.killMaster(victim);
    assert.equal(await cluster.masterOf(channel), promoted);
    await waitReady(nodes, 30_000);
    const recoveredMs = Date.now() - killedAt;
    assert.ok(recoveredMs < 30_000, `recovered in ${recoveredMs} ms`);
    await waitUntil(async () => (await shardSubscribers(cluster, channel)) === 2, 10_000, 'room resubscribed on the promoted master');
    const after = loop.next();
    await sleep(1500);
    await loop.stop();
    probing = false;
    await prober;
    const last = loop.next();
    const expected = range(after, last);
    for (const seq of expected) assert.ok(loop.acked.find((a) => a.seq === seq)?.ok, `publish ${seq} after recovery acked`);
    await waitUntil(() => subs.all.every((s) => expected.every((seq) => seqs(s).includes(seq))), 5000, 'post-recovery messages everywhere');
    for (const s of subs.all) {
      const got = seqs(s);
      assert.equal(new Set(got).size, got.length, `${s.name}: no duplicates`);
      assert.deepEqual(got.filter((seq) => seq >= after), expected, `${s.name}: nothing lost after recovery`);
    }
    // Honest readiness and counted losses. While the master is down nothing can be published
    // to its shard: a publish waits (redis-rs retries until the failover) or fails at the
    // publisher (answered `unavailable`, counted as dropped there). A subscriber whose
    // connection died may be resubscribed at once on the replica (Redis accepts SSUBSCRIBE on
    // replicas) and then misses nothing; a node that did miss an accepted message must have
    // said so on /readyz and counted the gap.
    const failed = loop.acked.filter((a) => !a.ok).length;
    const dropped1 = metricSum(await metrics(nodes[0].url), 'fanout_messages_dropped_total', { reason: 'redis_down' });
    assert.ok(dropped1 - dropped0 >= failed, `refused publishes counted on the publisher (${dropped1 - dropped0} of ${failed})`);
    const accepted = loop.acked.filter((a) => a.ok).map((a) => a.seq);
    const gaps1 = await Promise.all(nodes.slice(1).map(async (n) => metricSum(await metrics(n.url), 'fanout_adapter_subscription_gaps_total')));
    for (const [k, i] of [1, 2].entries()) {
      const missed = subs.all.filter((s) => s.name.endsWith(`@${k}`))
        .flatMap((s) => accepted.filter((seq) => !seqs(s).includes(seq)));
      if (missed.length) {
        assert.ok(probes[i].includes(503), `node ${i} missed ${missed.length} accepted messages with /readyz 200 throughout`);
        assert.ok(gaps1[k] > gaps0[k], `node ${i} missed ${missed.length} accepted messages and counted no gap`);
      }
      assert.equal(probes[i].at(-1), 200);
    }
    // The nodes never restarted and still serve everything, the stores included.
    for (const node of nodes) assert.equal(node.proc.exitCode, null);
    const again = await newUser(nodes[1].url, 'rcafter');
    assert.ok(again.token);
    subs.close();
  });
});

describe('Redis Cluster URL: startup failures', () => {
  it('a bad redis+cluster:// URL fails at startup with a clear error', async () => {
    for (const bad of ['redis+cluster://', 'redis+cluster://127.0.0.1:0', 'redis+cluster://h:1/2', 'redis+clustr://h:1']) {
      const proc = spawn(BIN, ['--bind', `${HOST}:0`], { env: { ...process.env, FANOUT_REDIS_URL: bad, FANOUT_LOG: 'warn' } });
      let out = '';
      proc.stdout.on('data', (d) => (out += d));
      proc.stderr.on('data', (d) => (out += d));
      const code = await new Promise((resolve) => proc.on('exit', resolve));
      assert.equal(code, 2, `${bad}: ${out}`);
      assert.match(out, /FANOUT_REDIS_URL/, bad);
    }
  });

  it('no seed reachable: /readyz 503 while retrying, ready once the cluster is there, without a restart', async () => {
    // Six free ports whose cluster-bus ports (+10000) are free too, below the ephemeral range
    // (as deploy/local/redis-cluster picks them).
    const ports = [];
    while (ports.length < 6) {
      const p = 10000 + Math.floor(Math.random() * 12000);
      if (ports.includes(p) || !(await portFree(p)) || !(await portFree(p + 10000))) continue;
      ports.push(p);
    }
    // Not startNode: it waits for /healthz 200, which a starting node does not answer.
    const port = await freePort();
    const node = { url: `http://${HOST}:${port}` };
    let logs = '';
    const proc = spawn(BIN, ['--bind', `${HOST}:${port}`, '--node-id', 'rc-early'], {
      env: { ...process.env, FANOUT_REDIS_URL: clusterUrl(ports.slice(0, 2)), FANOUT_LOG: 'info' },
    });
    proc.stdout.on('data', (d) => (logs += d));
    proc.stderr.on('data', (d) => (logs += d));
    const exited = new Promise((resolve) => proc.on('exit', (code) => resolve(code)));
    let cluster;
    try {
      await waitUntil(async () => (await readyz(node)) !== 0, 10_000, 'the node answers');
      for (let i = 0; i < 5; i += 1) {
        for (const route of ['/readyz', '/healthz', '/api/users/login']) {
          const r = await api(node.url, 'GET', route);
          assert.equal(r.status, 503, route);
          assert.deepEqual(r.body, { ready: false, status: 'starting' });
        }
        await sleep(200);
      }
      assert.match(logs, /cannot reach Redis/);
      cluster = await startRedisCluster({ ports });
      await waitReady([node], 30_000);
      const u = await newUser(node.url, 'rcearly');
      const s = await connectAuthed(node.url, u.token);
      const got = collect(s, 'early');
      await subscribe(s, 'early');
      await emitAck(s, 'publish', { topic: 'early', data: 1 });
      await waitUntil(() => got.length === 1, 3000, 'delivery');
      proc.kill('SIGTERM');
      assert.equal(await exited, 0, logs);
    } finally {
      closeAll();
      if (proc.exitCode === null) proc.kill('SIGKILL');
      await cluster?.stop();
    }
  });
});
