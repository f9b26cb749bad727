#!/usr/bin/env node
'use strict';
// Structural check of the Grafana dashboard (deploy/grafana/dashboards/fanout.json), called by
// deploy/check. No npm dependency: Node.js >= 20 only.
//
//  1. valid JSON with the shape Grafana provisioning needs (uid, title, panels with unique
//     ids, gridPos, targets with refId + expr) and every panel on the provisioned datasource;
//  2. every PromQL expression parses (`promtool check rules` on a generated rules file);
//  3. every metric an expression names is one a live fanout-node exports: a redis-server and a
//     fanout-node (cluster mode) are started on free loopback ports and driven through the
//     REST API and raw Engine.IO long-polling (connect, bad token, subscribe, publish,
//     disconnect, then a Redis outage) so that labelled series exist, and their /metrics is
//     compared (histogram `_bucket`/`_sum`/`_count` allowed; Prometheus' own `up` etc. too);
//  4. the panels the deployment relies on are present (REQUIRED below).
//
//   node deploy/lib/dashboard-check.js [--dashboard FILE] [--metrics-file FILE]
// --metrics-file compares against a saved /metrics text instead of starting a node.
// The node binary: FANOUT_NODE_BIN, else the newer of target/release and target/debug/fanout-node.

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const net = require('node:net');
const { spawn, spawnSync } = require('node:child_process');

const REPO = path.resolve(__dirname, '..', '..');
const HOST = '127.0.0.1';

/** Metrics the dashboard must use (what docker-compose.yml's Grafana is for). */
const REQUIRED = [
  'fanout_sockets_connected',
  'fanout_connections_total',
  'fanout_disconnections_total',
  'fanout_events_received_total',
  'fanout_events_sent_total',
  'fanout_delivery_latency_seconds_bucket',
  'fanout_redis_errors_total',
  'fanout_adapter_reconnects_total',
];
/** Series Prometheus adds to every scrape target. */
const PROMETHEUS_SYNTHETIC = new Set([
  'up',
  'scrape_duration_seconds',
  'scrape_samples_scraped',
  'scrape_samples_post_metric_relabeling',
  'scrape_series_added',
]);
const PROMQL_KEYWORDS = new Set([
  'and', 'or', 'unless', 'bool', 'offset', 'by', 'without', 'on', 'ignoring',
  'group_left', 'group_right', 'inf', 'nan', 'atan2',
]);

function parseArgs(argv) {
  const out = {
    dashboard: path.join(REPO, 'deploy/grafana/dashboards/fanout.json'),
    metricsFile: null,
  };
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === '--dashboard') out.dashboard = argv[(i += 1)];
    else if (argv[i] === '--metrics-file') out.metricsFile = argv[(i += 1)];
    else throw new Error(`unknown argument ${argv[i]}`);
  }
  return out;
}

// ---------------------------------------------------------------- dashboard structure

