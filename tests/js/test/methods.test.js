'use strict';
// Remote methods over Socket.IO acks: whoami, time, presence, find, unknown methods.

const { describe, it, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/node');

describe('methods', () => {
  let node;
  before(async () => {
    node = await h.startNode({ args: ['--node-id', 'methods-node-7'] });
  });
  after(async () => {
    h.closeAll();
    if (node) assert.equal(await node.stop(), 0);
  });
  afterEach(() => h.closeAll());

  async function client(prefix = 'm') {
    const u = await h.newUser(node.url, prefix);
    return { ...u, socket: await h.connect(node.url, { auth: { token: u.token } }) };
  }

  it('whoami → { result: { userId, node } } with --node-id', async () => {
    const a = await client();
    const b = await client();
    assert.deepEqual(await h.emitAck(a.socket, 'whoami'), { result: { userId: a.userId, node: 'methods-node-7' } });
    assert.deepEqual(await h.emitAck(b.socket, 'whoami', {}), { result: { userId: b.userId, node: 'methods-node-7' } });
    assert.notEqual(a.userId, b.userId);
    assert.equal(typeof a.userId, 'number');
  });

  it('time → { result: epoch ms }', async () => {
    const a = await client();
    const t0 = Date.now();
    const ack = await h.emitAck(a.socket, 'time');
    const t1 = Date.now();
    assert.equal(typeof ack.result, 'number');
    assert.ok(Number.isInteger(ack.result));
    assert.ok(ack.result >= t0 - 2000 && ack.result <= t1 + 2000, `time ${ack.result} not near ${t0}`);
  });

  it('presence { topic } → { result: [userIds] }; validates the topic', async () => {
    const topic = h.uniqueName('presence');
    const a = await client();
    const b = await client();
    await h.subscribe(a.socket, topic);
    await h.subscribe(b.socket, topic);
    const ack = await h.emitAck(a.socket, 'presence', { topic });
    assert.deepEqual([...ack.result].sort((x, y) => x - y), [a.userId, b.userId].sort((x, y) => x - y));
    // the LoopBack form names the topic too
    await h.subscribe(a.socket, { collectionName: 'Pres', method: 'POST' });
    assert.deepEqual(await h.emitAck(b.socket, 'presence', { collectionName: 'Pres', method: 'POST' }), {
      result: [a.userId],
    });
    for (const [arg, code] of [
      [{ topic: '' }, 'invalid_topic'],
      [{ topic: 'x'.repeat(300) }, 'invalid_topic'],
      [null, 'bad_request'],
      [undefined, 'bad_request'],
      [7, 'bad_request'],
    ]) {
      const r = await h.emitAck(a.socket, 'presence', arg);
      assert.equal(r?.error?.code, code, JSON.stringify(arg));
    }
  });

  it('unknown methods: with an ack → unknown_method; without → ignored, socket stays', async () => {
    const a = await client();
    for (const name of ['nope', 'WHOAMI', 'whoami ', 'constructor', '__proto__', 'toString', 'authenticated', 'unauthorized']) {
      const ack = await h.emitAck(a.socket, name, { x: 1 });
      assert.equal(ack?.error?.code, 'unknown_method', `${name}: ${JSON.stringify(ack)}`);
      assert.equal(typeof ack.error.message, 'string');
    }
    a.socket.emit('nope', 1);
    a.socket.emit('whoami'); // a method without an ack: nothing to answer
    const disc = [];
    a.socket.on('disconnect', (r) => disc.push(r));
    assert.deepEqual(await h.emitAck(a.socket, 'whoami'), { result: { userId: a.userId, node: 'methods-node-7' } });
    assert.deepEqual(disc, []);
  });

  it('many concurrent acks on one socket are all answered, each with its own result', async () => {
    const a = await client();
    const topics = Array.from({ length: 50 }, (_, i) => `${h.uniqueName('c')}-${i}`);
    const acks = await Promise.all(topics.map((t) => h.emitAck(a.socket, 'subscribe', t, 5000)));
    assert.deepEqual(acks, topics.map((topic) => ({ ok: true, topic })));
    assert.deepEqual(await h.emitAck(a.socket, 'unsubscribeAll'), { ok: true, count: 50 });
  });
});
