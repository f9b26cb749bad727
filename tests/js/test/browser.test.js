'use strict';
// The demo pages in a real browser: headless Debian Chromium driven by playwright-core.
// Orders (REST writes + /Order/… topics across two tabs), Chat (two-person room, no HTML
// injection), Stream (term filter, slider, stop/start, post form) and Cluster (node id,
// metrics). Screenshots go to tests/js/artifacts/. Every wait is bounded.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const crypto = require('node:crypto');
const { startNode, api, newUser, uniqueName, sleep } = require('../lib/node');

const CHROMIUM = process.env.FANOUT_CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = path.resolve(__dirname, '..', 'artifacts');
const NODE_ID = `browser-${process.pid}`;
const WAIT = 10_000; // every Playwright action and wait
const TEST_TIMEOUT = 90_000;
const XSS = '<img src=x onerror=alert(1)>';

/** Resolves `promise`, or rejects after `ms` with `what`. */
function within(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

describe('demo pages (headless Chromium)', () => {
  let node;
  let browser;
  const dialogs = [];
  const pageErrors = [];
  const cspViolations = [];

  before(async () => {
    if (!fs.existsSync(CHROMIUM)) {
      throw new Error(
        `${CHROMIUM} is missing: the browser test needs Debian's Chromium. ` +
          'Install it with: sudo apt-get update && sudo apt-get install -y chromium ' +
          '(or point FANOUT_CHROMIUM at a Chromium binary)',
      );
    }
    const { chromium } = require('playwright-core');
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    // The demo's order list is shared: tab B deletes an order tab A created, which the default
    // `owner` policy would refuse (403), so Order is an `authenticated` model here.
    node = await startNode({ env: { FANOUT_NODE_ID: NODE_ID, FANOUT_MODEL_ACL: 'Order=authenticated' } });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu'],
      timeout: 30_000,
    });
  });

  after(async () => {
    if (browser) {
      await within(browser.close(), 15_000, 'browser.close').catch(() => {});
    }
    if (node) await node.stop();
  });

  /** A fresh browser context (its own localStorage = its own user) and page. */
  async function newPage() {
    const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
    context.setDefaultTimeout(WAIT);
    context.setDefaultNavigationTimeout(WAIT);
    // Only the node under test: external images (Gravatar, profile pictures) fail at once.
    await context.route(
      (url) => url.origin !== node.url,
      (route) => route.abort(),
    );
    const page = await context.newPage();
    page.on('dialog', (dialog) => {
      dialogs.push(dialog.message());
      dialog.dismiss().catch(() => {});
    });
    page.on('pageerror', (err) => pageErrors.push(`${page.url()}: ${err.message}`));
    page.on('console', (msg) => {
      if (/Content.Security.Policy/i.test(msg.text())) cspViolations.push(msg.text());
    });
    return page;
  }

  async function screenshot(page, name) {
    await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`) });
  }

  async function expectText(locator, expected) {
    await locator.waitFor({ state: 'visible' });
    const deadline = Date.now() + WAIT;
    for (;;) {
      const text = await locator.textContent();
      if (expected instanceof RegExp ? expected.test(text) : text === expected) return text;
      if (Date.now() > deadline) throw new Error(`expected ${expected}, got ${JSON.stringify(text)}`);
      await sleep(25);
    }
  }

  /** Polls `fn` (async) until it returns truthy; bounded by WAIT. */
  async function eventually(fn, what) {
    const deadline = Date.now() + WAIT;
    for (;;) {
      const value = await fn();
      if (value) return value;
      if (Date.now() > deadline) throw new Error(`timeout after ${WAIT} ms waiting for ${what}`);
      await sleep(25);
    }
  }

  function assertClean() {
    assert.deepEqual(dialogs, [], 'a dialog fired (script injection)');
    assert.deepEqual(pageErrors, [], 'uncaught page errors');
    assert.deepEqual(cspViolations, [], 'Content-Security-Policy violations');
  }

  const orderRow = (page, id) => page.locator(`#orders tr[data-id="${id}"]`);

  let pageA; // signed up through the page
  let pageB; // logged in through the page (user created over REST)
  let userB;

  it('serves the pages and keeps JSON 404s for unknown API routes', { timeout: TEST_TIMEOUT }, async () => {
    const page = await newPage();
    const res = await page.goto(`${node.url}/`);
    assert.equal(res.status(), 200);
    assert.match(res.headers()['content-type'], /^text\/html/);
    assert.ok(res.headers()['content-security-policy']);
    for (const app of ['orders', 'chat', 'stream', 'cluster']) {
      assert.equal(await page.locator(`#link-${app}`).getAttribute('href'), `/${app}`);
    }
    const io = await api(node.url, 'GET', '/static/vendor/socket.io.min.js');
    assert.equal(io.status, 200);
    assert.match(io.headers.get('content-type'), /javascript/);
    assert.match(io.text, /Socket\.IO v4\.8\.1/);
    const missing = await api(node.url, 'GET', '/api/no-such-route');
    assert.equal(missing.status, 404);
    assert.equal(missing.body.error.code, 'not_found');
    await screenshot(page, 'index');
    await page.context().close();
    assertClean();
  });

  it('Orders: sign up / log in through the page; writes show up live in the other tab', { timeout: TEST_TIMEOUT }, async () => {
    // Tab A: sign up through the form.
    pageA = await newPage();
    await pageA.goto(`${node.url}/orders`);
    const nameA = uniqueName('alice');
    await pageA.fill('#login-user', nameA);
    await pageA.fill('#login-password', 'secret123');
    await pageA.fill('#signup-email', `${nameA}@example.com`);
    await pageA.click('#signup-button');
    await expectText(pageA.locator('#signed-in-user'), nameA);
    await expectText(pageA.locator('#live'), /^live/);

    // Tab B: a user created over REST, logged in through the form.
    userB = await newUser(node.url, 'bob');
    pageB = await newPage();
    await pageB.goto(`${node.url}/orders`);
    await pageB.fill('#login-user', userB.username);
    await pageB.fill('#login-password', 'wrong-password');
    await pageB.click('#login-button');
    await expectText(pageB.locator('#auth-status'), /.+/); // refused, shown as text
    await pageB.fill('#login-password', userB.password);
    await pageB.click('#login-button');
    await expectText(pageB.locator('#signed-in-user'), userB.username);
    await expectText(pageB.locator('#live'), /^live/);
    const stored = await pageB.evaluate(() => JSON.parse(localStorage.getItem('fanout.session')));
    assert.equal(typeof stored.token, 'string');
    assert.equal(String(stored.userId), String(userB.userId));

    // Create in A → appears in B.
    await pageA.fill('#order-item', 'Coffee beans');
    await pageA.fill('#order-qty', '3');
    await pageA.selectOption('#order-status', 'new');
    await pageA.click('#order-save');
    const rowB = pageB.locator('#orders tr', { hasText: 'Coffee beans' });
    await rowB.waitFor();
    const id = await rowB.getAttribute('data-id');
    assert.match(id, /^\d+$/);
    assert.equal(await orderRow(pageB, id).locator('.qty').textContent(), '3');
    await pageB.locator(`#orders tr[data-id="${id}"][data-subscribed]`).waitFor();
    await pageA.locator(`#orders tr[data-id="${id}"][data-subscribed]`).waitFor();

    // Update in A (with markup in a field) → B shows the new values as text.
    const decaf = `Decaf <b>bold</b> ${XSS}`;
    await orderRow(pageA, id).locator('button.edit').click();
    await pageA.fill('#order-item', decaf);
    await pageA.selectOption('#order-status', 'paid');
    await pageA.click('#order-save');
    await expectText(orderRow(pageB, id).locator('.item'), decaf);
    await expectText(orderRow(pageB, id).locator('.status'), 'paid');
    assert.equal(await pageB.locator('#orders img, #orders b').count(), 0, 'markup became elements');

    // A write by another client (REST, outside the browser) reaches both tabs.
    const rest = await api(node.url, 'POST', '/api/models/Order', { item: 'Tea', qty: 1, status: 'shipped' }, userB.token);
    assert.equal(rest.status, 201);
    await expectText(orderRow(pageA, rest.body.id).locator('.item'), 'Tea');
    await expectText(orderRow(pageB, rest.body.id).locator('.status'), 'shipped');
    await pageB.locator(`#orders tr[data-id="${rest.body.id}"][data-subscribed]`).waitFor();
    await sleep(1300); // let the row highlight fade for the screenshot
    await screenshot(pageA, 'orders');

    // Delete in B → gone in A; REST update of the other record still arrives.
    await orderRow(pageB, id).locator('button.delete').click();
    await orderRow(pageA, id).waitFor({ state: 'detached' });
    await orderRow(pageB, id).waitFor({ state: 'detached' });
    const put = await api(node.url, 'PUT', `/api/models/Order/${rest.body.id}`, { item: 'Green tea', qty: 2, status: 'paid' }, userB.token);
    assert.equal(put.status, 200);
    await expectText(orderRow(pageA, rest.body.id).locator('.item'), 'Green tea');
    await expectText(orderRow(pageB, rest.body.id).locator('.qty'), '2');
    await expectText(pageA.locator('#log li').first(), new RegExp(`/Order/${rest.body.id}/PUT`));
    assertClean();
  });

  it('Chat: two pages in one room; messages are text, never markup', { timeout: TEST_TIMEOUT }, async () => {
    assert.ok(pageA && pageB, 'the Orders test opened the pages');
    const room = `room-${crypto.randomBytes(4).toString('hex')}`;
    await pageA.goto(`${node.url}/chat#${room}`);
    await expectText(pageA.locator('#room-id'), room);
    await expectText(pageA.locator('#status'), /Nobody is here yet/);
    await pageA.fill('#chat-name', 'Alice');
    await pageA.fill('#chat-email', 'alice@example.com');
    await pageA.click('#chat-join');
    await expectText(pageA.locator('#status'), /Waiting for someone/);

    await pageB.goto(`${node.url}/chat#${room}`);
    await expectText(pageB.locator('#waiting-user'), 'Alice');
    await pageB.fill('#chat-name', 'Bob');
    await pageB.fill('#chat-email', 'bob@example.com');
    await pageB.click('#chat-join');
    await expectText(pageA.locator('#peer'), 'Bob');
    await expectText(pageB.locator('#peer'), 'Alice');

    // A third visitor finds the room full.
    const pageC = await newPage();
    await pageC.goto(`${node.url}/chat#${room}`);
    await expectText(pageC.locator('#status'), /This room is full/);
    await pageC.context().close();

    await pageA.fill('#msg', 'Hello Bob');
    await pageA.click('#send');
    await expectText(pageB.locator('#messages .message.them .bubble').last(), 'Hello Bob');
    await expectText(pageB.locator('#messages .message.them .who').last(), 'Alice');

    await pageB.fill('#msg', XSS);
    await pageB.press('#msg', 'Enter');
    await expectText(pageA.locator('#messages .message.them .bubble').last(), XSS);
    await expectText(pageB.locator('#messages .message.me .bubble').last(), XSS);
    await pageA.fill('#msg', 'Got it: <script>alert(2)</script>');
    await pageA.click('#send');
    await expectText(pageB.locator('#messages .message.them .bubble').last(), 'Got it: <script>alert(2)</script>');
    await sleep(300); // time for any injected onerror / script to fire
    for (const page of [pageA, pageB]) {
      assert.equal(await page.locator('#messages img:not(.avatar), #messages script').count(), 0);
      assert.equal(await page.locator('#messages .bubble *').count(), 0, 'a bubble holds elements');
    }
    await screenshot(pageA, 'chat');

    // Bob leaves (navigates away) → Alice is told.
    await pageB.goto(`${node.url}/`);
    await expectText(pageA.locator('#messages .message.system').last(), 'Bob left the room.');
    assert.ok(await pageA.locator('#msg').isDisabled());
    assertClean();
  });

  it('Stream: term filter, slider limit, stop/start, post form', { timeout: TEST_TIMEOUT }, async () => {
    assert.ok(pageA, 'the Orders test opened page A (signed in)');
    const item = (text) => ({ name: 'Test', screen_name: 'test', text, user_profile_image: 'https://example.com/p.png' });
    const post = async (text) => {
      const res = await api(node.url, 'POST', '/api/stream', item(text), userB.token);
      assert.equal(res.status, 202, res.text);
    };
    const texts = () => pageA.locator('#items .feed-item .text').allTextContents();

    await pageA.goto(`${node.url}/stream`);
    await expectText(pageA.locator('#live'), 'live');
    await pageA.fill('#term', 'RuSt');
    await pageA.click('#term-set');
    await expectText(pageA.locator('#term-status'), 'Listening for “RuSt”');

    for (let i = 1; i <= 5; i += 1) {
      await post(`rust item ${i}`);
      await post(`python item ${i}`);
    }
    await post(`markup ${XSS} is Rust too`);
    // …and one through the page's own form.
    await pageA.locator('#post-form').waitFor();
    await pageA.fill('#post-text', 'posted from the page about RUST');
    await pageA.click('#post-send');
    await expectText(pageA.locator('#post-status'), 'posted');

    await eventually(async () => (await texts()).length === 7, '7 matching items');
    const shown = await texts();
    assert.ok(shown.every((t) => /rust/i.test(t)), JSON.stringify(shown));
    assert.equal(shown[0], 'posted from the page about RUST', 'newest first');
    assert.ok(shown.includes(`markup ${XSS} is Rust too`));
    assert.equal(await pageA.locator('#items img:not(.avatar)').count(), 0);

    // The slider limits how many are shown (newest first).
    await pageA.fill('#limit', '3');
    await expectText(pageA.locator('#limit-value'), '3');
    await eventually(async () => (await texts()).length === 3, '3 items shown');
    assert.deepEqual(await texts(), ['posted from the page about RUST', `markup ${XSS} is Rust too`, 'rust item 5']);
    await expectText(pageA.locator('#count'), '3');
    await screenshot(pageA, 'stream');

    // Stop: nothing new arrives; Start: items flow again.
    await pageA.fill('#limit', '50');
    await pageA.click('#stop');
    await expectText(pageA.locator('#term-status'), /Paused/);
    await sleep(200);
    await post('rust while stopped');
    await sleep(500);
    assert.ok(!(await texts()).includes('rust while stopped'), 'a stopped stream received an item');
    await pageA.click('#start');
    await expectText(pageA.locator('#term-status'), /Listening/);
    await sleep(200);
    await post('rust after start');
    await eventually(async () => (await texts())[0] === 'rust after start', 'item after start');
    assert.equal((await texts()).length, 8);
    assertClean();
  });

  it('Cluster: shows the node id (metrics and whoami) and live metrics', { timeout: TEST_TIMEOUT }, async () => {
    assert.ok(pageA, 'the Orders test opened page A (signed in)');
    await pageA.goto(`${node.url}/cluster`);
    await expectText(pageA.locator('#metrics-node'), NODE_ID);
    await expectText(pageA.locator('#whoami-node'), NODE_ID);
    const detail = pageA.locator('#whoami-detail');
    await eventually(async () => (await detail.getAttribute('data-transport')) === 'websocket', 'websocket transport');
    // this page's own socket on namespace "/" is counted
    await eventually(
      async () => Number(await pageA.locator('#namespaces tr[data-namespace="/"] .connected').textContent()) >= 1,
      'a connected socket on "/"',
    );
    await expectText(pageA.locator('#publishes'), /events/);
    await expectText(pageA.locator('#latency-count'), /mean of [1-9]\d* deliveries/);
    await screenshot(pageA, 'cluster');
    assertClean();
  });
});
