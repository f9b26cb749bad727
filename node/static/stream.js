// Stream: namespace /stream. updateTerm → updatedTerm, then `tweets` for every item whose
// text contains the term (case-insensitive); stopStream / startStream pause and resume.
// The post form sends items through POST /api/stream (needs a token).
'use strict';
(function () {
  const { el, fill, $, api, session } = Fanout;
  const KEEP = 50; // items kept in memory; the slider shows the newest N of them
  Fanout.nav('/stream');
  Fanout.authPanel($('#auth'));

  const items = []; // newest first
  let term = null;
  let paused = false;
  const termStatus = $('#term-status');
  const streamError = $('#stream-error');
  const limit = $('#limit');

  function render() {
    const n = Number(limit.value);
    $('#limit-value').textContent = String(n);
    const shown = items.slice(0, n).map((item) =>
      el(
        'div',
        { class: 'feed-item' },
        Fanout.avatar(item.user_profile_image, item.name),
        el(
          'div',
          {},
          el('div', {}, el('strong', {}, String(item.name || '')), ' ', el('span', { class: 'muted small' }, item.screen_name ? '@' + item.screen_name : '')),
          el('div', { class: 'text' }, String(item.text)),
          el('div', { class: 'muted small' }, item.at),
        ),
      ),
    );
    fill($('#items'), shown);
    $('#count').textContent = String(shown.length);
  }

  function showTermStatus() {
    if (term === null) termStatus.textContent = 'No term yet.';
    else termStatus.textContent = `${paused ? 'Paused' : 'Listening'} for “${term}”`;
    termStatus.className = 'small ' + (term !== null && !paused ? 'ok' : 'muted');
  }

  const socket = Fanout.connect('/stream', false);
  socket.on('connect', () => {
    $('#live').textContent = 'live';
    $('#live').className = 'small ok';
    // a new session has no filter: restore it
    if (term !== null) socket.emit('updateTerm', term);
    if (paused) socket.emit('stopStream');
  });
  socket.on('disconnect', (reason) => {
    $('#live').textContent = `offline (${reason})`;
    $('#live').className = 'small muted';
  });
  socket.on('updatedTerm', (value) => {
    term = String(value);
    showTermStatus();
  });
  socket.on('tweets', (item) => {
    if (!item || typeof item.text !== 'string') return;
    items.unshift({ ...item, at: Fanout.clock() });
    if (items.length > KEEP) items.length = KEEP;
    render();
  });
  socket.on('error', (err) => {
    streamError.textContent = (err && err.message) || 'error';
  });

  $('#term-form').addEventListener('submit', (event) => {
    event.preventDefault();
    streamError.textContent = '';
    const value = $('#term').value.trim();
    if (!value) return;
    if (value !== term) {
      items.length = 0;
      render();
    }
    socket.emit('updateTerm', value);
  });
  $('#stop').addEventListener('click', () => {
    paused = true;
    socket.emit('stopStream');
    showTermStatus();
  });
  $('#start').addEventListener('click', () => {
    paused = false;
    socket.emit('startStream');
    showTermStatus();
  });
  $('#clear').addEventListener('click', () => {
    items.length = 0;
    render();
  });
  limit.addEventListener('input', render);

  const postForm = $('#post-form');
  function showPostForm() {
    const current = session();
    postForm.classList.toggle('hidden', !current);
    if (current && !$('#post-name').value) {
      $('#post-name').value = current.username;
      $('#post-screen-name').value = current.username.split('@')[0];
    }
  }
  window.addEventListener('fanout:session', showPostForm);
  showPostForm();
  postForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const postStatus = $('#post-status');
    postStatus.textContent = '';
    const body = {
      name: $('#post-name').value.trim(),
      screen_name: $('#post-screen-name').value.trim(),
      text: $('#post-text').value,
      user_profile_image: $('#post-image').value.trim(),
    };
    try {
      await api('POST', '/api/stream', body);
      postStatus.textContent = 'posted';
      postStatus.className = 'small ok';
      $('#post-text').value = '';
    } catch (err) {
      postStatus.textContent = err.message;
      postStatus.className = 'small bad';
    }
  });
  render();
  showTermStatus();
})();
