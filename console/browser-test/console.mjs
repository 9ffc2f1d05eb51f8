// Drives the outbox-relay web console in Debian's headless chromium (Playwright, playwright-core
// only: no downloaded browser). Run by outbox/sidecar/tests/console.rs, which starts the real
// relay, broker-lite and an idempotent consumer and passes what to look for in the environment:
//
//   CONSOLE_URL   http://127.0.0.1:<port>      the relay's HTTP listener
//   CONSOLE_TOKEN the console token (console.token)
//   FAILED_ID     a message in the failure table (topic missing on the broker when it was sent)
//   FAILED_KEY    its key, to filter by
//   TRACED_ID     a message relayed, stored and handled by the idempotent consumer
//   DEAD_ID       a message the consumer rejected once: in group billing's dead letters
//   PURGE_ERROR   error text of the failures to purge (all matching), one of them
//   TRACED_KEY    the key of TRACED_ID, to trace by key
//   BULK_TOPIC    a topic with BULK_SIZE failures (more than one chunk), purged with progress
//   SHOTS         directory for the screenshots
//   CHROMIUM      the browser (default /usr/bin/chromium)
//
// Prints one line per step and, at the end, `RESULT {"ok":true,"screenshots":[...]}`; any failed
// expectation exits with status 1 and says which step and what the page showed.

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const env = (name) => {
  const value = process.env[name];
  if (!value) {
    console.error(`missing environment variable ${name}`);
    process.exit(2);
  }
  return value;
};
const base = env('CONSOLE_URL');
const token = env('CONSOLE_TOKEN');
const failedId = env('FAILED_ID');
const failedKey = env('FAILED_KEY');
const tracedId = env('TRACED_ID');
const deadId = env('DEAD_ID');
const purgeError = env('PURGE_ERROR');
const tracedKey = env('TRACED_KEY');
const bulkTopic = env('BULK_TOPIC');
const bulkSize = Number(env('BULK_SIZE'));
const shots = env('SHOTS');
mkdirSync(shots, { recursive: true });

const screenshots = [];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu'],
});

function fail(step, detail) {
  throw new Error(`${step}: ${detail}`);
}

