'use strict';
// 200 concurrent clients that emit `authentication` the moment they connect (or even before:
// socket.io-client buffers it until CONNECT) must all be authenticated — guards against a
// race between the CONNECT reply and handler registration. Then one publish fans out to
// all of them exactly once.

const { describe, it, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/node');

const N = 200;

describe('concurrency', () => {
  let node;
  let users;
  before(async () => {
    node = await h.startNode({ args: ['--node-id', 'conc-node'] });
    users = [];
    for (let i = 0; i < 5; i++) users.push(await h.newUser(node.url, 'conc'));
  });
  after(async () => {
    h.closeAll();
    if (node) assert.equal(await node.stop(), 0);
  });
  afterEach(() => h.closeAll());

  async function authenticateAll(mode) {
    const sockets = [];
    const results = await Promise.allSettled(
      Array.from({ length: N }, (_, i) => {
        const u = users[i % users.length];
        const s = h.rawSocket(node.url);
        sockets.push(s);
        const authed = h.once(s, 'authenticated', 10_000);
        const refused = new Promise((resolve, reject) => {
          s.once('unauthorized', (m) => reject(new Error(`unauthorized: ${JSON.stringify(m)}`)));
        });
        if (mode === 'on-connect') {
          s.on('connect', () => s.emit('authentication', { token: u.token }));
        } else {
          s.emit('authentication', { id: u.token, userId: u.userId }); // buffered until CONNECT
        }
        return Promise.race([authed, refused]).then((payload) => {
          assert.deepEqual(payload, { userId: u.userId });
          return s;
        });
      }),
    );
    const failed = results.filter((r) => r.status === 'rejected').map((r) => r.reason.message);
    assert.deepEqual(failed.slice(0, 5), [], `${failed.length}/${N} clients not authenticated`);
    return sockets;
  }

  for (const mode of ['on-connect', 'before-connect']) {
    it(`${N} clients emitting authentication ${mode} are all authenticated; one publish reaches each once`, async () => {
      const sockets = await authenticateAll(mode);
      const topic = h.uniqueName('fan');
      const acks = await Promise.all(sockets.map((s) => h.emitAck(s, 'subscribe', topic, 10_000)));
      assert.ok(acks.every((a) => a.ok === true && a.topic === topic));
      const counts = new Array(N).fill(0);
      sockets.forEach((s, i) =>
        s.on(topic, (d) => {
          assert.equal(d, 'hello');
          counts[i] += 1;
        }),
      );
      const r = await h.api(node.url, 'POST', '/api/publish', { topic, data: 'hello' }, users[0].token);
      assert.equal(r.status, 202);
      await h.waitUntil(() => counts.every((c) => c >= 1), 10_000, 'fan-out to all clients');
      await h.sleep(250);
      assert.deepEqual(counts, new Array(N).fill(1));
      const presence = await h.emitAck(sockets[0], 'presence', { topic });
      assert.deepEqual([...presence.result].sort((a, b) => a - b), users.map((u) => u.userId).sort((a, b) => a - b));
      for (const s of sockets) s.close();
    });
  }
});
