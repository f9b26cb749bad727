'use strict';
// A real Redis Cluster (3 masters + 3 replicas) for tests, started by deploy/local/redis-cluster
// (one implementation: this helper only calls the script) on free loopback ports, in a temporary
// run dir. Stopped by the PIDs the script recorded. Needs redis-server/redis-cli >= 7.0.
//
//   const cluster = await startRedisCluster();
//   cluster.seed                  'redis://127.0.0.1:<port>' (the first master): give it, or
//                                 cluster.urls, to createCluster({ rootNodes }) / the adapter
//   await cluster.killMaster(p)   SIGKILL the master on port p; resolves once one of its replicas
//                                 is master and every surviving node reports cluster_state:ok
//   await cluster.masterOf(key)   port of the master serving key's slot (keys, sharded channels)
//   await cluster.moveSlotOf(k, p) migrate the one slot of k to the master on port p (reshard)
//   startRedisCluster({ ports })  6 given ports instead of free ones
//   await cluster.stop()          deploy/local/redis-cluster down

const { execFile, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const REPO = path.resolve(__dirname, '..', '..', '..');
const SCRIPT = path.join(REPO, 'deploy', 'local', 'redis-cluster');
const HOST = '127.0.0.1';
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Run dirs of clusters started by this process and not stopped yet (stopped on exit). */
const live = new Set();
process.on('exit', () => {
  for (const dir of live) {
    spawnSync(SCRIPT, ['down'], { env: { ...process.env, REDIS_CLUSTER_DIR: dir }, timeout: 15_000, stdio: 'ignore' });
  }
});

function run(args, env, timeoutMs) {
  return new Promise((resolve) => {
    execFile(SCRIPT, args, { env, timeout: timeoutMs, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr });
    });
  });
}

/** redis-cli -p PORT ARGS… → stdout (rejects on failure; 3 s max). */
function cli(port, ...args) {
  return new Promise((resolve, reject) => {
    execFile('redis-cli', ['-h', HOST, '-p', String(port), ...args.map(String)], { timeout: 3000 }, (err, stdout) =>
      err ? reject(err) : resolve(stdout),
    );
  });
}

/** CLUSTER NODES as seen from PORT: [{ id, port, flags: [...], master (id or '-'), slots }]. */
async function clusterNodes(port) {
  return (await cli(port, 'CLUSTER', 'NODES'))
    .split('\n')
    .filter((l) => l.trim())
    .map((line) => {
      const f = line.trim().split(/\s+/);
      return { id: f[0], port: Number(/:(\d+)@/.exec(f[1])[1]), flags: f[2].split(','), master: f[3], slots: f.slice(8) };
    });
}

async function clusterState(port) {
  return /^cluster_state:(\w+)/m.exec(await cli(port, 'CLUSTER', 'INFO'))?.[1];
}

/**
 * Starts the cluster and waits until every node reports cluster_state:ok (the script does).
 * Returns { ports, urls, seed, runDir, stop(), killMaster(port), status(), masters(), cli(port, …) }.
 */
