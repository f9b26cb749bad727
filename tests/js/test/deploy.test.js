'use strict';
// End to end on the Docker-less twin of docker-compose.yml (deploy/local/up): redis-server
// (deploy/redis: ACL user `fanout`, pub/sub output buffers), 3 fanout-nodes, HAProxy with the
// cookie stickiness of deploy/haproxy/haproxy.cfg and Prometheus, all on free loopback ports in
// a temporary run dir. Clients only talk to HAProxy.
// Needs: apt-get install -y redis-server haproxy prometheus curl.

const { describe, it, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const {
  api, apiFrom, newUser, connect, rawSocket, closeAll, emitAck, collect, subscribe, waitUntil, sleep,
  metrics, metricValue, once,
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

  it('Redis ACL: every feature works as user fanout, with no denial in ACL LOG', async () => {
    // The nodes' own connections (publisher, subscriber, store pool) all run as `fanout`.
    const clients = (await dep.redis.admin(['CLIENT', 'LIST'])).stdout.split('\n').filter((l) => l.startsWith('id='));
    const nodeClients = clients.filter((l) => !/ cmd=client\|list /.test(l));
    assert.ok(nodeClients.length >= 6, clients.join('\n'));
    for (const l of nodeClients) assert.match(l, / user=fanout /, l);
    // nothing the earlier tests did was refused either
    const before = await dep.redis.admin(['ACL', 'LOG']);
    assert.equal(before.stdout.trim(), '', `denied commands:\n${before.stdout}`);

    // Paths that use every command the ACL grants: users (Lua), tokens, models (Lua, the PATCH compare-and-set),
    // presence, chat seats (Lua), the stream and revocation channels, the events channel.
    const u = await newUser(dep.lb, 'acl');
    const q = `?access_token=${u.token}`;
    const created = await api(dep.lb, 'POST', `/api/models/AclOrder${q}`, { status: 'new' });
    assert.equal(created.status, 201, created.text);
    const { id } = created.body;
    for (const [method, body] of [['PATCH', { status: 'paid' }], ['PUT', { status: 'shipped' }], ['GET'], ['DELETE']]) {
      const r = await api(dep.lb, method, `/api/models/AclOrder/${id}${q}`, body);
      assert.equal(r.status, 200, `${method}: ${r.text}`);
    }
    const s = await connect(dep.lb, { ...STICKY, auth: { token: u.token } });
    await subscribe(s, 'deploy-acl');
    const got = collect(s, 'deploy-acl');
    const pub = await dep.redis.fanout(['PUBLISH', 'fanout:events', JSON.stringify({ topic: 'deploy-acl', data: 'via redis' })]);
    assert.match(pub.stdout, /^[1-9]/, pub.stdout + pub.stderr);
    await waitUntil(() => got.length === 1, 3000, 'the events-channel message');
    const chat = rawSocket(`${dep.lb}/chat`, { ...STICKY, transports: ['websocket'] });
    const people = once(chat, 'peopleinchat');
    chat.emit('load', `acl-${id}`);
    assert.equal((await people).number, 0);
    const img = once(chat, 'img');
    chat.emit('login', { user: 'acl', avatar: 'acl@example.com', id: `acl-${id}` });
    assert.match(await img, /^https?:/);
    const stream = await api(dep.lb, 'POST', `/api/stream${q}`, { name: 'a', screen_name: 'a', text: 'acl', user_profile_image: 'a' });
    assert.equal(stream.status, 202, stream.text);
    const loggedOut = once(s, 'disconnect', 5000);
    const out = await api(dep.lb, 'POST', `/api/users/logout${q}`);
    assert.equal(out.status, 204, out.text);
    await loggedOut;

    const log = await dep.redis.admin(['ACL', 'LOG']);
    assert.equal(log.stdout.trim(), '', `denied commands:\n${log.stdout}`);
  });

  it('Redis ACL: the fanout user cannot touch other keys, channels or admin commands', async () => {
    const denied = [
      ['SET', 'other:x', '1'],
      ['GET', 'other:x'],
      ['DEL', 'fanout:{users}:by-username'],
      ['PUBLISH', 'other', 'x'],
      ['FLUSHALL'],
      ['KEYS', '*'],
      ['CONFIG', 'SET', 'client-output-buffer-limit', 'pubsub 0 0 0'],
      ['CLIENT', 'KILL', 'TYPE', 'pubsub'],
      ['EVAL', 'return 1', '0'],
      ['SCRIPT', 'FLUSH'],
      ['MONITOR'],
      ['ACL', 'SETUSER', 'fanout', '+@all'],
    ];
    for (const cmd of denied) {
      const r = await dep.redis.fanout(cmd, { timeoutMs: 5000 });
      assert.match(r.stdout + r.stderr, /NOPERM/, `${cmd.join(' ')}: ${r.stdout}${r.stderr}`);
    }
    // a Lua script cannot reach past the ACL either
    const sha = (await dep.redis.fanout(['SCRIPT', 'LOAD', "return redis.call('SET', 'other:y', '1')"])).stdout.trim();
    assert.match(sha, /^[0-9a-f]{40}$/);
    const lua = await dep.redis.fanout(['EVALSHA', sha, '0']);
    assert.match(lua.stdout, /can't access|NOPERM/, lua.stdout);
    // without credentials nothing at all
    const anon = await dep.redis.anonymous(['PING']);
    assert.match(anon.stdout, /NOAUTH/, anon.stdout);
    assert.equal((await dep.redis.admin(['EXISTS', 'other:x', 'other:y'])).stdout.trim(), '0');
    assert.equal((await dep.redis.admin(['ACL', 'LOG', 'RESET'])).stdout.trim(), 'OK');
  });

  it('a 50 MB PUBLISH on fanout:events is skipped and counted; no node loses its subscription', async () => {
    const pubsubIds = async () => (await dep.redis.admin(['CLIENT', 'LIST', 'TYPE', 'pubsub'])).stdout
      .split('\n').filter((l) => l.startsWith('id=')).map((l) => l.split(' ')[0]).sort();
    const before = await pubsubIds();
    assert.equal(before.length, 3, before.join());
    const u = await newUser(dep.lb, 'big');
    const s = await connect(dep.lb, { ...STICKY, auth: { token: u.token } });
    await subscribe(s, 'deploy-big');
    const got = collect(s, 'deploy-big');
    const big = Buffer.from(JSON.stringify({ topic: 'deploy-big', data: 'x'.repeat(50 << 20) }));
    const publishBig = async () => {
      const r = await dep.redis.fanout(['PUBLISH', 'fanout:events'], { input: big, timeoutMs: 60_000 });
      assert.equal(r.stdout.trim(), '3', `PUBLISH 50 MB: ${r.stdout}${r.stderr}`);
    };
    const sample = (text, name) => metricValue(text, name) ?? 0;
    const tooLarge = 'fanout_messages_dropped_total{reason="too_large",transport="redis"}';

    await publishBig();
    await eventually('every node counted the oversize message', 20_000, async () => {
      const texts = await Promise.all(dep.nodes.map((n) => metrics(n.url)));
      return texts.every((t) => sample(t, tooLarge) === 1 &&
        sample(t, 'fanout_adapter_oversize_messages_total{kind="channel"}') === 1);
    });
    for (const n of dep.nodes) {
      const text = await metrics(n.url);
      assert.equal(sample(text, 'fanout_adapter_reconnects_total'), 0, `${n.id} reconnected`);
      assert.equal((await api(n.url, 'GET', '/readyz')).status, 200, `${n.id} /readyz`);
    }
    assert.deepEqual(await pubsubIds(), before, 'the subscriber connections were cut');
    const small = await dep.redis.fanout(['PUBLISH', 'fanout:events', JSON.stringify({ topic: 'deploy-big', data: 'small' })]);
    assert.equal(small.stdout.trim(), '3');
    await waitUntil(() => got.length >= 1, 3000, 'the next event');
    assert.deepEqual(got, ['small'], 'only the small message is delivered');

    // Control: Redis's default pub/sub limit (32mb 8mb 60) cuts every subscriber on the same
    // message — what deploy/redis/redis.conf prevents.
    const limit = (await dep.redis.admin(['CONFIG', 'GET', 'client-output-buffer-limit'])).stdout;
    assert.match(limit, /pubsub 268435456 134217728 60/, limit);
    assert.equal((await dep.redis.admin(['CONFIG', 'SET', 'client-output-buffer-limit', 'pubsub 32mb 8mb 60'])).stdout.trim(), 'OK');
    try {
      await publishBig();
      await eventually('the default limit cut the subscribers', 10_000, async () => {
        const now = await pubsubIds();
        return now.every((id) => !before.includes(id));
      });
    } finally {
      await dep.redis.admin(['CONFIG', 'SET', 'client-output-buffer-limit', 'pubsub 256mb 128mb 60']);
    }
    // the nodes resubscribe by themselves; wait until the balancer has all three again
    await eventually('3 resubscribed nodes, 3/3 servers UP', 20_000, async () => {
      const ready = await Promise.all(dep.nodes.map((n) => api(n.url, 'GET', '/readyz')));
      const st = await dep.status();
      return ready.every((r) => r.status === 200) && (await pubsubIds()).length === 3 &&
        /3\/3 servers UP/.test(st.stdout);
    });
    for (const n of dep.nodes) {
      assert.ok(sample(await metrics(n.url), 'fanout_adapter_reconnects_total') >= 1, `${n.id} did not see the cut`);
    }
  });

  it('a flood of garbage on fanout:events is counted in full and logged at most once a second', async () => {
    const sample = 'fanout_bad_input_total{code="bad_request",origin="events"}';
    const count = async (n) => metricValue(await metrics(n.url), sample) ?? 0;
    const logLines = (n) => dep.logs(n.id).split('\n').filter((l) => l.includes('malformed message on the events channel')).length;
    const before = await Promise.all(dep.nodes.map(async (n) => ({ count: await count(n), lines: logLines(n) })));
    const started = Date.now();
    const flood = await dep.redis.admin(['EVAL', "for i = 1, 200 do redis.call('PUBLISH', 'fanout:events', 'not json') end return 200", '0']);
    assert.equal(flood.stdout.trim(), '200', flood.stdout + flood.stderr);
    await eventually('200 malformed messages counted on every node', 10_000, async () => {
      const now = await Promise.all(dep.nodes.map(count));
      return now.every((c, i) => c - before[i].count === 200);
    });
    const seconds = Math.ceil((Date.now() - started) / 1000) + 1;
    for (const [i, n] of dep.nodes.entries()) {
      const logged = logLines(n) - before[i].lines;
      assert.ok(logged >= 1 && logged <= seconds, `${n.id} logged ${logged} lines for 200 messages in ${seconds} s`);
    }
  });

  it('the load balancer: no access_token in its log, no /metrics for clients', async () => {
    const u = await newUser(dep.lb, 'lblog');
    const marker = `/api/models/LogCheck?access_token=${u.token}`;
    assert.equal((await api(dep.lb, 'GET', marker)).status, 200);
    const s = await connect(dep.lb, { ...STICKY, transports: ['polling'], query: { access_token: u.token }, auth: { token: u.token } });
    await emitAck(s, 'whoami');
    s.close();
    for (const path of ['/metrics', '/metrics?x=1', '/METRICS', '//metrics', '/%6Detrics', '/metrics/']) {
      const r = await api(dep.lb, 'GET', path);
      assert.ok([403, 404].includes(r.status), `${path} through the balancer: ${r.status}`);
      assert.doesNotMatch(r.text, /fanout_build_info/, path);
    }
    for (const n of dep.nodes) {
      assert.match(await metrics(n.url), /^fanout_build_info/m, `${n.id}: /metrics on the node itself`);
    }
    const log = await eventually('HAProxy logged the requests', 5000, async () => {
      const text = dep.logs('haproxy');
      return /"GET \/api\/models\/LogCheck HTTP\/1\.1"/.test(text) && /"GET \/socket\.io\/ HTTP\/1\.1" transport=polling/.test(text) && text;
    });
    assert.ok(!log.includes(u.token), 'the access token is in the HAProxy log');
    assert.doesNotMatch(log, /access_token/);
    assert.match(log, /"GET \/metrics HTTP\/1\.1"/, 'the denied /metrics requests are logged (without query)');
  });

  it('through the balancer, the login throttle counts each client, not the balancer', async () => {
    // Unknown users (no per-account budget involved) from one source address until every node
    // throttles it (6 refusals in a row); then another address still logs in. Were the nodes
    // counting the balancer's address, that login would be refused too.
    let throttled = null;
    let inARow = 0;
    for (let i = 0; i < 800 && inARow < 6; i += 1) {
      const r = await apiFrom('127.0.0.2', dep.lb, 'POST', '/api/users/login', { username: `nobody-${i}`, password: 'wrong-password' });
      assert.ok([401, 429].includes(r.status), `${r.status} ${r.text}`);
      inARow = r.status === 429 ? inARow + 1 : 0;
      if (r.status === 429) throttled = r;
    }
    assert.equal(inARow, 6, 'one address ran out of login attempts on every node');
    assert.ok(Number(throttled.headers['retry-after']) >= 1);
    const ok = await apiFrom('127.0.0.3', dep.lb, 'POST', '/api/users/login', { username: user.username, password: user.password });
    assert.equal(ok.status, 200, `another client behind the same balancer: ${ok.status} ${ok.text}`);
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
