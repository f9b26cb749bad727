'use strict';
// The Docker-less deployment of deploy/local/: start it on free loopback ports in a temporary
// run dir (deploy/local/up), stop it (deploy/local/down), read its PIDs, query its Prometheus.

const { execFile, spawn, spawnSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { BIN, HOST, REPO, freePort, sleep } = require('./node');

const LOCAL = path.join(REPO, 'deploy', 'local');
const TOOLS = ['redis-server', 'redis-cli', 'haproxy', 'prometheus', 'curl'];

/** Throws with the install command when a tool deploy/local/up needs is missing. */
function requireTools() {
  const missing = TOOLS.filter((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0);
  if (missing.length) {
    throw new Error(`${missing.join(', ')} missing: apt-get install -y ${missing.join(' ')}`);
  }
}

function run(script, env, timeoutMs) {
  return new Promise((resolve) => {
    execFile(path.join(LOCAL, script), [], { env, timeout: timeoutMs, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr, err });
    });
  });
}

/**
 * redis-cli on 127.0.0.1:`port` as `user` (password through REDISCLI_AUTH, never argv; no user:
 * an unauthenticated connection). `input` (a Buffer) becomes the last argument (`-x`).
 * Resolves with { code, stdout, stderr }; bounded by `timeoutMs`.
 */
function redisCli(port, { user, password } = {}, args = [], { input, timeoutMs = 30_000 } = {}) {
  const argv = ['--no-auth-warning', '-h', HOST, '-p', String(port)];
  if (user) argv.push('--user', user);
  if (input !== undefined) argv.push('-x');
  argv.push(...args.map(String));
  const env = { ...process.env };
  delete env.REDISCLI_AUTH;
  if (password) env.REDISCLI_AUTH = password;
  return new Promise((resolve) => {
    const proc = spawn('redis-cli', argv, { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
    proc.stdout.on('data', (d) => { stdout += d; });
    proc.stderr.on('data', (d) => { stderr += d; });
    proc.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    proc.stdin.on('error', () => {});
    proc.stdin.end(input);
  });
}

/**
 * Starts redis + `nodes` fanout-nodes + HAProxy + Prometheus with deploy/local/up.
 * Returns { lb, stats, prometheus, nodes: [{ id, port, url }], runDir, env,
 *           pid(name), status(), down(), logs(name), redis }, where redis is
 * { port, fanout(args, opts), admin(args, opts), anonymous(args, opts) }: redis-cli as the
 * nodes' ACL user, as the admin user, and without credentials (passwords are random per run).
 */
async function startDeployment({ nodes = 3, env = {}, upTimeoutMs = 90_000 } = {}) {
  requireTools();
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-deploy-'));
  const nodePorts = [];
  for (let i = 0; i < nodes; i += 1) nodePorts.push(await freePort());
  const [redisPort, lbPort, statsPort, promPort] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const fanoutPassword = crypto.randomBytes(16).toString('hex');
  const adminPassword = crypto.randomBytes(16).toString('hex');
  const fullEnv = {
    ...process.env,
    FANOUT_NODE_BIN: BIN,
    FANOUT_LOG: 'info',
    DEPLOY_RUN_DIR: runDir,
    DEPLOY_NODES: String(nodes),
    DEPLOY_NODE_PORTS: nodePorts.join(','),
    DEPLOY_REDIS_PORT: String(redisPort),
    DEPLOY_LB_PORT: String(lbPort),
    DEPLOY_LB_STATS_PORT: String(statsPort),
    DEPLOY_PROMETHEUS_PORT: String(promPort),
    DEPLOY_SCRAPE_INTERVAL: '1s',
    DEPLOY_READY_TIMEOUT: '40',
    DEPLOY_STOP_TIMEOUT: '30',
    REDIS_FANOUT_PASSWORD: fanoutPassword,
    REDIS_ADMIN_PASSWORD: adminPassword,
    ...env,
  };
  const dep = {
    runDir,
    env: fullEnv,
    lb: `http://${HOST}:${lbPort}`,
    stats: `http://${HOST}:${statsPort}`,
    prometheus: `http://${HOST}:${promPort}`,
    nodes: nodePorts.map((port, i) => ({ id: `node${i + 1}`, port, url: `http://${HOST}:${port}` })),
    redis: {
      port: redisPort,
      fanout: (args, opts) => redisCli(redisPort, { user: 'fanout', password: fanoutPassword }, args, opts),
      admin: (args, opts) => redisCli(redisPort, { user: 'admin', password: adminPassword }, args, opts),
      anonymous: (args, opts) => redisCli(redisPort, {}, args, opts),
    },
    /** PID deploy/local/up recorded for a component (node1…, redis, haproxy, prometheus). */
    pid(name) {
      const f = path.join(runDir, 'pids', `${name}.pid`);
      return fs.existsSync(f) ? Number(fs.readFileSync(f, 'utf8').trim()) : null;
    },
    /** Every PID up recorded, by name (read before down removes the files). */
    pids() {
      const names = fs.readFileSync(path.join(runDir, 'components'), 'utf8').split('\n').filter(Boolean);
      return Object.fromEntries(names.map((n) => [n, dep.pid(n)]));
    },
    /** DEPLOY_REDIS=cluster: the ports of the six cluster nodes (from the run dir). */
    clusterPorts() {
      const f = path.join(runDir, 'redis-cluster', 'ports');
      return fs.existsSync(f) ? fs.readFileSync(f, 'utf8').split('\n').filter(Boolean).map(Number) : [];
    },
    /** DEPLOY_REDIS=cluster: redis-cli as admin on one cluster node. */
    clusterAdmin: (port, args, opts) => redisCli(port, { user: 'admin', password: adminPassword }, args, opts),
    logs(name) {
      const f = path.join(runDir, 'logs', `${name}.log`);
      return fs.existsSync(f) ? fs.readFileSync(f, 'utf8') : '';
    },
    status: () => run('status', fullEnv, 20_000),
    down: () => run('down', fullEnv, 60_000),
    /** Removes the run dir (logs included). */
    cleanup() {
      fs.rmSync(runDir, { recursive: true, force: true });
    },
  };
  const up = await run('up', fullEnv, upTimeoutMs);
  if (up.code !== 0) {
    await dep.down();
    throw new Error(`deploy/local/up failed (${up.code}):\n${up.stdout}\n${up.stderr}`);
  }
  return dep;
}

/** True while a process with this PID runs (a zombie awaiting its reaper counts as gone). */
function pidAlive(pid) {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

/** GET /api/v1/query on Prometheus; resolves with data.result. */
async function promQuery(base, query) {
  const res = await fetch(`${base}/api/v1/query?query=${encodeURIComponent(query)}`, {
    signal: AbortSignal.timeout(5000),
  });
  const body = await res.json();
  if (body.status !== 'success') throw new Error(`prometheus ${query}: ${JSON.stringify(body)}`);
  return body.data.result;
}

/** Retries `fn` (async, truthy = done) every 200 ms for `ms`; rejects with the last state. */
async function eventually(what, ms, fn) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timeout after ${ms} ms: ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    }
    await sleep(200);
  }
}

module.exports = { requireTools, startDeployment, pidAlive, promQuery, eventually, redisCli };
