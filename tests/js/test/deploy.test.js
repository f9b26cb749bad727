'use strict';
// End to end on the Docker-less twin of docker-compose.yml (deploy/local/up): redis-server,
// 3 fanout-nodes, HAProxy with the cookie stickiness of deploy/haproxy/haproxy.cfg and
// Prometheus, all on free loopback ports in a temporary run dir. Clients only talk to HAProxy.
// Needs: apt-get install -y redis-server haproxy prometheus curl.

const { describe, it, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const {
  api, newUser, connect, rawSocket, closeAll, emitAck, collect, subscribe, waitUntil, sleep,
} = require('../lib/node');
const { startDeployment, pidAlive, promQuery, eventually } = require('../lib/deploy');

/** socket.io-client options through the balancer: the cookie jar is what makes it sticky. */
const STICKY = { withCredentials: true };

describe('local deployment: HAProxy (sticky) → 3 nodes → Redis, scraped by Prometheus', () => {
  let dep;
  let user;

  before(async () => {
    dep = await startDeployment({
      nodes: 3,
      env: { FANOUT_DRAIN_BATCH: '20', FANOUT_DRAIN_INTERVAL_MS: '50', FANOUT_DRAIN_TIMEOUT_MS: '10000' },
    });
    user = await newUser(dep.lb, 'deploy'); // REST through the balancer (any node will do)
  });

  afterEach(() => closeAll());

  after(async () => {
    closeAll();
    if (!dep) return;
    const pids = dep.pids();
    const down = await dep.down();
    assert.equal(down.code, 0, `deploy/local/down: ${down.stderr}`);
    for (const [name, pid] of Object.entries(pids)) {
      if (pid) assert.equal(pidAlive(pid), false, `${name} (pid ${pid}) still runs after down`);
    }
    const status = await dep.status();
    assert.equal(status.code, 3, status.stdout);
    dep.cleanup();
  });

  it('status reports every process running and ready', async () => {
    const status = await dep.status();
    assert.equal(status.code, 0, status.stdout + status.stderr);
    for (const name of ['redis', 'node1', 'node2', 'node3', 'haproxy', 'prometheus']) {
      assert.match(status.stdout, new RegExp(`^${name}\\s+\\d+\\s+running`, 'm'));
    }
    assert.match(status.stdout, /3\/3 servers UP/);
  });

  it('a long-polling session survives 30 acked emits and 30 pushes (cookie stickiness)', async () => {
    const s = await connect(dep.lb, { ...STICKY, auth: { token: user.token }, transports: ['polling'] });
    const engineId = s.io.engine.id;
    const events = [];
    s.on('disconnect', (reason) => events.push(`disconnect: ${reason}`));
    s.on('connect_error', (err) => events.push(`connect_error: ${err.message}`));
    const { result: first } = await emitAck(s, 'whoami');
    await subscribe(s, 'deploy-sticky');
    const got = collect(s, 'deploy-sticky');
    for (let i = 0; i < 30; i += 1) {
      assert.deepEqual(await emitAck(s, 'publish', { topic: 'deploy-sticky', data: { i } }), { ok: true });
    }
    await waitUntil(() => got.length >= 30, 5000, '30 pushes');
    assert.deepEqual(got, Array.from({ length: 30 }, (_, i) => ({ i })));
    const { result: last } = await emitAck(s, 'whoami');
    assert.equal(last.node, first.node);
    assert.equal(s.io.engine.transport.name, 'polling');
    assert.equal(s.io.engine.id, engineId, 'same Engine.IO session throughout');
    assert.deepEqual(events, []);
  });

  it('control: without the cookie the balancer spreads a polling session and it breaks', async () => {
    const s = rawSocket(dep.lb, { auth: { token: user.token }, transports: ['polling'], withCredentials: false });
    const failures = [];
    s.on('connect_error', (err) => failures.push(`connect_error: ${err.message}`));
    s.on('disconnect', (reason) => failures.push(`disconnect: ${reason}`));
    for (let i = 0; i < 30 && failures.length === 0; i += 1) {
      if (s.connected) await emitAck(s, 'whoami', undefined, 1000).catch(() => {});
      else await sleep(100);
    }
    await waitUntil(() => failures.length > 0, 5000, 'the unsticky session to fail');
    assert.match(failures[0], /error/, failures.join('; '));
  });

  it('upgrades polling → websocket through the balancer and keeps the session', async () => {
    const s = await connect(dep.lb, { ...STICKY, auth: { token: user.token }, transports: ['polling', 'websocket'] });
    const engineId = s.io.engine.id;
    await waitUntil(() => s.io.engine.transport.name === 'websocket', 5000, 'the websocket upgrade');
    assert.equal(s.io.engine.id, engineId);
    await subscribe(s, 'deploy-ws');
    const got = collect(s, 'deploy-ws');
    assert.deepEqual(await emitAck(s, 'publish', { topic: 'deploy-ws', data: 'over ws' }), { ok: true });
    await waitUntil(() => got.length === 1, 3000, 'the websocket delivery');
    assert.deepEqual(got, ['over ws']);
    assert.equal(s.io.engine.transport.name, 'websocket');
  });

  it('publish/subscribe across nodes: clients pinned to different backends', async () => {
    const byNode = new Map();
    for (let i = 0; i < 12 && byNode.size < 3; i += 1) {
      const s = await connect(dep.lb, { ...STICKY, auth: { token: user.token } });
      const { result } = await emitAck(s, 'whoami');
      assert.equal(result.userId, user.userId);
      if (!byNode.has(result.node)) byNode.set(result.node, s);
    }
    assert.deepEqual([...byNode.keys()].sort(), ['node1', 'node2', 'node3'], 'the balancer reached every node');
    const clients = [...byNode.values()];
    const got = clients.map((s) => collect(s, 'deploy-across'));
    for (const s of clients) await subscribe(s, 'deploy-across');
    for (const [node, s] of byNode) {
      assert.deepEqual(await emitAck(s, 'publish', { topic: 'deploy-across', data: node }), { ok: true });
    }
    await waitUntil(() => got.every((g) => g.length === 3), 5000, 'every publish on every node');
    for (const g of got) assert.deepEqual([...g].sort(), ['node1', 'node2', 'node3']);
  });

  it('Prometheus scrapes every node: up == 1 and fanout metrics present', async () => {
    const instances = dep.nodes.map((n) => `127.0.0.1:${n.port}`).sort();
    await eventually('up{job="fanout"} == 1 for the 3 nodes', 20_000, async () => {
      const up = await promQuery(dep.prometheus, 'up{job="fanout"}');
      return up.length === 3 && up.every((r) => r.value[1] === '1') &&
        JSON.stringify(up.map((r) => r.metric.instance).sort()) === JSON.stringify(instances);
    });
    const info = await eventually('fanout_build_info for the 3 nodes', 10_000, async () => {
      const r = await promQuery(dep.prometheus, 'fanout_build_info');
      return r.length === 3 && r;
    });
    assert.deepEqual(info.map((r) => r.metric.node).sort(), ['node1', 'node2', 'node3']);
    assert.deepEqual(info.map((r) => r.metric.instance).sort(), instances);
    // traffic of the previous tests is visible: connections counted on every node
    await eventually('fanout_connections_total on every node', 10_000, async () => {
      const r = await promQuery(dep.prometheus, 'sum by (instance) (fanout_connections_total)');
      return r.length === 3 && r.every((x) => Number(x.value[1]) > 0);
    });
    await eventually('up{job="haproxy"} == 1', 10_000, async () => {
      const lb = await promQuery(dep.prometheus, 'up{job="haproxy"}');
      return lb.length === 1 && lb[0].value[1] === '1';
    });
  });

  it('SIGTERM on one node: its clients reconnect through the balancer and keep receiving', async () => {
    const clients = [];
    const victimId = 'node2';
    // Clients (polling-only and upgraded alike) until the victim holds at least 2 of them and
    // every node holds one; each re-subscribes whenever it (re)connects.
    for (let i = 0; i < 18; i += 1) {
      const s = rawSocket(dep.lb, {
        ...STICKY,
        auth: { token: user.token },
        transports: i % 2 ? ['polling'] : ['polling', 'websocket'],
        reconnection: true,
        reconnectionDelay: 100,
        reconnectionDelayMax: 500,
        randomizationFactor: 0,
      });
      const c = { s, node: null, ready: false, connects: 0, got: collect(s, 'deploy-drain') };
      s.on('connect', async () => {
        c.connects += 1;
        try {
          await subscribe(s, 'deploy-drain');
          c.node = (await emitAck(s, 'whoami')).result.node;
          c.ready = true;
        } catch {
          /* disconnected meanwhile: the next connect retries */
        }
      });
      s.on('disconnect', () => {
        c.ready = false;
      });
      clients.push(c);
      await waitUntil(() => c.ready, 5000, `client ${i} connected`);
      const onVictim = clients.filter((x) => x.node === victimId).length;
      const nodes = new Set(clients.map((x) => x.node));
      if (onVictim >= 2 && nodes.size === 3) break;
    }
    const moved = clients.filter((c) => c.node === victimId);
    assert.ok(moved.length >= 2, `clients on ${victimId}: ${clients.map((c) => c.node)}`);

    const victimPid = dep.pid(victimId);
    process.kill(victimPid, 'SIGTERM');
    await eventually(`${victimId} (pid ${victimPid}) to exit`, 20_000, async () => !pidAlive(victimPid));
    await waitUntil(
      () => moved.every((c) => c.ready && c.connects >= 2 && c.node !== victimId),
      20_000,
      `clients of ${victimId} back on another node (${moved.map((c) => `${c.node}/${c.connects}/${c.ready}`)})`,
    );
    for (const c of moved) assert.ok(['node1', 'node3'].includes(c.node), c.node);
    assert.ok(clients.every((c) => c.ready));

    // A publish through the balancer reaches every client, the moved ones included.
    const pub = await api(dep.lb, 'POST', '/api/publish', { topic: 'deploy-drain', data: 'after' }, user.token);
    assert.equal(pub.status, 202, pub.text);
    await waitUntil(() => clients.every((c) => c.got.includes('after')), 5000, 'the publish after the drain');

    const log = dep.logs(victimId);
    for (const line of ['SIGTERM received', 'draining', 'stopped']) {
      assert.match(log, new RegExp(`"message":"${line}"`), `${victimId} log lacks "${line}"`);
    }
    const status = await eventually('status: victim stopped, 2/3 servers UP', 10_000, async () => {
      const st = await dep.status();
      return /2\/3 servers UP/.test(st.stdout) && st;
    });
    assert.equal(status.code, 1, status.stdout);
    assert.match(status.stdout, new RegExp(`^${victimId}\\s+\\d+\\s+stopped`, 'm'));
  });
});
