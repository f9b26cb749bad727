// Orders: a live LoopBack-style list. Writes go through REST (/api/models/Order); every open
// tab stays current through the model topics: /Order/POST for new orders, and
// /Order/<id>/PUT + /Order/<id>/DELETE for each listed order.
'use strict';
(function () {
  const { el, fill, $, api, session } = Fanout;
  const MODEL = 'Order';
  Fanout.nav('/orders');
  Fanout.authPanel($('#auth'));

  const records = new Map(); // id (string) → record
  const trs = new Map(); // id → <tr>
  const eventsSeen = new Map(); // id → count of model events received (GET reconciliation)
  let subscribed = new Set(); // ids subscribed (or subscribing) on the current socket session
  let acked = new Set(); // ids whose PUT/DELETE subscriptions are acknowledged
  let socket = null;
  let editing = null;

  const form = $('#order-form');
  const item = $('#order-item');
  const qty = $('#order-qty');
  const status = $('#order-status');
  const error = $('#order-error');

  function setLive(on, why) {
    const live = $('#live');
    live.textContent = on ? `live · ${socket.io.engine.transport.name}` : `offline${why ? ' (' + why + ')' : ''}`;
    live.className = 'small ' + (on ? 'ok' : 'muted');
  }

  function log(topic, data) {
    const text = JSON.stringify(data);
    const line = el(
      'li',
      {},
      `${Fanout.clock()} ${topic} ${text.length > 160 ? text.slice(0, 160) + '…' : text}`,
    );
    const list = $('#log');
    list.prepend(line);
    while (list.children.length > 12) list.lastElementChild.remove();
  }

  function show(value) {
    if (value === undefined || value === null) return '';
    return typeof value === 'object' ? JSON.stringify(value) : String(value);
  }

  function row(record) {
    const id = String(record.id);
    return el(
      'tr',
      { dataset: { id }, class: 'flash' },
      el('td', { class: 'id' }, id),
      el('td', { class: 'item' }, show(record.item)),
      el('td', { class: 'qty' }, show(record.qty)),
      el('td', { class: 'status' }, show(record.status)),
      el('td', { class: 'muted small' }, Fanout.clock()),
      el(
        'td',
        {},
        el('button', { class: 'secondary edit', type: 'button', onclick: () => edit(id) }, 'Edit'),
        ' ',
        el('button', { class: 'danger delete', type: 'button', onclick: () => remove(id) }, 'Delete'),
      ),
    );
  }

  function upsert(record) {
    if (!record || record.id === undefined || record.id === null) return;
    const id = String(record.id);
    records.set(id, record);
    const tr = row(record);
    if (acked.has(id)) tr.dataset.subscribed = '1';
    const old = trs.get(id);
    if (old) {
      old.replaceWith(tr);
    } else {
      const tbody = $('#orders');
      const after = [...trs.keys()].map(Number).filter((k) => k > Number(id)).sort((a, b) => a - b)[0];
      tbody.insertBefore(tr, after === undefined ? null : trs.get(String(after)));
    }
    trs.set(id, tr);
    $('#empty').classList.toggle('hidden', trs.size > 0);
    watch(id);
  }

  function drop(id) {
    records.delete(id);
    const tr = trs.get(id);
    if (tr) tr.remove();
    trs.delete(id);
    $('#empty').classList.toggle('hidden', trs.size > 0);
    if (editing === id) cancelEdit();
    if (socket && subscribed.has(id)) {
      subscribed.delete(id);
      acked.delete(id);
      for (const method of ['PUT', 'DELETE']) {
        socket.emit('unsubscribe', { collectionName: MODEL, method, modelId: id });
      }
    }
  }

  async function subscribe(arg) {
    const ack = await socket.timeout(5000).emitWithAck('subscribe', arg);
    if (!ack || ack.ok !== true) throw new Error('subscribe refused: ' + JSON.stringify(ack));
    return ack.topic;
  }

  /** Subscribes to /Order/<id>/PUT and /DELETE, then re-reads the record (events may have
   *  been missed before the subscriptions existed). */
  async function watch(id) {
    if (!socket || !socket.connected || subscribed.has(id)) return;
    subscribed.add(id);
    const current = socket;
    try {
      await Promise.all(['PUT', 'DELETE'].map((method) => subscribe({ collectionName: MODEL, method, modelId: id })));
      if (current !== socket) return;
      const seen = eventsSeen.get(id) || 0;
      let fresh = null;
      try {
        fresh = await api('GET', `/api/models/${MODEL}/${encodeURIComponent(id)}`);
      } catch (err) {
        if (err.status !== 404) throw err;
      }
      if ((eventsSeen.get(id) || 0) === seen) {
        if (fresh) upsert(fresh);
        else drop(id);
      }
      acked.add(id);
      const tr = trs.get(id);
      if (tr) tr.dataset.subscribed = '1';
    } catch (err) {
      if (current === socket) subscribed.delete(id);
      error.textContent = err.message;
    }
  }

  function onEvent(topic, data) {
    let m;
    if (topic === `/${MODEL}/POST`) {
      log(topic, data);
      if (data && data.id !== undefined) eventsSeen.set(String(data.id), (eventsSeen.get(String(data.id)) || 0) + 1);
      upsert(data);
    } else if ((m = /^\/Order\/([^/]+)\/(PUT|DELETE)$/.exec(topic))) {
      log(topic, data);
      const id = m[1];
      eventsSeen.set(id, (eventsSeen.get(id) || 0) + 1);
      if (m[2] === 'PUT') upsert({ ...data, id: data && data.id !== undefined ? data.id : id });
      else drop(id);
    }
  }

  async function onConnect() {
    setLive(true);
    subscribed = new Set();
    acked = new Set();
    error.textContent = '';
    try {
      await subscribe(`/${MODEL}/POST`);
      const list = await api('GET', `/api/models/${MODEL}?limit=1000`);
      const ids = new Set(list.map((r) => String(r.id)));
      for (const id of [...trs.keys()]) if (!ids.has(id)) drop(id);
      for (const record of list) upsert(record);
    } catch (err) {
      error.textContent = err.message;
    }
  }

  function start() {
    stop();
    if (!session()) return;
    $('#app').classList.remove('hidden');
    socket = Fanout.connect('/', true);
    socket.on('connect', onConnect);
    socket.on('disconnect', (reason) => setLive(false, reason));
    socket.on('connect_error', (err) => {
      setLive(false, err.message);
      if (err.message === 'unauthorized') Fanout.forget();
    });
    socket.onAny(onEvent);
  }

  function stop() {
    if (socket) {
      socket.removeAllListeners();
      socket.offAny();
      socket.close();
      socket = null;
    }
    subscribed = new Set();
    acked = new Set();
    for (const id of [...trs.keys()]) drop(id);
    $('#app').classList.add('hidden');
    setLive(false);
  }

  function edit(id) {
    const record = records.get(id);
    if (!record) return;
    editing = id;
    item.value = show(record.item);
    qty.value = Number(record.qty) > 0 ? Number(record.qty) : 1;
    status.value = ['new', 'paid', 'shipped'].includes(record.status) ? record.status : 'new';
    $('#form-title').textContent = `Edit order #${id}`;
    $('#order-save').textContent = 'Save';
    $('#order-cancel').classList.remove('hidden');
    item.focus();
  }

  function cancelEdit() {
    editing = null;
    form.reset();
    $('#form-title').textContent = 'New order';
    $('#order-save').textContent = 'Create';
    $('#order-cancel').classList.add('hidden');
  }

  async function remove(id) {
    error.textContent = '';
    try {
      await api('DELETE', `/api/models/${MODEL}/${encodeURIComponent(id)}`);
      drop(id);
    } catch (err) {
      error.textContent = err.message;
    }
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    error.textContent = '';
    const body = { item: item.value.trim(), qty: Number(qty.value), status: status.value };
    try {
      if (editing) {
        upsert(await api('PUT', `/api/models/${MODEL}/${encodeURIComponent(editing)}`, body));
      } else {
        upsert(await api('POST', `/api/models/${MODEL}`, body));
      }
      cancelEdit();
    } catch (err) {
      error.textContent = err.message;
    }
  });
  $('#order-cancel').addEventListener('click', cancelEdit);

  window.addEventListener('fanout:session', start);
  window.addEventListener('storage', (event) => {
    if (event.key === 'fanout.session') start();
  });
  fill($('#log'));
  start();
})();
