'use strict';
// Clients of fanout's plain-WebSocket endpoint /ws, and raw clients that stop reading (slow
// consumers) for both transports.

const WebSocket = require('ws');

/** A /ws client: request(type, data) → reply; events[] collects pushes. */
async function wsClient(base, { maxPayload } = {}) {
  const ws = new WebSocket(`${base.replace('http', 'ws')}/ws`, { maxPayload });
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  const pending = new Map();
  const events = [];
  const orphans = [];
  let next = 1;
  ws.on('message', (raw) => {
    const msg = JSON.parse(raw.toString());
    if (msg.type === 'event') events.push(msg);
    else if (pending.has(msg.callback_id)) {
      pending.get(msg.callback_id)(msg);
      pending.delete(msg.callback_id);
    } else orphans.push(msg);
  });
  const closed = new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  return {
    ws,
    events,
    orphans,
    closed,
    request(type, data, ms = 3000) {
      const id = next++;
      ws.send(JSON.stringify({ type, callback_id: id, data }));
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no reply to ${type} within ${ms} ms`)), ms);
        pending.set(id, (msg) => {
          clearTimeout(timer);
          resolve(msg);
        });
      });
    },
    sendRaw(text) {
      ws.send(text);
    },
    close() {
      ws.close();
    },
  };
}

/** Resolves with the next text message of `ws` that satisfies `pred` (reject after `ms`). */
function nextMessage(ws, pred, ms = 3000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      ws.off('message', onMessage);
      reject(new Error(`no matching message within ${ms} ms`));
    }, ms);
    function onMessage(raw) {
      const text = raw.toString();
      if (pred(text)) {
        clearTimeout(timer);
        ws.off('message', onMessage);
        resolve(text);
      }
    }
    ws.on('message', onMessage);
  });
}

/**
 * A raw Engine.IO/Socket.IO client over WebSocket: handshake, CONNECT to `/` with `token`,
 * `subscribe` to `topic` (acked), then it stops reading its TCP socket altogether — a phone
 * in a tunnel. Returns { ws, resume() }.
 */
async function stalledSocketIo(base, token, topic) {
  const ws = new WebSocket(`${base.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket`);
  const opened = nextMessage(ws, (t) => t.startsWith('0{'));
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  await opened;
  const connected = nextMessage(ws, (t) => t.startsWith('40'));
  ws.send(`40${JSON.stringify({ token })}`);
  await connected;
  const acked = nextMessage(ws, (t) => t.startsWith('430'));
  ws.send(`420${JSON.stringify(['subscribe', topic])}`);
  const ack = JSON.parse((await acked).slice(3))[0];
  if (!ack || ack.ok !== true) throw new Error(`stalled subscribe failed: ${JSON.stringify(ack)}`);
  ws._socket.pause();
  return { ws, resume: () => ws._socket.resume() };
}

/** The same with a /ws client. */
async function stalledWs(base, token, topic) {
  const client = await wsClient(base);
  const auth = await client.request('authenticate', { token });
  if (!auth.result) throw new Error(`stalled /ws authenticate failed: ${JSON.stringify(auth)}`);
  const sub = await client.request('subscribe', { topic });
  if (!sub.result) throw new Error(`stalled /ws subscribe failed: ${JSON.stringify(sub)}`);
  client.ws._socket.pause();
  return client;
}

module.exports = { wsClient, stalledSocketIo, stalledWs };
