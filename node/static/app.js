// fanout demo pages: shared helper (window.Fanout). Plain browser JavaScript, no build step.
// Every piece of user or server data reaches the DOM through textContent or attributes set
// with createElement (el() below) — never parsed as HTML.
(function () {
  'use strict';

  const SESSION_KEY = 'fanout.session';

  /**
   * el('div', { class: 'x', onclick: fn }, 'text', childNode, ...) → an element.
   * Strings become text nodes; attributes go through setAttribute / properties.
   */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith('on') && typeof value === 'function') {
        node.addEventListener(key.slice(2), value);
      } else if (key === 'class') {
        node.className = value;
      } else if (key === 'dataset') {
        Object.assign(node.dataset, value);
      } else if (key === 'value' || key === 'checked' || key === 'disabled') {
        node[key] = value;
      } else {
        node.setAttribute(key, value === true ? '' : String(value));
      }
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** Replaces the children of `node` with `children` (strings become text). */
  function fill(node, ...children) {
    node.replaceChildren();
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const $ = (selector, root) => (root || document).querySelector(selector);

  /** The stored session { token, userId, username } or null. */
  function session() {
    try {
      const value = JSON.parse(localStorage.getItem(SESSION_KEY) || 'null');
      return value && typeof value.token === 'string' ? value : null;
    } catch {
      return null;
    }
  }

  function saveSession(value) {
    if (value) localStorage.setItem(SESSION_KEY, JSON.stringify(value));
    else localStorage.removeItem(SESSION_KEY);
    window.dispatchEvent(new CustomEvent('fanout:session', { detail: value }));
  }

  /** An error from the REST API: status + { code, message }. */
  class ApiError extends Error {
    constructor(status, body) {
      const err = (body && body.error) || {};
      super(err.message || `HTTP ${status}`);
      this.status = status;
      this.code = err.code || 'http_' + status;
    }
  }

  /**
   * fetch wrapper: JSON in and out, the stored token as `Authorization`, 10 s timeout.
   * Resolves with the parsed body; rejects with ApiError. A 401 forgets the session.
   */
  async function api(method, path, body) {
    const headers = {};
    const current = session();
    if (current) headers.authorization = current.token;
    const init = { method, headers, signal: AbortSignal.timeout(10000) };
    if (body !== undefined) {
      headers['content-type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    const text = await res.text();
    let parsed = null;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      parsed = text;
    }
    if (!res.ok) {
      if (res.status === 401 && current) saveSession(null);
      throw new ApiError(res.status, parsed);
    }
    return parsed;
  }

  async function login(identity, password) {
    const body = { password };
    if (identity.includes('@')) body.email = identity;
    else body.username = identity;
    const token = await api('POST', '/api/users/login', body);
    saveSession({ token: token.id, userId: token.userId, username: identity });
  }

  async function signup(username, email, password) {
    await api('POST', '/api/users', { username, email, password });
    await login(username, password);
  }

  async function logout() {
    try {
      if (session()) await api('POST', '/api/users/logout');
    } catch {
      /* the token may be gone already */
    }
    saveSession(null);
  }

  /**
   * The sign-in panel, rendered into `container`: log in or sign up, or "signed in as …"
   * with a sign-out button. Re-renders on every session change.
   */
  function authPanel(container) {
    function render() {
      const current = session();
      if (current) {
        fill(
          container,
          el(
            'div',
            { class: 'row' },
            'Signed in as ',
            el('strong', { id: 'signed-in-user' }, current.username),
            el('span', { class: 'muted small' }, `(user ${current.userId})`),
            el('button', { class: 'secondary', id: 'logout', onclick: () => logout() }, 'Sign out'),
          ),
        );
        return;
      }
      const status = el('span', { class: 'bad small', id: 'auth-status', role: 'status' });
      const identity = el('input', {
        id: 'login-user',
        name: 'username',
        placeholder: 'username or e-mail',
        autocomplete: 'username',
        required: true,
      });
      const password = el('input', {
        id: 'login-password',
        name: 'password',
        type: 'password',
        placeholder: 'password (6+)',
        autocomplete: 'current-password',
        required: true,
      });
      const email = el('input', {
        id: 'signup-email',
        name: 'email',
        type: 'email',
        placeholder: 'e-mail (sign up only)',
        autocomplete: 'email',
      });
      const run = (action) => async (event) => {
        event.preventDefault();
        status.textContent = '';
        try {
          await action();
        } catch (err) {
          status.textContent = err.message;
        }
      };
      const form = el(
        'form',
        { class: 'row', id: 'login-form', onsubmit: run(() => login(identity.value.trim(), password.value)) },
        identity,
        password,
        el('button', { type: 'submit', id: 'login-button' }, 'Log in'),
        email,
        el(
          'button',
          {
            type: 'button',
            class: 'secondary',
            id: 'signup-button',
            onclick: run(() => signup(identity.value.trim(), email.value.trim(), password.value)),
          },
          'Sign up',
        ),
        status,
      );
      fill(container, form);
    }
    window.addEventListener('fanout:session', render);
    window.addEventListener('storage', (event) => {
      if (event.key === SESSION_KEY) render();
    });
    render();
  }

  /**
   * A socket.io-client socket on `namespace` of this origin; the stored token goes in the
   * handshake `auth` when `withToken`.
   */
  function connect(namespace, withToken) {
    const opts = { transports: ['websocket', 'polling'], reconnectionDelayMax: 5000 };
    const current = session();
    if (withToken && current) opts.auth = { token: current.token };
    return window.io(namespace, opts);
  }

  /** The top bar: brand, links to every app (current one marked) and the signed-in user. */
  function nav(current) {
    const links = [
      ['/', 'Home'],
      ['/orders', 'Orders'],
      ['/chat', 'Chat'],
      ['/stream', 'Stream'],
      ['/cluster', 'Cluster'],
    ];
    const who = el('span', { class: 'who' });
    const renderWho = () => {
      const s = session();
      who.textContent = s ? `● ${s.username}` : 'not signed in';
    };
    window.addEventListener('fanout:session', renderWho);
    renderWho();
    const bar = el(
      'header',
      { class: 'top' },
      el('span', { class: 'brand' }, 'fanout'),
      links.map(([href, label]) => el('a', { href, class: href === current ? 'current' : null }, label)),
      who,
    );
    document.body.prepend(bar);
  }

  /** "HH:MM:SS" of now. */
  function clock() {
    return new Date().toTimeString().slice(0, 8);
  }

  /** `url` if it is an absolute http(s) URL, else null (for <img src> from user data). */
  function safeUrl(url) {
    try {
      const parsed = new URL(String(url));
      return parsed.protocol === 'https:' || parsed.protocol === 'http:' ? parsed.href : null;
    } catch {
      return null;
    }
  }

  /** An avatar <img> (hidden when the URL is unusable or fails to load). */
  function avatar(url, alt) {
    const src = safeUrl(url);
    const img = el('img', { class: 'avatar', alt: alt || '', referrerpolicy: 'no-referrer', loading: 'lazy' });
    img.addEventListener('error', () => {
      img.style.visibility = 'hidden';
    });
    if (src) img.src = src;
    else img.style.visibility = 'hidden';
    return img;
  }

  /** Forgets the stored session (the token was refused). */
  function forget() {
    saveSession(null);
  }

  window.Fanout = {
    el, fill, $, session, api, login, signup, logout, forget, authPanel, connect, nav, clock, safeUrl, avatar, ApiError,
  };
})();
