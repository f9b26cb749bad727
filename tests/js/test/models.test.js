'use strict';
// LoopBack model REST API and the model topics its writes publish, received by
// socket.io-client subscribers using the { collectionName, method, modelId } form.

const { describe, it, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/node');

const ABSENCE_MS = 250;

describe('models', () => {
  let node;
  let user;
  before(async () => {
    node = await h.startNode({ args: ['--node-id', 'models-node'] });
    user = await h.newUser(node.url, 'models');
  });
  after(async () => {
    h.closeAll();
    if (node) assert.equal(await node.stop(), 0);
  });
  afterEach(() => h.closeAll());

  const call = (method, p, body, token = user.token) => h.api(node.url, method, p, body, token);
  let modelSeq = 0;
  const freshModel = (base = 'M') => `${base}${process.pid}_${++modelSeq}`;

  it('CRUD: ids 1,2,3 per model, get, list with limit, replace, merge, delete', async () => {
    const M = freshModel('Order');
    const N = freshModel('Other');
    const r1 = await call('POST', `/api/models/${M}`, { item: 'a', qty: 1 });
    assert.equal(r1.status, 201);
    assert.deepEqual(r1.body, { id: 1, item: 'a', qty: 1 });
    const r2 = await call('POST', `/api/models/${M}`, { item: 'b' });
    assert.equal(r2.body.id, 2);
    const n1 = await call('POST', `/api/models/${N}`, { x: 1 });
    assert.equal(n1.body.id, 1, 'ids are per model');
    const r3 = await call('POST', `/api/models/${M}`, { item: 'c' });
    assert.equal(r3.body.id, 3);
    assert.equal(typeof r3.body.id, 'number');

    const g = await call('GET', `/api/models/${M}/2`);
    assert.equal(g.status, 200);
    assert.deepEqual(g.body, { id: 2, item: 'b' });

    const list = await call('GET', `/api/models/${M}`);
    assert.equal(list.status, 200);
    assert.deepEqual(list.body.map((r) => r.id), [1, 2, 3]);
    const limited = await call('GET', `/api/models/${M}?limit=2`);
    assert.deepEqual(limited.body.map((r) => r.id), [1, 2]);
    const empty = await call('GET', `/api/models/${freshModel('Nothing')}`);
    assert.equal(empty.status, 200);
    assert.deepEqual(empty.body, []);

    const put = await call('PUT', `/api/models/${M}/1`, { item: 'A' });
    assert.equal(put.status, 200);
    assert.deepEqual(put.body, { id: 1, item: 'A' }, 'PUT replaces (qty is gone)');
    const patch = await call('PATCH', `/api/models/${M}/1`, { qty: 5 });
    assert.equal(patch.status, 200);
    assert.deepEqual(patch.body, { id: 1, item: 'A', qty: 5 }, 'PATCH merges');
    assert.deepEqual((await call('GET', `/api/models/${M}/1`)).body, { id: 1, item: 'A', qty: 5 });

    const del = await call('DELETE', `/api/models/${M}/2`);
    assert.equal(del.status, 200);
    assert.deepEqual(del.body, { count: 1 });
    const gone = await call('GET', `/api/models/${M}/2`);
    assert.equal(gone.status, 404);
    assert.equal(gone.body.error.code, 'not_found');
    const again = await call('DELETE', `/api/models/${M}/2`);
    assert.equal(again.status, 404);
    assert.equal(again.body.error.code, 'not_found');
    // ids are not reused
    assert.equal((await call('POST', `/api/models/${M}`, {})).body.id, 4);
  });

  it('errors: 404 for missing records, 422 for bad names and bodies, 401 without token', async () => {
    const M = freshModel('Err');
    await call('POST', `/api/models/${M}`, { a: 1 });
    for (const [method, p, body] of [
      ['GET', `/api/models/${M}/999`],
      ['PUT', `/api/models/${M}/999`, { a: 1 }],
      ['PATCH', `/api/models/${M}/999`, { a: 1 }],
      ['DELETE', `/api/models/${M}/999`],
      ['GET', `/api/models/${M}/abc`],
      ['GET', `/api/models/${M}/0`],
      ['GET', `/api/models/${M}/-1`],
    ]) {
      const r = await call(method, p, body);
      assert.equal(r.status, 404, `${method} ${p}`);
      assert.equal(r.body.error.code, 'not_found');
      assert.equal(typeof r.body.error.message, 'string');
    }
    for (const name of ['users', '9abc', 'a-b', '_x', 'x'.repeat(65), 'caf%C3%A9']) {
      const r = await call('POST', `/api/models/${name}`, { a: 1 });
      assert.equal(r.status, 422, name);
      assert.equal(r.body.error.code, 'validation_failed', name);
      const l = await call('GET', `/api/models/${name}`);
      assert.equal(l.status, 422, name);
    }
    assert.equal((await call('POST', `/api/models/${'x'.repeat(64)}`, {})).status, 201, '64-char name is valid');
    for (const body of [[1, 2], 'str', 42, null, true]) {
      for (const [method, p] of [
        ['POST', `/api/models/${M}`],
        ['PUT', `/api/models/${M}/1`],
        ['PATCH', `/api/models/${M}/1`],
      ]) {
        const r = await call(method, p, body);
        assert.equal(r.status, 422, `${method} ${JSON.stringify(body)}`);
        assert.equal(r.body.error.code, 'validation_failed');
      }
    }
    for (const [method, p] of [
      ['GET', `/api/models/${M}`],
      ['POST', `/api/models/${M}`],
      ['GET', `/api/models/${M}/1`],
      ['PUT', `/api/models/${M}/1`],
      ['PATCH', `/api/models/${M}/1`],
      ['DELETE', `/api/models/${M}/1`],
    ]) {
      const r = await h.api(node.url, method, p, method === 'GET' || method === 'DELETE' ? undefined : { a: 1 });
      assert.equal(r.status, 401, `${method} ${p} without token`);
      assert.equal(r.body.error.code, 'unauthorized');
      const bad = await h.api(node.url, method, p, undefined, 'Bearer ' + '0'.repeat(64));
      assert.equal(bad.status, 401, `${method} ${p} with bad token`);
    }
    // the record survived every refused write
    assert.deepEqual((await call('GET', `/api/models/${M}/1`)).body, { id: 1, a: 1 });
  });

  it('REST writes publish /Model/POST, /Model/<id>/PUT, /Model/<id>/DELETE to the right subscribers only', async () => {
    const M = freshModel('Order');
    const s = await h.connect(node.url, { auth: { token: user.token } });
    const other = await h.connect(node.url, { auth: { token: user.token } });
    const creates = h.collect(s, `/${M}/POST`);
    assert.deepEqual(await h.emitAck(s, 'subscribe', { collectionName: M, method: 'POST' }), {
      ok: true,
      topic: `/${M}/POST`,
    });

    const c1 = await call('POST', `/api/models/${M}`, { item: 'x' });
    const c2 = await call('POST', `/api/models/${M}`, { item: 'y' });
    await h.waitUntil(() => creates.length === 2, 3000, 'two create events');
    assert.deepEqual(creates, [c1.body, c2.body]);

    // subscribe to record 1's updates and deletes (numeric and string modelId), and
    // another socket to record 2's
    const put1 = h.collect(s, `/${M}/1/PUT`);
    const del1 = h.collect(s, `/${M}/1/DELETE`);
    const put2 = h.collect(other, `/${M}/2/PUT`);
    const otherPut1 = h.collect(other, `/${M}/1/PUT`);
    assert.deepEqual(await h.emitAck(s, 'subscribe', { collectionName: M, method: 'put', modelId: 1 }), {
      ok: true,
      topic: `/${M}/1/PUT`,
    });
    assert.deepEqual(await h.emitAck(s, 'subscribe', { collectionName: M, method: 'DELETE', modelId: '1' }), {
      ok: true,
      topic: `/${M}/1/DELETE`,
    });
    await h.subscribe(other, { collectionName: M, method: 'PUT', modelId: 2 });

    const u1 = await call('PUT', `/api/models/${M}/1`, { item: 'replaced' });
    const u2 = await call('PATCH', `/api/models/${M}/1`, { extra: true });
    const u3 = await call('PATCH', `/api/models/${M}/2`, { item: 'y2' });
    await h.waitUntil(() => put1.length === 2 && put2.length === 1, 3000, 'update events');
    assert.deepEqual(put1, [u1.body, u2.body]);
    assert.deepEqual(put1[1], { id: 1, item: 'replaced', extra: true });
    assert.deepEqual(put2, [u3.body]);

    const before = (await call('GET', `/api/models/${M}/1`)).body;
    const d = await call('DELETE', `/api/models/${M}/1`);
    assert.deepEqual(d.body, { count: 1 });
    await h.waitUntil(() => del1.length === 1, 3000, 'delete event');
    assert.deepEqual(del1, [before], 'DELETE event carries the deleted record');

    await h.sleep(ABSENCE_MS);
    assert.equal(creates.length, 2, 'updates/deletes are not create events');
    assert.equal(put1.length, 2);
    assert.deepEqual(otherPut1, [], 'other socket is not subscribed to record 1');
    assert.equal(put2.length, 1);
  });

  it('a failed write publishes nothing', async () => {
    const M = freshModel('Quiet');
    const s = await h.connect(node.url, { auth: { token: user.token } });
    const events = [];
    s.onAny((ev, data) => events.push([ev, data]));
    await h.subscribe(s, { collectionName: M, method: 'POST' });
    await h.subscribe(s, { collectionName: M, method: 'PUT', modelId: 1 });
    await h.subscribe(s, { collectionName: M, method: 'DELETE', modelId: 1 });
    assert.equal((await call('PUT', `/api/models/${M}/1`, { a: 1 })).status, 404);
    assert.equal((await call('DELETE', `/api/models/${M}/1`)).status, 404);
    assert.equal((await call('POST', `/api/models/${M}`, [1])).status, 422);
    // control
    const ok = await call('POST', `/api/models/${M}`, { ok: 1 });
    await h.waitUntil(() => events.length >= 1, 3000, 'control event');
    await h.sleep(ABSENCE_MS);
    assert.deepEqual(events, [[`/${M}/POST`, ok.body]]);
  });

  it('find returns records like GET /api/models (with limit) and validates its argument', async () => {
    const M = freshModel('Found');
    for (let i = 0; i < 5; i++) await call('POST', `/api/models/${M}`, { i });
    const s = await h.connect(node.url, { auth: { token: user.token } });
    const all = await h.emitAck(s, 'find', { model: M });
    assert.deepEqual(all, { result: (await call('GET', `/api/models/${M}`)).body });
    assert.equal(all.result.length, 5);
    const two = await h.emitAck(s, 'find', { model: M, limit: 2 });
    assert.deepEqual(two.result.map((r) => r.i), [0, 1]);
    assert.deepEqual(await h.emitAck(s, 'find', { model: freshModel('None') }), { result: [] });
    const cases = [
      [undefined, 'bad_request'],
      [null, 'bad_request'],
      ['Order', 'bad_request'],
      [{}, 'bad_request'],
      [{ model: 5 }, 'bad_request'],
      [{ model: 'users' }, 'validation_failed'],
      [{ model: '9x' }, 'validation_failed'],
      [{ model: M, limit: 0 }, 'validation_failed'],
      [{ model: M, limit: -1 }, 'validation_failed'],
      [{ model: M, limit: 1001 }, 'validation_failed'],
      [{ model: M, limit: 'ten' }, 'validation_failed'],
      [{ model: M, limit: 1.5 }, 'validation_failed'],
    ];
    const wrong = [];
    for (const [arg, code] of cases) {
      const ack = await h.emitAck(s, 'find', arg);
      if (ack?.error?.code !== code) wrong.push({ arg, expected: code, got: ack });
    }
    assert.deepEqual(wrong, []);
  });
});
