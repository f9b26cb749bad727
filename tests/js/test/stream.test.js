'use strict';
// Namespace /stream: term-filtered items from POST /api/stream and the Redis stream channel.

const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const { startNode, api, newUser, connect, closeAll, once, collect, waitUntil, sleep } = require('../lib/node');
const { startRedis } = require('../lib/redis');

const item = (text) => ({ name: 'N', screen_name: 'n', text, user_profile_image: 'http://x/p.png' });

describe('/stream', () => {
  it('filters by term, pauses and resumes, across nodes, from REST and Redis', async () => {
    const redis = await startRedis();
    const nodes = [];
    try {
      nodes.push(await startNode({ env: { FANOUT_REDIS_URL: redis.url } }));
      nodes.push(await startNode({ env: { FANOUT_REDIS_URL: redis.url } }));
      const u = await newUser(nodes[0].url, 'st');
      const rust = await connect(`${nodes[0].url}/stream`);
      const js = await connect(`${nodes[1].url}/stream`);
      const idle = await connect(`${nodes[1].url}/stream`);
      const rustGot = collect(rust, 'tweets');
      const jsGot = collect(js, 'tweets');
      const idleGot = collect(idle, 'tweets');
      rust.emit('updateTerm', 'Rust');
      assert.equal(await once(rust, 'updatedTerm'), 'Rust');
      js.emit('updateTerm', 'javascript');
      assert.equal(await once(js, 'updatedTerm'), 'javascript');

      assert.equal((await api(nodes[1].url, 'POST', '/api/stream', item('I like RUST a lot'), u.token)).status, 202);
      await redis.publish('fanout:stream', JSON.stringify(item('JavaScript and rust')));
      await redis.publish('fanout:stream', 'garbage');
      await redis.publish('fanout:stream', JSON.stringify({ text: '' }));
      await waitUntil(() => rustGot.length === 2 && jsGot.length === 1, 3000, 'filtered items');
      assert.deepEqual(rustGot.map((t) => t.text), ['I like RUST a lot', 'JavaScript and rust']);
      assert.deepEqual(jsGot[0], item('JavaScript and rust'));

      rust.emit('stopStream');
      await sleep(100);
      await api(nodes[0].url, 'POST', '/api/stream', item('rust while paused'), u.token);
      await sleep(300);
      assert.equal(rustGot.length, 2, 'paused socket received an item');
      rust.emit('startStream');
      await sleep(100);
      await api(nodes[0].url, 'POST', '/api/stream', item('rust again'), u.token);
      await waitUntil(() => rustGot.length === 3, 2000, 'resumed');
      assert.equal(idleGot.length, 0, 'a socket without a term receives nothing');

      assert.equal((await api(nodes[0].url, 'POST', '/api/stream', item('no token'))).status, 401);
      assert.equal((await api(nodes[0].url, 'POST', '/api/stream', { text: '' }, u.token)).status, 422);
      const errors = collect(js, 'error');
      js.emit('updateTerm', '');
      js.emit('updateTerm', { not: 'a string' });
      await waitUntil(() => errors.length === 2, 2000, 'error events');
      for (const n of nodes) assert.equal((await api(n.url, 'GET', '/healthz')).status, 200);
    } finally {
      closeAll();
      for (const n of nodes) await n.stop();
      await redis.stop();
    }
  });
});