async function startRedisCluster({ nodeTimeoutMs = 3000, upTimeoutMs = 60_000, ports: wanted } = {}) {
  const probe = spawnSync('redis-server', ['--version']);
  if (probe.error || probe.status !== 0) throw new Error('redis-server is missing: apt-get install -y redis-server');
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-redis-cluster-'));
  const env = {
    ...process.env,
    REDIS_CLUSTER_DIR: runDir,
    REDIS_CLUSTER_PORTS: wanted ? wanted.join(',') : 'free',
    REDIS_CLUSTER_NODE_TIMEOUT: String(nodeTimeoutMs),
    REDIS_CLUSTER_READY_TIMEOUT: '30',
  };
  live.add(runDir);
  const up = await run(['up'], env, upTimeoutMs);
  if (up.code !== 0) {
    await run(['down'], env, 20_000);
    live.delete(runDir);
    throw new Error(`deploy/local/redis-cluster up failed (${up.code}):\n${up.stderr}`);
  }
  const ports = fs.readFileSync(path.join(runDir, 'ports'), 'utf8').split('\n').filter(Boolean).map(Number);
  const killed = new Set();
  const alivePorts = () => ports.filter((p) => !killed.has(p));
  const cluster = {
    ports,
    urls: ports.map((p) => `redis://${HOST}:${p}`),
    seed: `redis://${HOST}:${ports[0]}`,
    runDir,
    cli,
    /** Ports of the current masters (as seen by a surviving node). */
    async masters() {
      const nodes = await clusterNodes(alivePorts()[0]);
      return nodes.filter((n) => n.flags.includes('master') && !n.flags.includes('fail')).map((n) => n.port);
    },
    /** Port of the master serving KEY's slot (a key or a sharded channel name). */
    async masterOf(key) {
      const slot = Number(await cli(alivePorts()[0], 'CLUSTER', 'KEYSLOT', key));
      const nodes = await clusterNodes(alivePorts()[0]);
      const owner = nodes.find((n) => n.flags.includes('master') && !n.flags.includes('fail') && n.slots.some((range) => {
        if (range.startsWith('[')) return false; // a migration in progress, not ownership
        const [lo, hi = lo] = range.split('-').map(Number);
        return slot >= lo && slot <= hi;
      }));
      if (!owner) throw new Error(`no master serves slot ${slot} of ${key}`);
      return owner.port;
    },
    /**
     * Moves the one slot of KEY to the master on port TO, under traffic, the way
     * `redis-cli --cluster reshard` does it for one slot: IMPORTING on the target, MIGRATING on
     * the source, MIGRATE of the slot's keys, then SETSLOT NODE on target, source and the rest.
     * Resolves { slot, from, to }.
     */
    async moveSlotOf(key, to) {
      const slot = Number(await cli(alivePorts()[0], 'CLUSTER', 'KEYSLOT', key));
      const from = await cluster.masterOf(key);
      if (from === to) throw new Error(`slot ${slot} is already on ${to}`);
      const nodes = await clusterNodes(alivePorts()[0]);
      const id = (port) => nodes.find((n) => n.port === port).id;
      const ok = async (port, ...args) => {
        const out = (await cli(port, ...args)).trim();
        if (out !== 'OK') throw new Error(`${args.join(' ')} on ${port}: ${out}`);
      };
      await ok(to, 'CLUSTER', 'SETSLOT', slot, 'IMPORTING', id(from));
      await ok(from, 'CLUSTER', 'SETSLOT', slot, 'MIGRATING', id(to));
      for (;;) {
        const keys = (await cli(from, 'CLUSTER', 'GETKEYSINSLOT', slot, 100)).split('\n').filter(Boolean);
        if (!keys.length) break;
        const out = (await cli(from, 'MIGRATE', HOST, to, '', 0, 5000, 'KEYS', ...keys)).trim();
        if (out !== 'OK') throw new Error(`MIGRATE on ${from}: ${out}`);
      }
      await ok(to, 'CLUSTER', 'SETSLOT', slot, 'NODE', id(to));
      await ok(from, 'CLUSTER', 'SETSLOT', slot, 'NODE', id(to));
      for (const n of nodes.filter((n) => n.flags.includes('master') && ![from, to].includes(n.port) && !killed.has(n.port))) {
        await ok(n.port, 'CLUSTER', 'SETSLOT', slot, 'NODE', id(to));
      }
      return { slot, from, to };
    },
    /** deploy/local/redis-cluster status: { code, stdout }. */
    async status() {
      const r = await run(['status'], env, 15_000);
      return { code: r.code, stdout: r.stdout };
    },
    /**
     * Kills the master on PORT by its PID, then waits (timeoutMs) until a replica took over its
     * slots and every surviving node reports cluster_state:ok. Resolves { killed, promoted, pid }.
     */
    async killMaster(port, { timeoutMs = 30_000 } = {}) {
      const before = await clusterNodes(port);
      const me = before.find((n) => n.flags.includes('myself'));
      if (!me || !me.flags.includes('master')) throw new Error(`${port} is not a master`);
      const replicas = before.filter((n) => n.master === me.id).map((n) => n.port);
      if (!replicas.length) throw new Error(`master ${port} has no replica to promote`);
      const pid = Number(fs.readFileSync(path.join(runDir, 'pids', `${port}.pid`), 'utf8'));
      const r = await run(['kill', String(port)], env, 10_000);
      if (r.code !== 0) throw new Error(`redis-cluster kill ${port} failed:\n${r.stderr}`);
      killed.add(port);
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        try {
          const nodes = await clusterNodes(replicas[0]);
          const promoted = nodes.find((n) => replicas.includes(n.port) && n.flags.includes('master') && n.slots.length);
          if (promoted) {
            const states = await Promise.all(alivePorts().map(clusterState));
            if (states.every((s) => s === 'ok')) return { killed: port, promoted: promoted.port, pid };
          }
        } catch {
          /* a node is busy with the failover: retry */
        }
        if (Date.now() > deadline) throw new Error(`no replica of ${port} promoted within ${timeoutMs} ms`);
        await sleep(200);
      }
    },
    /** Stops exactly the PIDs `up` recorded; resolves the script's exit code. The run dir
     *  (logs) is removed when that worked. */
    async stop() {
      if (!live.has(runDir)) return 0;
      const r = await run(['down'], env, 30_000);
      live.delete(runDir);
      if (r.code === 0) fs.rmSync(runDir, { recursive: true, force: true });
      return r.code;
    },
  };
  return cluster;
}

module.exports = { startRedisCluster };