/** The uid of the provisioned Prometheus datasource. */
function provisionedDatasourceUids() {
  const dir = path.join(REPO, 'deploy/grafana/provisioning/datasources');
  const uids = new Set();
  for (const f of fs.readdirSync(dir)) {
    if (!/\.ya?ml$/.test(f)) continue;
    for (const m of fs.readFileSync(path.join(dir, f), 'utf8').matchAll(/^\s*uid:\s*["']?([\w-]+)/gm)) {
      uids.add(m[1]);
    }
  }
  return uids;
}

/** Every panel, rows' nested panels included. */
function allPanels(dash) {
  const out = [];
  for (const p of dash.panels || []) {
    out.push(p);
    for (const q of p.panels || []) out.push(q);
  }
  return out;
}

/** Returns [{ where, expr }] and pushes structural problems into `errors`. */
function checkStructure(dash, dsUids, errors) {
  const exprs = [];
  if (typeof dash !== 'object' || dash === null || Array.isArray(dash)) {
    errors.push('dashboard is not a JSON object');
    return exprs;
  }
  for (const key of ['uid', 'title']) {
    if (typeof dash[key] !== 'string' || !dash[key]) errors.push(`dashboard.${key} missing`);
  }
  if (!Number.isInteger(dash.schemaVersion)) errors.push('dashboard.schemaVersion missing');
  if (dash.id !== undefined && dash.id !== null) errors.push('dashboard.id must be null for provisioning');
  const panels = allPanels(dash);
  if (panels.length === 0) errors.push('dashboard has no panels');
  const ids = new Set();
  for (const p of panels) {
    const name = `panel ${p.id} "${p.title}"`;
    if (!Number.isInteger(p.id)) errors.push(`${name}: id missing`);
    else if (ids.has(p.id)) errors.push(`${name}: duplicate id`);
    ids.add(p.id);
    if (typeof p.title !== 'string' || !p.title) errors.push(`${name}: title missing`);
    const g = p.gridPos;
    if (!g || !['x', 'y', 'w', 'h'].every((k) => Number.isInteger(g[k]))) errors.push(`${name}: gridPos {x,y,w,h} missing`);
    else if (g.x < 0 || g.x + g.w > 24) errors.push(`${name}: gridPos outside the 24 columns`);
    if (p.type === 'row') continue;
    if (typeof p.type !== 'string') errors.push(`${name}: type missing`);
    if (!p.datasource || p.datasource.type !== 'prometheus' || !dsUids.has(p.datasource.uid)) {
      errors.push(`${name}: datasource must be {type: prometheus, uid: ${[...dsUids].join('|')}} (provisioned)`);
    }
    const targets = p.targets || [];
    if (targets.length === 0) errors.push(`${name}: no targets`);
    const refIds = new Set();
    for (const t of targets) {
      if (typeof t.refId !== 'string' || refIds.has(t.refId)) errors.push(`${name}: missing or duplicate refId`);
      refIds.add(t.refId);
      if (typeof t.expr !== 'string' || !t.expr.trim()) {
        errors.push(`${name}: target ${t.refId} has no expr`);
        continue;
      }
      if (t.datasource && !dsUids.has(t.datasource.uid)) errors.push(`${name}: target ${t.refId} on another datasource`);
      exprs.push({ where: `${name} target ${t.refId}`, expr: t.expr });
    }
  }
  for (const v of dash.templating?.list || []) {
    const q = typeof v.query === 'string' ? v.query : v.query?.query;
    if (v.type === 'query' && q) {
      const m = /^\s*label_values\((.*)\)\s*$/.exec(q);
      const expr = m ? m[1].replace(/,\s*\w+\s*$/, '') : q;
      exprs.push({ where: `variable ${v.name}`, expr });
    }
  }
  return exprs;
}

// ---------------------------------------------------------------- PromQL

/** Grafana's $variables replaced by something PromQL parses. */
function substituteGrafanaVars(expr) {
  return expr
    .replace(/\$__(rate_interval|interval|range)\b/g, '1m')
    .replace(/\$\{[^}]*\}|\$\w+/g, '.*');
}

/** Metric names an expression selects. */
function metricNames(expr) {
  let s = substituteGrafanaVars(expr);
  s = s.replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""'); // strings
  s = s.replace(/\{[^}]*\}/g, ' '); // label matchers
  s = s.replace(/\[[^\]]*\]/g, ' '); // ranges / subqueries
  s = s.replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ');
  s = s.replace(/\boffset\s+-?[0-9a-z]+/g, ' ');
  const names = new Set();
  for (const m of s.matchAll(/(?<![\w.:])([a-zA-Z_:][\w:]*)(\s*\()?/g)) {
    if (m[2]) continue; // function or aggregation
    if (PROMQL_KEYWORDS.has(m[1].toLowerCase())) continue;
    names.add(m[1]);
  }
  return [...names];
}

