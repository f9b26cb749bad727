'use strict';
// Runs deploy/check: docker-compose.yml parses and its mounts exist, the Dockerfile keeps its
// contract, haproxy -c / promtool accept the configs, and the Grafana dashboard only queries
// metrics a live fanout-node exports. No Docker engine needed.
// Needs: apt-get install -y docker-compose haproxy prometheus redis-server.

const { it } = require('node:test');
const assert = require('node:assert/strict');
const { execFile } = require('node:child_process');
const path = require('node:path');
const { BIN, REPO } = require('../lib/node');

it('deploy/check passes', async () => {
  const { code, stdout, stderr } = await new Promise((resolve) => {
    execFile(
      path.join(REPO, 'deploy', 'check'),
      [],
      { env: { ...process.env, FANOUT_NODE_BIN: BIN }, timeout: 120_000, killSignal: 'SIGKILL' },
      (err, out, errOut) => resolve({ code: err ? err.code : 0, stdout: out, stderr: errOut }),
    );
  });
  assert.equal(code, 0, `deploy/check failed:\n${stdout}\n${stderr}`);
  assert.match(stdout, /deploy\/check: OK/);
});