async function shot(page, name) {
  const path = join(shots, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  screenshots.push(path);
  console.log(`screenshot ${path}`);
}

async function text(page, selector) {
  return (await page.locator(selector).first().innerText()).trim();
}

// Reloads `url` until `check(page)` is true, at most `tries` times: the relay works on its own
// schedule, so the page is polled with a bound instead of waited for with a timer.
async function until(page, url, check, what, tries = 300) {
  for (let i = 0; i < tries; i++) {
    await page.goto(url);
    if (await check(page)) return;
    await page.waitForTimeout(200);
  }
  fail(what, `not seen after ${tries} reloads; the page said:\n${await page.locator('main').innerText()}`);
}

try {
  // 1. Without the token: the failure is visible, but replaying it from the page is refused.
  const anonymous = await (await browser.newContext()).newPage();
  await anonymous.goto(`${base}/console/failures`);
  await anonymous.locator(`input[type=checkbox][value="${failedId}"]`).check();
  const [refusedAnswer] = await Promise.all([
    anonymous.waitForNavigation(),
    anonymous.locator('button[value=replay]').first().click(),
  ]);
  if (refusedAnswer.status() !== 401) {
    fail('refused without the token', `the replay answered ${refusedAnswer.status()}, expected 401`);
  }
  await shot(anonymous, 'refused');
  // A script without a session or bearer token is refused the same way.
  const scripted = await anonymous.request.post(`${base}/console/failures/apply`, {
    form: { action: 'replay', scope: 'selected', id: failedId },
    headers: { Origin: base },
  });
  if (scripted.status() !== 401) {
    fail('refused without the token', `a scripted apply answered ${scripted.status()}, expected 401`);
  }
  console.log('ok: a replay without the token is refused with 401 (page and script)');

  // 2. Log in with the token.
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  await page.goto(`${base}/console/login`);
  await page.locator('input[type=password]').fill(token);
  const name = page.locator('input[name=name]');
  if (await name.count()) await name.fill('on-call engineer');
  await Promise.all([page.waitForNavigation(), page.locator('input[type=password]').press('Enter')]);
  console.log('ok: logged in');

  // 3. See the failure, filter by its key, open it.
  await page.goto(`${base}/console/failures`);
  if (!(await page.locator(`a:has-text("${failedId}")`).count())) {
    fail('see a failure', `${failedId} is not listed:\n${await page.locator('main').innerText()}`);
  }
  await page.locator('#filter input[name=key]').fill(failedKey);
  await Promise.all([page.waitForNavigation(), page.locator('#filter button[type=submit]').click()]);
  const rows = await page.locator('input[type=checkbox][name=id]').count();
  if (rows !== 1) fail('filter by key', `${rows} rows for key ${failedKey}, expected 1`);
  await shot(page, 'failures');
  // By time: nothing failed after 2999-01-01; before it, the failure is there.
  await page.goto(`${base}/console/failures?since=2999-01-01`);
  const later = await page.locator('input[type=checkbox][name=id]').count();
  if (later !== 0) fail('filter by time', `${later} failures "since 2999-01-01"`);
  await page.goto(`${base}/console/failures?key=${encodeURIComponent(failedKey)}&until=2999-01-01T00:00:00Z`);
  await Promise.all([page.waitForNavigation(), page.locator(`a:has-text("${failedId}")`).first().click()]);
  const payload = await text(page, '#payload');
  if (!payload.includes('"invoice"')) fail('see one message', `payload shown: ${payload}`);
  const shown = await page.locator('main').innerText();
  if (!/content-type\s+application\/json/.test(shown)) fail('see one message', `no header content-type:\n${shown}`);
  await shot(page, 'failure-message');
  await Promise.all([page.waitForNavigation(), page.locator('a:text-is("hex")').click()]);
  const hex = await text(page, '#payload');
  if (!hex.startsWith('00000000  7b')) fail('hex view', `hex view shows: ${hex}`);
  await page.goBack();
  console.log('ok: the failure is listed, filtered by key and by time, shown with its headers and payload (JSON, hex)');

  // 4. Replay it, through the confirmation page that gives the count.
  await page.goBack();
  await page.locator(`input[type=checkbox][value="${failedId}"]`).check();
  await Promise.all([page.waitForNavigation(), page.locator('button[value=replay]').first().click()]);
  const count = await text(page, '#confirm-count');
  if (!/\b1\b/.test(count)) fail('confirm the replay', `confirmation said: ${count}`);
  await shot(page, 'replay-confirm');
  await Promise.all([page.waitForNavigation(), page.locator('#confirm').click()]);
  const result = await text(page, '#result');
  if (!result.includes('Replayed 1')) fail('replay', `result said: ${result}`);
  console.log(`ok: ${result}`);

  // 4a. A key that is markup is shown as text and never runs.
  await page.goto(`${base}/console/failures?error=${encodeURIComponent(purgeError)}`);
  const listed = await page.locator('main').innerText();
  const ran = await page.evaluate(() => window.pwned);
  if (ran !== undefined || !listed.includes('<script>window.pwned=1</script>')) {
    fail('escaping', `window.pwned=${ran}; the page showed:\n${listed}`);
  }
  console.log('ok: a key with markup is shown as text, not run');

  // 4b. Purge everything matching an error text: the count, the confirmation, the result.
  await page.goto(`${base}/console/failures?error=${encodeURIComponent(purgeError)}`);
  await Promise.all([page.waitForNavigation(), page.locator('button[value=purge]').nth(1).click()]);
  const purgeCount = await text(page, '#confirm-count');
  if (!/Purge\s+1\b/.test(purgeCount)) fail('confirm the purge', `confirmation said: ${purgeCount}`);
  await Promise.all([page.waitForNavigation(), page.locator('#confirm').click()]);
  const purged = await text(page, '#result');
  if (!purged.includes('Purged 1')) fail('purge', `result said: ${purged}`);
  console.log(`ok: purge of all matching "${purgeError}": ${purged}`);

  // 4c. A purge of more than one chunk runs in the background behind a progress page.
  await page.goto(`${base}/console/failures?topic=${encodeURIComponent(bulkTopic)}`);
  await Promise.all([page.waitForNavigation(), page.locator('button[value=purge]').nth(1).click()]);
  const bulkCount = await text(page, '#confirm-count');
  if (!bulkCount.includes(String(bulkSize))) fail('confirm the bulk purge', `confirmation said: ${bulkCount}`);
  await Promise.all([page.waitForNavigation(), page.locator('#confirm').click()]);
  const jobUrl = page.url();
  if (!jobUrl.includes('/console/jobs/')) fail('bulk purge', `landed on ${jobUrl}, not a progress page`);
  if (await page.locator('#progress').count()) await shot(page, 'progress');
  await until(
    page,
    jobUrl,
    async (p) => (await p.locator('#result').count()) > 0,
    'the bulk purge finishes',
  );
  const bulkPurged = await text(page, '#result');
  if (!bulkPurged.includes(`Purged ${bulkSize}`)) fail('bulk purge', `result said: ${bulkPurged}`);
  console.log(`ok: bulk purge behind the progress page: ${bulkPurged}`);

  // 5. Watch the outbox drain on the overview.
  await until(
    page,
    `${base}/console`,
    async (p) => (await text(p, '#backlog b')) === '0' && (await text(p, '#failures b')) === '0',
    'the outbox drains after the replay',
  );
  await shot(page, 'overview');
  console.log('ok: the backlog and the failure table are empty after the replay');

  // 6. Trace a message through the relay, broker-lite and the idempotent consumer, found by key.
  await page.goto(`${base}/console/trace`);
  await page.locator('input[name=q]').fill(tracedKey);
  await Promise.all([page.waitForNavigation(), page.locator('input[name=q]').press('Enter')]);
  if (!(await page.locator(`a:has-text("${tracedId}")`).count())) {
    fail('trace by key', `${tracedId} not found for key ${tracedKey}:\n${await page.locator('main').innerText()}`);
  }
  await until(
    page,
    `${base}/console/trace?q=${tracedId}`,
    async (p) => {
      for (const source of ['outbox', 'broker', 'consumer']) {
        if (!(await p.locator(`#timeline li[data-source=${source}]`).count())) return false;
      }
      return true;
    },
    'a timeline with outbox, broker and consumer steps',
  );
  const timeline = await text(page, '#timeline');
  for (const step of [/enqueued/i, /stored/i, /deliver/i, /idempot|handled|processed/i]) {
    if (!step.test(timeline)) fail('trace', `no step matching ${step} in:\n${timeline}`);
  }
  await shot(page, 'trace');
  console.log('ok: the trace shows the outbox, broker and consumer steps');

  // 7. The broker page lists the topics and the consumer group.
  await page.goto(`${base}/console/broker`);
  const broker = await page.locator('main').innerText();
  if (!broker.includes('orders') || !broker.includes('billing')) {
    fail('broker page', `no topic orders or group billing:\n${broker}`);
  }
  if (!(await page.locator(`input[type=checkbox][value="${deadId}"]`).count())) {
    fail('dead letters', `${deadId} is not among the dead letters:\n${broker}`);
  }
  await shot(page, 'broker');
  console.log('ok: the broker page lists topics, groups and the dead letter');

  // 8. Redrive the dead letter; its trace shows it dead-lettered, redriven and then handled.
  await page.locator(`input[type=checkbox][value="${deadId}"]`).check();
  await Promise.all([page.waitForNavigation(), page.locator('#redrive-billing button[value=selected]').click()]);
  const redriven = await text(page, '#result');
  if (!redriven.includes('Redrove 1')) fail('redrive', `result said: ${redriven}`);
  console.log(`ok: ${redriven}`);
  await until(
    page,
    `${base}/console/trace?q=${deadId}`,
    async (p) => {
      const steps = await p.locator('#timeline').innerText();
      return /dead-lettered/.test(steps) && /redriven/.test(steps) && /handled by group billing/.test(steps);
    },
    'the redriven message handled',
  );
  await shot(page, 'trace-redriven');
  console.log('ok: the trace shows the dead letter, the redrive and the handler');

  // 9. The Audit page: every action above, newest first, by who did it; filter by action.
  await page.goto(`${base}/console/audit`);
  const audit = await page.locator('main table').innerText();
  for (const action of ['sign-in', 'replay', 'purge', 'redrive']) {
    if (!new RegExp(`on-call engineer\\s+${action}`).test(audit)) {
      fail('audit page', `no ${action} by the on-call engineer:\n${audit}`);
    }
  }
  if (audit.indexOf('redrive') > audit.indexOf('sign-in')) fail('audit page', `not newest first:\n${audit}`);
  await shot(page, 'audit');
  await page.locator('#audit-filter select[name=action]').selectOption('purge');
  await Promise.all([page.waitForNavigation(), page.locator('#audit-filter button').click()]);
  const purges = await page.locator('main table').innerText();
  if (/replay|redrive|sign-in/.test(purges) || !/purge/.test(purges)) {
    fail('audit filter', `filtered by purge, the page shows:\n${purges}`);
  }
  console.log('ok: the audit page lists every action, newest first, and filters by action');

  // 10. Sign out: the session ends and a write is refused again.
  await Promise.all([page.waitForNavigation(), page.locator('#sign-out').click()]);
  await page.goto(`${base}/console/failures`);
  if (await page.locator('nav .who').innerText().then((t) => t.includes('signed in'))) {
    fail('sign out', 'still signed in after signing out');
  }
  console.log('ok: signed out');

  console.log(`RESULT ${JSON.stringify({ ok: true, screenshots })}`);
  await browser.close();
} catch (error) {
  console.error(`FAILED ${error.message}`);
  console.log(`RESULT ${JSON.stringify({ ok: false, error: error.message, screenshots })}`);
  await browser.close();
  process.exit(1);
}
