// Chat: the classic private two-person Socket.IO room on namespace /chat. The room id is the
// URL hash (generated when absent). load → peopleinchat | tooMany; login → img, then
// startChat when both seats are taken; msg → receive on the other side; leave on disconnect.
'use strict';
(function () {
  const { el, fill, $, session } = Fanout;
  Fanout.nav('/chat');

  function roomFromHash() {
    const id = decodeURIComponent(location.hash.slice(1));
    return id.length >= 1 && id.length <= 64 && !/[\u0000-\u001f\u007f]/.test(id) ? id : null;
  }
  function randomRoom() {
    const bytes = new Uint8Array(5);
    crypto.getRandomValues(bytes);
    return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
  }

  let room = roomFromHash();
  if (!room) {
    room = randomRoom();
    history.replaceState(null, '', '#' + encodeURIComponent(room));
  }
  $('#room-id').textContent = room;
  $('#share').value = location.href;
  $('#share').addEventListener('focus', (e) => e.target.select());
  $('#new-room').href = '#' + randomRoom();
  window.addEventListener('hashchange', () => location.reload());

  const status = $('#status');
  const loginForm = $('#login-chat');
  const chatError = $('#chat-error');
  const messages = $('#messages');
  let me = null; // { user, img }
  let joined = false;

  const current = session();
  if (current) $('#chat-name').value = current.username.split('@')[0].slice(0, 64);

  function setStatus(...parts) {
    fill(status, ...parts);
  }

  function append(kind, user, img, text) {
    let node;
    if (kind === 'system') {
      node = el('div', { class: 'message system' }, text);
    } else {
      node = el(
        'div',
        { class: 'message ' + kind },
        Fanout.avatar(img, user),
        el('div', {}, el('div', { class: 'who' }, user), el('div', { class: 'bubble' }, text)),
      );
    }
    messages.append(node);
    messages.scrollTop = messages.scrollHeight;
  }

  const socket = Fanout.connect('/chat', false);
  socket.on('connect', () => {
    $('#live').textContent = 'live';
    $('#live').className = 'small ok';
    if (!joined) socket.emit('load', room);
  });
  socket.on('disconnect', (reason) => {
    $('#live').textContent = `offline (${reason})`;
    $('#live').className = 'small muted';
    if (joined) {
      append('system', '', '', 'Connection lost; this chat has ended.');
      $('#msg-form').querySelectorAll('input, button').forEach((n) => (n.disabled = true));
    }
  });

  socket.on('peopleinchat', (data) => {
    if (joined) return;
    if (data && data.number === 1) {
      setStatus(
        Fanout.avatar(data.avatar, data.user),
        ' ',
        el('strong', { id: 'waiting-user' }, String(data.user)),
        ' is waiting in this room. Join the chat:',
      );
    } else {
      setStatus('Nobody is here yet. Start the chat, then share the link:');
    }
    loginForm.classList.remove('hidden');
  });

  socket.on('tooMany', () => {
    loginForm.classList.add('hidden');
    setStatus('This room is full (two people). ', el('a', { href: '#' + randomRoom() }, 'Open a new room'));
  });

  loginForm.addEventListener('submit', (event) => {
    event.preventDefault();
    chatError.textContent = '';
    const user = $('#chat-name').value.trim();
    me = { user, img: null };
    socket.emit('login', { user, avatar: $('#chat-email').value.trim(), id: room });
  });

  socket.on('img', (url) => {
    joined = true;
    me.img = url;
    loginForm.classList.add('hidden');
    setStatus(Fanout.avatar(url, me.user), ' You are in. Waiting for someone to join through the link above…');
  });

  socket.on('startChat', (data) => {
    if (!joined || !data) return;
    const users = Array.isArray(data.users) ? data.users.map(String) : [];
    const avatars = Array.isArray(data.avatars) ? data.avatars : [];
    let other = users.findIndex((u, i) => u !== me.user || avatars[i] !== me.img);
    if (other < 0) other = users.length > 1 ? 1 : 0;
    setStatus('Chat started.');
    fill($('#chat-with'), 'You are chatting with ', el('span', { id: 'peer' }, users[other] || '?'));
    $('#chat-card').classList.remove('hidden');
    $('#msg').focus();
  });

  $('#msg-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = $('#msg');
    const msg = input.value;
    if (!msg.trim()) return;
    socket.emit('msg', { msg });
    append('me', me.user, me.img, msg);
    input.value = '';
  });

  socket.on('receive', (data) => {
    if (!data) return;
    append('them', String(data.user), data.img, String(data.msg));
  });

  socket.on('leave', (data) => {
    append('system', '', '', `${data && data.user ? data.user : 'The other person'} left the room.`);
    $('#msg-form').querySelectorAll('input, button').forEach((n) => (n.disabled = true));
  });

  socket.on('error', (err) => {
    chatError.textContent = (err && err.message) || 'error';
  });
})();
