'use strict';
// The Redis Cluster variant of the Docker-less deployment (DEPLOY_REDIS=cluster deploy/local/up,
// the twin of docker-compose.yml + docker-compose.cluster.yml): six redis-server processes with
// deploy/redis/redis.conf and the ACL, joined by deploy/redis/cluster-init, 3 fanout-nodes in
// sharded mode (redis+cluster://fanout:…@), HAProxy and Prometheus. Clients only talk to HAProxy.
// Needs: apt-get install -y redis-server haproxy prometheus curl.

const { describe, it, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const {
  api, newUser, connect, rawSocket, closeAll, emitAck, collect, subscribe, waitUntil, once,
} = require('../lib/node');
const { startDeployment, pidAlive, promQuery, eventually } = require('../lib/deploy');

const STICKY = { withCredentials: true };

describe('local deployment on a Redis Cluster: HAProxy → 3 sharded nodes → 3+3 Redis Cluster', () => {
  let dep;
  let user;

  before(async () => {
    dep = await startDeployment({
      nodes: 3,
      env: { DEPLOY_REDIS: 'cluster', DEPLOY_REDIS_CLUSTER_PORTS: 'free' },
      upTimeoutMs: 120_000,
    });
    user = await newUser(dep.lb, 'deploycluster');
  });

  afterEach(() => closeAll());

  after(async () => {
    closeAll();
    if (!dep) return;
    const pids = dep.pids();
    const clusterPids = dep.clusterPorts().map((p) => {
      const f = path.join(dep.runDir, 'redis-cluster', 'pids', `${p}.pid`);
      return Number(fs.readFileSync(f, 'utf8').trim());
    });
    const down = await dep.down();
    assert.equal(down.code, 0, `deploy/local/down: ${down.stderr}`);
    for (const [name, pid] of Object.entries(pids)) {
      if (pid) assert.equal(pidAlive(pid), false, `${name} (pid ${pid}) still runs after down`);
    }
    assert.equal(clusterPids.length, 6);
    for (const pid of clusterPids) assert.equal(pidAlive(pid), false, `redis (pid ${pid}) still runs after down`);
    const status = await dep.status();
    assert.equal(status.code, 3, status.stdout);
    dep.cleanup();
  });

  it('status reports the cluster, every node and the balancer ready', async () => {
    const status = await dep.status();
    assert.equal(status.code, 0, status.stdout + status.stderr);
    assert.match(status.stdout, /^redis-cluster\s+-\s+running\s+6\/6 running, 3 masters; PONG/m);
    for (const name of ['node1', 'node2', 'node3', 'haproxy', 'prometheus']) {
      assert.match(status.stdout, new RegExp(`^${name}\\s+\\d+\\s+running`, 'm'));
    }
    assert.match(status.stdout, /3\/3 servers UP/);
    // every Redis of the cluster runs with the ACL: no anonymous access
    for (const port of dep.clusterPorts()) {
      const info = await dep.clusterAdmin(port, ['CLUSTER', 'INFO']);
      assert.match(info.stdout, /cluster_state:ok/, `${port}: ${info.stdout}${info.stderr}`);
    }
  });

  it('publish/subscribe across nodes, and every feature as ACL user fanout with no denial on any shard', async () => {
    const byNode = new Map();
    for (let i = 0; i < 12 && byNode.size < 3; i += 1) {
      const s = await connect(dep.lb, { ...STICKY, auth: { token: user.token } });
      const { result } = await emitAck(s, 'whoami');
      if (!byNode.has(result.node)) byNode.set(result.node, s);
    }
    assert.deepEqual([...byNode.keys()].sort(), ['node1', 'node2', 'node3'], 'the balancer reached every node');
    const clients = [...byNode.values()];
    const got = clients.map((s) => collect(s, 'deploy-cluster'));
    for (const s of clients) await subscribe(s, 'deploy-cluster');
    for (const [node, s] of byNode) {
      assert.deepEqual(await emitAck(s, 'publish', { topic: 'deploy-cluster', data: node }), { ok: true });
    }
    await waitUntil(() => got.every((g) => g.length === 3), 5000, 'every publish on every node');
    for (const g of got) assert.deepEqual([...g].sort(), ['node1', 'node2', 'node3']);

    // users, tokens, models, chat seats, the stream channel, logout: all on the cluster
    const u = await newUser(dep.lb, 'clusteracl');
    const q = `?access_token=${u.token}`;
    const created = await api(dep.lb, 'POST', `/api/models/ClusterOrder${q}`, { status: 'new' });
    assert.equal(created.status, 201, created.text);
    const { id } = created.body;
    for (const [method, body] of [['PATCH', { status: 'paid' }], ['PUT', { status: 'shipped' }], ['GET'], ['DELETE']]) {
      const r = await api(dep.lb, method, `/api/models/ClusterOrder/${id}${q}`, body);
      assert.equal(r.status, 200, `${method}: ${r.text}`);
    }
    const s = await connect(dep.lb, { ...STICKY, auth: { token: u.token } });
    await subscribe(s, 'deploy-cluster-acl');
    const chat = rawSocket(`${dep.lb}/chat`, { ...STICKY, transports: ['websocket'] });
    const people = once(chat, 'peopleinchat');
    chat.emit('load', `cacl-${id}`);
    assert.equal((await people).number, 0);
    const img = once(chat, 'img');
    chat.emit('login', { user: 'acl', avatar: 'acl@example.com', id: `cacl-${id}` });
    assert.match(await img, /^https?:/);
    const stream = await api(dep.lb, 'POST', `/api/stream${q}`, { name: 'a', screen_name: 'a', text: 'acl', user_profile_image: 'a' });
    assert.equal(stream.status, 202, stream.text);
    const loggedOut = once(s, 'disconnect', 5000);
    const out = await api(dep.lb, 'POST', `/api/users/logout${q}`);
    assert.equal(out.status, 204, out.text);
    await loggedOut;

    for (const port of dep.clusterPorts()) {
      const clientsOf = (await dep.clusterAdmin(port, ['CLIENT', 'LIST'])).stdout.split('\n')
        .filter((l) => l.startsWith('id=') && !/ cmd=client\|list /.test(l) && !/ flags=S /.test(l) && !/ flags=M /.test(l));
      for (const l of clientsOf) assert.match(l, / user=(fanout|admin) /, `${port}: ${l}`);
      const log = await dep.clusterAdmin(port, ['ACL', 'LOG']);
      assert.equal(log.stdout.trim(), '', `denied commands on ${port}:\n${log.stdout}`);
    }
  });

  it('Prometheus scrapes every node', async () => {
    await eventually('up{job="fanout"} == 1 for the 3 nodes', 20_000, async () => {
      const up = await promQuery(dep.prometheus, 'up{job="fanout"}');
      return up.length === 3 && up.every((r) => r.value[1] === '1');
    });
  });
});
