// Cluster: which node serves you (whoami over Socket.IO namespace /) and this node's live
// metrics (GET /metrics every 2 s, a few fanout_* series parsed from the Prometheus text).
'use strict';
(function () {
  const { el, fill, $, session } = Fanout;
  const POLL_MS = 2000;
  Fanout.nav('/cluster');
  Fanout.authPanel($('#auth'));

  /** Prometheus text → [{ name, labels, value }] (comments and malformed lines skipped). */
  function parseMetrics(text) {
    const samples = [];
    const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
    const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    for (const raw of text.split('\n')) {
      if (!raw || raw.startsWith('#')) continue;
      const m = line.exec(raw);
      if (!m) continue;
      const labels = {};
      for (const l of (m[2] || '').matchAll(label)) {
        labels[l[1]] = l[2].replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\');
      }
      samples.push({ name: m[1], labels, value: Number(m[3]) });
    }
    return samples;
  }

  const pick = (samples, name) => samples.filter((s) => s.name === name);
  const sum = (list) => list.reduce((acc, s) => acc + s.value, 0);
  const byLabel = (list, key) => {
    const out = new Map();
    for (const s of list) out.set(s.labels[key] || '', (out.get(s.labels[key] || '') || 0) + s.value);
    return out;
  };
  const fmt = (n) => (Number.isFinite(n) ? (Number.isInteger(n) ? String(n) : n.toFixed(1)) : '—');

  let previous = null; // { at, received: Map, sent: Map }

  function rate(now, before, key, seconds) {
    if (!before || !seconds) return '—';
    return fmt(Math.max(0, ((now.get(key) || 0) - (before.get(key) || 0)) / seconds));
  }

  function render(samples) {
    const info = pick(samples, 'fanout_build_info')[0];
    $('#metrics-node').textContent = info ? info.labels.node || '?' : '?';
    $('#metrics-version').textContent = info ? `fanout ${info.labels.version || ''}` : '';

    const connected = byLabel(pick(samples, 'fanout_sockets_connected'), 'namespace');
    const received = byLabel(pick(samples, 'fanout_events_received_total'), 'namespace');
    const sent = byLabel(pick(samples, 'fanout_events_sent_total'), 'namespace');
    const at = Date.now();
    const seconds = previous ? (at - previous.at) / 1000 : 0;
    const namespaces = [...new Set(['/', '/chat', '/stream', ...connected.keys(), ...received.keys(), ...sent.keys()])];
    fill(
      $('#namespaces'),
      namespaces.map((ns) =>
        el(
          'tr',
          { dataset: { namespace: ns } },
          el('td', {}, el('code', {}, ns)),
          el('td', { class: 'connected' }, fmt(connected.get(ns) || 0)),
          el('td', {}, fmt(received.get(ns) || 0)),
          el('td', {}, rate(received, previous && previous.received, ns, seconds)),
          el('td', {}, fmt(sent.get(ns) || 0)),
          el('td', {}, rate(sent, previous && previous.sent, ns, seconds)),
        ),
      ),
    );
    previous = { at, received, sent };

    const count = sum(pick(samples, 'fanout_delivery_latency_seconds_count'));
    const total = sum(pick(samples, 'fanout_delivery_latency_seconds_sum'));
    $('#latency-mean').textContent = count ? `${((total / count) * 1000).toFixed(2)} ms` : '—';
    $('#latency-count').textContent = `mean of ${count} deliveries`;

    const published = byLabel(pick(samples, 'fanout_topic_messages_published_total'), 'source');
    fill(
      $('#publishes'),
      published.size
        ? [...published].map(([source, n]) => el('tr', {}, el('td', {}, source), el('td', {}, fmt(n))))
        : el('tr', {}, el('td', { class: 'muted' }, 'none yet')),
    );
    const other = [
      ['topic messages delivered', sum(pick(samples, 'fanout_topic_messages_delivered_total'))],
      ['TCP connections', sum(pick(samples, 'fanout_tcp_connections'))],
      ['auth failures', sum(pick(samples, 'fanout_auth_failures_total'))],
      ['messages dropped', sum(pick(samples, 'fanout_messages_dropped_total'))],
    ];
    fill($('#other'), other.map(([k, v]) => el('tr', {}, el('td', {}, k), el('td', {}, fmt(v)))));
    $('#updated').textContent = `updated ${Fanout.clock()}`;
  }

  let timer = null;
  async function poll() {
    try {
      const res = await fetch('/metrics', { signal: AbortSignal.timeout(5000), cache: 'no-store' });
      if (!res.ok) throw new Error(`GET /metrics: HTTP ${res.status}`);
      render(parseMetrics(await res.text()));
      $('#metrics-error').textContent = '';
    } catch (err) {
      $('#metrics-error').textContent = err.message;
    } finally {
      timer = setTimeout(poll, POLL_MS);
    }
  }

  let socket = null;
  function connect() {
    if (socket) {
      socket.removeAllListeners();
      socket.close();
      socket = null;
    }
    const detail = $('#whoami-detail');
    if (!session()) {
      $('#whoami-node').textContent = '—';
      detail.textContent = 'sign in to call whoami';
      return;
    }
    socket = Fanout.connect('/', true);
    socket.on('connect', async () => {
      try {
        const reply = await socket.timeout(5000).emitWithAck('whoami');
        if (!reply || !reply.result) throw new Error(JSON.stringify(reply && reply.error));
        $('#whoami-node').textContent = String(reply.result.node);
        detail.textContent = `user ${reply.result.userId} · ${socket.io.engine.transport.name} · socket ${socket.id}`;
        detail.dataset.transport = socket.io.engine.transport.name;
      } catch (err) {
        detail.textContent = `whoami failed: ${err.message}`;
      }
    });
    socket.on('connect_error', (err) => {
      $('#whoami-node').textContent = '—';
      detail.textContent = `not connected: ${err.message}`;
      if (err.message === 'unauthorized') Fanout.forget();
    });
    socket.on('disconnect', (reason) => {
      detail.textContent = `disconnected (${reason})`;
    });
  }
  $('#reconnect').addEventListener('click', connect);
  window.addEventListener('fanout:session', connect);

  connect();
  poll();
  window.addEventListener('pagehide', () => clearTimeout(timer));
})();