/** `promtool check rules` on every expression; pushes failures into errors. */
function checkSyntax(exprs, errors) {
  const probe = spawnSync('promtool', ['--version']);
  if (probe.error) {
    errors.push('promtool is missing: apt-get install -y prometheus');
    return;
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-dash-'));
  try {
    exprs.forEach((e, i) => {
      const file = path.join(dir, `rule${i}.yml`);
      // JSON is YAML: one rules file per expression so a failure names its panel.
      fs.writeFileSync(file, JSON.stringify({
        groups: [{ name: 'dashboard', rules: [{ record: `dashboard:expr_${i}`, expr: substituteGrafanaVars(e.expr) }] }],
      }));
      const res = spawnSync('promtool', ['check', 'rules', file], { encoding: 'utf8' });
      if (res.status !== 0) errors.push(`${e.where}: PromQL does not parse: ${e.expr}\n${res.stdout}${res.stderr}`);
    });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Allowed series names from a /metrics text: histogram families expand to _bucket/_sum/_count. */
function exportedNames(text) {
  const names = new Set();
  const types = new Map();
  for (const line of text.split('\n')) {
    const t = /^# TYPE (\S+) (\S+)/.exec(line);
    if (t) types.set(t[1], t[2]);
    else if (line && !line.startsWith('#')) names.add(line.split(/[{ ]/)[0]);
  }
  for (const [name, type] of types) {
    if (type === 'histogram' || type === 'summary') {
      for (const sfx of ['_bucket', '_sum', '_count']) {
        if (type === 'summary' && sfx === '_bucket') continue;
        names.add(name + sfx);
      }
      if (type === 'histogram') names.delete(name);
    } else {
      names.add(name);
    }
  }
  return names;
}

// ---------------------------------------------------------------- live node

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, HOST, () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function until(what, ms, fn) {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch {
      /* retry */
    }
    if (Date.now() > deadline) throw new Error(`timeout after ${ms} ms: ${what}`);
    await sleep(50);
  }
}

function redisPing(port) {
  return new Promise((resolve) => {
    const sock = net.connect(port, HOST);
    const done = (ok) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(1000, () => done(false));
    sock.on('error', () => done(false));
    sock.on('data', (d) => done(d.toString().startsWith('+PONG')));
    sock.write('PING\r\n');
  });
}

async function http(base, method, p, body, token) {
  const headers = {};
  if (body !== undefined) headers['content-type'] = typeof body === 'string' ? 'text/plain;charset=UTF-8' : 'application/json';
  if (token) headers.authorization = token;
  const res = await fetch(base + p, {
    method,
    headers,
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  return { status: res.status, text: await res.text() };
}

/** A Socket.IO session over raw Engine.IO v4 long-polling (namespace /). */
async function pollingSession(base, token) {
  const open = await http(base, 'GET', '/socket.io/?EIO=4&transport=polling');
  if (open.status !== 200 || !open.text.startsWith('0')) throw new Error(`handshake: ${open.status} ${open.text}`);
  const { sid } = JSON.parse(open.text.slice(1));
  const url = `/socket.io/?EIO=4&transport=polling&sid=${encodeURIComponent(sid)}`;
  const inbox = [];
  const session = {
    inbox,
    send: async (packet) => {
      const r = await http(base, 'POST', url, packet);
      if (r.status !== 200) throw new Error(`POST ${packet}: ${r.status} ${r.text}`);
    },
    /** One GET; answers pings; returns the Socket.IO packets received. */
    poll: async () => {
      const r = await http(base, 'GET', url);
      if (r.status !== 200) throw new Error(`GET: ${r.status} ${r.text}`);
      for (const pkt of r.text.split('\x1e')) {
        if (pkt === '2') await session.send('3');
        else if (pkt.startsWith('4')) inbox.push(pkt.slice(1));
      }
      return inbox;
    },
    /** Sends one Socket.IO packet (Engine.IO message). */
    sio: (packet) => session.send(`4${packet}`),
    /** Polls until a packet matches (bounded). */
    waitFor: async (what, pred) => {
      const deadline = Date.now() + 5000;
      for (;;) {
        const hit = inbox.find(pred);
        if (hit) return hit;
        if (Date.now() > deadline) throw new Error(`no ${what} (got ${JSON.stringify(inbox)})`);
        await session.poll();
      }
    },
  };
  await session.sio(`0${JSON.stringify({ token })}`);
  return session;
}

/** FANOUT_NODE_BIN, else the most recently built of target/{release,debug}/fanout-node. */
function nodeBinary() {
  if (process.env.FANOUT_NODE_BIN) return process.env.FANOUT_NODE_BIN;
  const built = ['release', 'debug']
    .map((p) => path.join(REPO, 'target', p, 'fanout-node'))
    .filter((f) => {
      try {
        fs.accessSync(f, fs.constants.X_OK);
        return true;
      } catch {
        return false;
      }
    })
    .sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs);
  if (!built.length) throw new Error('no fanout-node binary: cargo build -p fanout-node, or set FANOUT_NODE_BIN');
  return built[0];
}

/** Starts redis + a cluster-mode node, drives every code path the dashboard graphs. */
async function liveMetrics() {
  if (spawnSync('redis-server', ['--version']).error) throw new Error('redis-server is missing: apt-get install -y redis-server');
  const procs = [];
  const started = (cmd, args, env) => {
    const p = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    const keep = (d) => {
      err = (err + d).slice(-4000);
    };
    p.stdout.on('data', keep);
    p.stderr.on('data', keep);
    p.logs = () => err;
    procs.push(p);
    return p;
  };
  try {
    const redisPort = await freePort();
    const redis = started('redis-server', ['--port', String(redisPort), '--bind', HOST, '--save', '', '--appendonly', 'no']);
    await until('redis-server answering PING', 10000, () => redisPing(redisPort));
    const port = await freePort();
    const base = `http://${HOST}:${port}`;
    const node = started(nodeBinary(), [], {
      FANOUT_BIND: `${HOST}:${port}`,
      FANOUT_REDIS_URL: `redis://${HOST}:${redisPort}`,
      FANOUT_NODE_ID: 'dashboard-check',
      FANOUT_LOG: 'warn',
    });
    await until('node ready', 15000, async () => (await http(base, 'GET', '/readyz')).status === 200)
      .catch((e) => {
        throw new Error(`${e.message}\n${node.logs()}`);
      });

    const username = `dash${process.pid}${Date.now()}`;
    const created = await http(base, 'POST', '/api/users', { username, email: `${username}@example.com`, password: 'secret123' });
    if (created.status !== 201) throw new Error(`create user: ${created.status} ${created.text}\n${node.logs()}`);
    const login = await http(base, 'POST', '/api/users/login', { username, password: 'secret123' });
    const { id: token } = JSON.parse(login.text);

    const s = await pollingSession(base, token);
    await s.waitFor('CONNECT', (p) => p.startsWith('0'));
    await s.sio('21["subscribe","dashboard-check"]');
    await s.waitFor('subscribe ack', (p) => p.startsWith('31'));
    await s.sio('22["publish",{"topic":"dashboard-check","data":{"n":1}}]');
    await s.waitFor('delivery', (p) => p.startsWith('2["dashboard-check"'));
    const pub = await http(base, 'POST', '/api/publish', { topic: 'dashboard-check', data: 2 }, token);
    if (pub.status !== 202) throw new Error(`REST publish: ${pub.status} ${pub.text}`);
    await s.waitFor('REST delivery', (p) => p === '2["dashboard-check",2]');

    const bad = await pollingSession(base, 'not-a-token');
    await bad.waitFor('connect_error', (p) => p.startsWith('4'));
    await s.sio('1'); // Socket.IO DISCONNECT: a disconnection with a reason

    let text = await (await fetch(`${base}/metrics`)).text();
    // A Redis outage: store commands fail (fanout_redis_errors_total), the adapter reconnects.
    redis.kill('SIGKILL');
    await until('a failed Redis command counted', 10000, async () => {
      await http(base, 'POST', '/api/users/login', { username, password: 'secret123' }).catch(() => {});
      const t = await (await fetch(`${base}/metrics`)).text();
      if (!t.includes('fanout_redis_errors_total{')) return false;
      text += `\n${t}`;
      return true;
    });
    return text;
  } finally {
    for (const p of procs) if (p.exitCode === null) p.kill('SIGKILL');
  }
}

// ---------------------------------------------------------------- main

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const errors = [];
  let dash;
  try {
    dash = JSON.parse(fs.readFileSync(args.dashboard, 'utf8'));
  } catch (e) {
    console.error(`dashboard: ${args.dashboard}: ${e.message}`);
    process.exit(1);
  }
  const exprs = checkStructure(dash, provisionedDatasourceUids(), errors);
  checkSyntax(exprs, errors);

  const text = args.metricsFile ? fs.readFileSync(args.metricsFile, 'utf8') : await liveMetrics();
  const exported = exportedNames(text);
  const used = new Set();
  for (const { where, expr } of exprs) {
    for (const name of metricNames(expr)) {
      used.add(name);
      if (!exported.has(name) && !PROMETHEUS_SYNTHETIC.has(name)) {
        errors.push(`${where}: metric ${name} is not exported by fanout-node (expr: ${expr})`);
      }
    }
  }
  for (const name of REQUIRED) {
    if (!used.has(name)) errors.push(`no panel uses ${name}`);
  }
  if (errors.length) {
    console.error(`dashboard check FAILED (${path.relative(REPO, args.dashboard)}):\n  ${errors.join('\n  ')}`);
    console.error(`exported by fanout-node: ${[...exported].filter((n) => n.startsWith('fanout_')).sort().join(' ')}`);
    process.exit(1);
  }
  console.log(
    `dashboard OK: ${allPanels(dash).length} panels, ${exprs.length} queries, ` +
      `${used.size} metrics, all exported by a live fanout-node`,
  );
}

main().catch((e) => {
  console.error(`dashboard check FAILED: ${e.stack || e}`);
  process.exit(1);
});
