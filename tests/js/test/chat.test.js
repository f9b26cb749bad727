'use strict';
// Namespace /chat: the classic two-person chat, embedded and across a 3-node cluster.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const {
  startNode, connect, connectAuthed, newUser, emitAck, subscribe, closeAll, once, collect, waitUntil, sleep,
} = require('../lib/node');
const { startRedis } = require('../lib/redis');

const chat = (node) => connect(`${node.url}/chat`);
const login = (s, user, id) => s.emit('login', { user, avatar: `${user}@example.com`, id });

describe('/chat on one node', () => {
  let node;
  before(async () => {
    node = await startNode();
  });
  after(async () => {
    closeAll();
    assert.equal(await node.stop(), 0);
  });

  it('load → peopleinchat, login → img + startChat, msg → receive, disconnect → leave', async () => {
    const room = `r${Date.now()}`;
    const a = await chat(node);
    a.emit('load', room);
    assert.deepEqual(await once(a, 'peopleinchat'), { number: 0 });
    const img = once(a, 'img');
    login(a, 'ann', room);
    const avatar = await img;
    assert.match(avatar, /^https:\/\/gravatar\.com\/avatar\/[0-9a-f]{64}\?s=140&r=x&d=mm$/);

    const b = await chat(node);
    b.emit('load', room);
    assert.deepEqual(await once(b, 'peopleinchat'), { number: 1, user: 'ann', avatar, id: room });
    const startA = once(a, 'startChat');
    const startB = once(b, 'startChat');
    login(b, 'bob', room);
    const start = await startA;
    assert.deepEqual(await startB, start);
    assert.equal(start.boolean, true);
    assert.equal(start.id, room);
    assert.deepEqual(start.users, ['ann', 'bob']);
    assert.equal(start.avatars.length, 2);

    const aGot = collect(a, 'receive');
    const bGot = collect(b, 'receive');
    a.emit('msg', { msg: '<b>hi</b>', user: 'mallory', img: 'x' });
    await waitUntil(() => bGot.length === 1, 2000, 'receive');
    assert.deepEqual(bGot[0], { msg: '<b>hi</b>', user: 'ann', img: avatar });
    await sleep(100);
    assert.equal(aGot.length, 0, 'the sender does not receive its own message');

    const c = await chat(node);
    c.emit('load', room);
    assert.deepEqual(await once(c, 'tooMany'), { boolean: true });
    login(c, 'cat', room);
    assert.deepEqual(await once(c, 'tooMany'), { boolean: true });

    const leave = once(b, 'leave');
    a.close();
    assert.deepEqual(await leave, { boolean: true, room, user: 'ann', avatar });
    // The seat is free again.
    const img2 = once(c, 'img');
    login(c, 'cat', room);
    await img2;
  });

  it('bad input gets an error event and nothing else', async () => {
    const s = await chat(node);
    const errors = collect(s, 'error');
    const others = [];
    s.onAny((event) => others.push(event));
    s.emit('load', null);
    s.emit('login', { user: '', avatar: 'a@b.io', id: 1 });
    s.emit('login', { user: 'x', avatar: 'not-an-email', id: 1 });
    s.emit('login', { user: 'y'.repeat(65), avatar: 'a@b.io', id: 1 });
    s.emit('msg', { msg: 'before login' });
    s.emit('whatever', 1);
    await waitUntil(() => errors.length === 6, 2000, 'six error events');
    assert.ok(errors.every((e) => typeof e.code === 'string' && typeof e.message === 'string'));
    assert.deepEqual(others.filter((e) => e !== 'error'), []);
  });
});

describe('/chat across 3 nodes', () => {
  let redis;
  let nodes;
  before(async () => {
    redis = await startRedis();
    nodes = [];
    for (let i = 0; i < 3; i += 1) nodes.push(await startNode({ env: { FANOUT_REDIS_URL: redis.url }, args: ['--node-id', `chat${i}`] }));
  });
  after(async () => {
    closeAll();
    for (const n of nodes) await n.stop();
    await redis.stop();
  });

  it('10 simultaneous logins to one room on 3 nodes take exactly 2 seats', async () => {
    const room = `race${Date.now()}`;
    const sockets = await Promise.all(Array.from({ length: 10 }, (_, i) => chat(nodes[i % 3])));
    const outcomes = sockets.map((s) =>
      Promise.race([once(s, 'img', 5000).then(() => 'seat'), once(s, 'tooMany', 5000).then(() => 'full')]));
    sockets.forEach((s, i) => login(s, `p${i}`, room));
    const results = await Promise.all(outcomes);
    assert.equal(results.filter((r) => r === 'seat').length, 2, JSON.stringify(results));
    assert.equal(results.filter((r) => r === 'full').length, 8);
    // The two seated sockets, on whatever nodes, chat with each other.
    const seated = sockets.filter((_, i) => results[i] === 'seat');
    const got = collect(seated[1], 'receive');
    seated[0].emit('msg', { msg: 'across nodes' });
    await waitUntil(() => got.length === 1, 3000, 'cross-node chat message');
    assert.equal(got[0].msg, 'across nodes');
  });

  it('a crashed node does not hold its seats forever', async () => {
    const room = `crash${Date.now()}`;
    const victim = await startNode({ env: { FANOUT_REDIS_URL: redis.url }, args: ['--node-id', 'victim'] });
    const a = await chat(victim);
    const b = await chat(victim);
    const imgs = [once(a, 'img'), once(b, 'img')];
    login(a, 'a', room);
    login(b, 'b', room);
    await Promise.all(imgs);
    const c = await chat(nodes[0]);
    login(c, 'c', room);
    assert.deepEqual(await once(c, 'tooMany'), { boolean: true });
    // The victim also has a presence entry (namespace `/`), which must go with it.
    const ghost = await newUser(nodes[0].url, 'ghost');
    const watcher = await newUser(nodes[0].url, 'watcher');
    await subscribe(await connectAuthed(victim.url, ghost.token), 'crash-presence');
    const w = await connectAuthed(nodes[0].url, watcher.token);
    await subscribe(w, 'crash-presence');
    const presence = async () => (await emitAck(w, 'presence', { topic: 'crash-presence' })).result;
    assert.deepEqual(await presence(), [ghost.userId, watcher.userId].sort((x, y) => x - y));
    await victim.stop('SIGKILL').catch(() => {});
    // Seats expire with the node heartbeat key (15 s).
    const deadline = Date.now() + 25_000;
    for (;;) {
      const d = await chat(nodes[1]);
      const outcome = Promise.race([once(d, 'img', 3000).then(() => 'seat'), once(d, 'tooMany', 3000).then(() => 'full')]);
      login(d, 'd', room);
      if ((await outcome) === 'seat') break;
      d.close();
      assert.ok(Date.now() < deadline, 'seats of the dead node were never freed');
      await sleep(1000);
    }
    assert.deepEqual(await presence(), [watcher.userId], 'the dead node\'s presence is gone');
  });
});
