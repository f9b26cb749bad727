'use strict';
// A real redis-server for tests: started on a free loopback port, stopped (and restarted on the
// same port) by its PID. Fails with the install command when redis-server is missing.

const { spawn, spawnSync } = require('node:child_process');
const net = require('node:net');
const { freePort, sleep, startNode } = require('./node');

const live = new Set();
process.on('exit', () => {
  for (const proc of live) {
    try {
      process.kill(proc.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
});

function requireRedis() {
  const probe = spawnSync('redis-server', ['--version']);
  if (probe.error || probe.status !== 0) {
    throw new Error('redis-server is missing: apt-get install -y redis-server');
  }
}

/** Sends one command in RESP and resolves with the raw reply text (first reply only). */
function command(port, ...args) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let reply = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`redis ${args[0]}: timeout`));
    }, 3000);
    socket.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.on('data', (d) => {
      reply += d.toString();
      if (reply.endsWith('\r\n')) {
        clearTimeout(timer);
        socket.end();
        resolve(reply);
      }
    });
    const parts = args.map(String);
    socket.write(
      `*${parts.length}\r\n` +
        parts.map((p) => `$${Buffer.byteLength(p)}\r\n${p}\r\n`).join(''),
    );
  });
}

/** Starts redis-server; returns { port, url, stop(), start(), publish(channel, msg), command() }. */
async function startRedis() {
  requireRedis();
  const port = await freePort();
  let proc = null;
  const fixture = {
    port,
    url: `redis://127.0.0.1:${port}`,
    async start() {
      proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
        stdio: 'ignore',
      });
      live.add(proc);
      const deadline = Date.now() + 5000;
      for (;;) {
        try {
          if ((await command(port, 'PING')).startsWith('+PONG')) return;
        } catch {
          /* not up yet */
        }
        if (Date.now() > deadline) throw new Error('redis-server did not start');
        await sleep(20);
      }
    },
    /** Kills the server by PID and waits for it to exit. */
    async stop() {
      if (!proc) return;
      const p = proc;
      proc = null;
      const exited = new Promise((resolve) => p.once('exit', resolve));
      p.kill('SIGKILL');
      await exited;
      live.delete(p);
    },
    publish(channel, message) {
      return command(port, 'PUBLISH', channel, message);
    },
    command: (...args) => command(port, ...args),
  };
  await fixture.start();
  return fixture;
}

/**
 * A cluster: one redis-server and `count` nodes on it (node ids `<prefix>0`…), each ready.
 * Returns { redis, nodes, stop() → the nodes' exit codes }.
 */
async function startCluster(count, prefix, env = {}) {
  const redis = await startRedis();
  const nodes = [];
  for (let i = 0; i < count; i += 1) {
    nodes.push(await startNode({ env: { FANOUT_REDIS_URL: redis.url, ...env }, args: ['--node-id', `${prefix}${i}`] }));
  }
  for (const node of nodes) {
    const deadline = Date.now() + 5000;
    while ((await fetch(`${node.url}/readyz`)).status !== 200) {
      if (Date.now() > deadline) throw new Error(`${node.url} not ready`);
      await sleep(50);
    }
  }
  return {
    redis,
    nodes,
    async stop() {
      const codes = [];
      for (const node of nodes) codes.push(await node.stop());
      await redis.stop();
      return codes;
    },
  };
}

module.exports = { startRedis, startCluster, redisCommand: command };
