#!/usr/bin/env node
// Where does a node's memory per idle connection go? Opens N raw WebSockets to a fanout node
// at one protocol stage and prints the node's RSS growth per connection:
//   eio  — Engine.IO handshake only (no Socket.IO CONNECT): the transport layer's cost
//   sio  — Engine.IO + Socket.IO CONNECT to `/` with a token: a full authenticated socket
//   ws   — the plain-WebSocket endpoint /ws, authenticated
// Usage (run each stage against a fresh node; RSS rarely shrinks after connections close):
//   node deploy/bench/memprobe.js PORT NODE_PID N STAGE [TOKEN]
// Needs the `ws` package from tests/js (cd tests/js && npm ci). Loopback only.
'use strict';
const path = require('node:path');
const fs = require('node:fs');
const WebSocket = require(path.join(__dirname, '..', '..', 'tests', 'js', 'node_modules', 'ws'));

const [port, pid, count, stage, token = ''] = process.argv.slice(2);
const n = Number(count);
if (!port || !pid || !n || !['eio', 'sio', 'ws'].includes(stage)) {
  console.error('usage: memprobe.js PORT NODE_PID N eio|sio|ws [TOKEN]');
  process.exit(2);
}
const rss = () => Number(fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)[1]) * 1024;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

(async () => {
  const before = rss();
  let ready = 0;
  let failed = 0;
  for (let i = 0; i < n; i += 1) {
    const url = stage === 'ws'
      ? `ws://127.0.0.1:${port}/ws`
      : `ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket`;
    const ws = new WebSocket(url);
    ws.on('error', () => { failed += 1; });
    ws.on('open', () => {
      if (stage === 'ws') ws.send(JSON.stringify({ type: 'authenticate', callback_id: 1, data: { token } }));
    });
    ws.on('message', (data) => {
      const text = data.toString();
      if (text === '2') ws.send('3'); // Engine.IO ping → pong
      else if (text.startsWith('0{')) {
        if (stage === 'eio') ready += 1;
        else ws.send(`40${JSON.stringify({ token })}`);
      } else if (text.startsWith('40') || text.startsWith('{"callback_id":1')) ready += 1;
    });
    if (i % 200 === 199) await sleep(20);
  }
  const deadline = Date.now() + 60_000;
  while (ready + failed < n && Date.now() < deadline) await sleep(100);
  await sleep(1500);
  const after = rss();
  console.log(`${stage}: ${ready} of ${n} connections ready, ${failed} failed; ` +
    `RSS ${(before / 1048576).toFixed(1)} → ${(after / 1048576).toFixed(1)} MiB, ` +
    `${((after - before) / Math.max(ready, 1) / 1024).toFixed(1)} KB per connection`);
  process.exit(0);
})();
