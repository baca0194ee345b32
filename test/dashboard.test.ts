import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeEach, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { QueueEvents } from 'bullmq';
import { Redis } from 'ioredis';
import { chromium } from 'playwright-core';

import type { Teardown } from './helpers/fixtures.js';
import { plainQueue, redisSuite, startConsumer, tempDb } from './helpers/fixtures.js';
import type { TestRedis } from './helpers/redis-server.js';

const suite = redisSuite();
let redis: TestRedis;
let t: Teardown;
let queue: string;
beforeEach(() => ({ redis, t, queue } = suite));

/** Screenshots land here, git-ignored, for a person to look at. */
const ARTIFACTS = fileURLToPath(new URL('../test-artifacts', import.meta.url));
/** Debian's chromium; .ci/run installs it when missing. */
const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

const auth = { user: 'ops', password: 'correct horse' };
const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

/** One raw HTTP request, with headers as given: fetch would not send a `Host` or `Origin` of our choosing. */
function send(port: number, method: string, path: string, headers: Record<string, string>, body?: string): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method, path, headers }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (chunk: string) => (text += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('dashboard', () => {
  it('refuses requests from other sites to change the queue, and answers with headers that keep its pages private', async () => {
    const db = t.add(tempDb(), (d) => d.cleanup());
    const consumer = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath, http: { port: 0, host: '127.0.0.1', dashboard: { auth } } });
    const port = consumer.httpAddress?.port ?? 0;
    const host = `127.0.0.1:${port}`;
    const add = `/dashboard/api/queues/${encodeURIComponent(queue)}/add`;
    // The forged request: a form or no-cors fetch on another page, text/plain so no preflight is asked.
    const job = (nickname: string) => JSON.stringify({ name: 'batch', data: { v: 1, ops: [{ op: 'user.create', args: { nickname, fullName: 'F', email: `${nickname}@example.com` } }] } });
    const forged = { host, authorization: basic(auth.user, auth.password), 'content-type': 'text/plain' };
    const crossSite = await send(port, 'POST', add, { ...forged, 'sec-fetch-site': 'same-site', origin: 'http://127.0.0.1:9999' }, job('forged1'));
    assert.equal(crossSite.status, 403, crossSite.body);
    assert.match(crossSite.body, /another site \(Sec-Fetch-Site: same-site\)/);
    const otherOrigin = await send(port, 'POST', add, { ...forged, origin: 'http://evil.example' }, job('forged2'));
    assert.equal(otherOrigin.status, 403, otherOrigin.body);
    assert.equal((await send(port, 'PUT', `/dashboard/api/queues/${encodeURIComponent(queue)}/pause`, { ...forged, origin: 'null' })).status, 403);
    // The dashboard's own page, and a script with the credentials, may.
    const own = await send(port, 'POST', add, { ...forged, 'content-type': 'application/json', 'sec-fetch-site': 'same-origin', origin: `http://${host}` }, job('own'));
    assert.equal(own.status, 200, own.body);
    assert.equal((await send(port, 'POST', add, { ...forged, 'content-type': 'application/json' }, job('script'))).status, 200);
    const counts = await plainQueue(t, redis.url, queue).getJobCounts('waiting', 'active', 'completed', 'failed');
    assert.equal(Object.values(counts).reduce((a, b) => a + b, 0), 2, `only the two allowed jobs were added: ${JSON.stringify(counts)}`);
    assert.equal(await plainQueue(t, redis.url, queue).isPaused(), false);

    const page = await send(port, 'GET', '/dashboard', { host, authorization: basic(auth.user, auth.password) });
    assert.equal(page.status, 200);
    assert.deepEqual([page.headers['x-frame-options'], page.headers['cache-control']], ['DENY', 'no-store']);
    assert.equal(page.headers['content-security-policy'], "frame-ancestors 'none'");
  });

  it('without credentials, answers only requests addressed to an IP address or localhost (no DNS rebinding)', async () => {
    const db = t.add(tempDb(), (d) => d.cleanup());
    const consumer = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath, http: { port: 0, host: '127.0.0.1', dashboard: {} } });
    const port = consumer.httpAddress?.port ?? 0;
    const rebound = await send(port, 'GET', `/dashboard/api/queues`, { host: `attacker.example:${port}` });
    assert.equal(rebound.status, 403);
    assert.match(rebound.body, /answers only requests addressed to an IP address or localhost/);
    assert.equal((await send(port, 'GET', `/dashboard/api/queues`, { host: `127.0.0.1:${port}` })).status, 200);
    assert.equal((await send(port, 'GET', `/dashboard/api/queues`, { host: `localhost:${port}` })).status, 200);
  });


  it('shows the queue and a failed job in a real browser, behind basic auth', async () => {
    const db = t.add(tempDb(), (d) => d.cleanup());
    const consumer = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath, http: { port: 0, host: '127.0.0.1', dashboard: { auth } } });
    const base = `http://127.0.0.1:${consumer.httpAddress?.port}`;

    // A job no userops client would send: the consumer fails it, and the dashboard shows it failed.
    const connection = t.add(new Redis(redis.url, { maxRetriesPerRequest: null }), (c) => c.disconnect());
    const events = t.add(new QueueEvents(queue, { connection }), (e) => e.close());
    await events.waitUntilReady();
    const bad = await plainQueue(t, redis.url, queue).add('not-a-batch', { v: 1, ops: 'all of them' });
    await assert.rejects(bad.waitUntilFinished(events, 10_000), /ops: must be an array/);

    const refused = await fetch(`${base}/dashboard`);
    assert.equal(refused.status, 401, 'no credentials');
    assert.match(refused.headers.get('www-authenticate') ?? '', /^Basic realm="userops dashboard"/);
    assert.equal((await fetch(`${base}/dashboard`, { headers: { authorization: basic(auth.user, 'wrong') } })).status, 401, 'wrong password');
    assert.equal((await fetch(`${base}/dashboard/api/queues`, { headers: { authorization: basic('nobody', auth.password) } })).status, 401, 'wrong user');
    assert.equal((await fetch(`${base}/metrics`)).status, 200, 'probes and scrapes need no credentials');

    const profile = t.add(mkdtempSync(join(tmpdir(), 'userops-chromium-')), (dir) => rmSync(dir, { recursive: true, force: true }));
    const browser = t.add(
      await chromium.launchPersistentContext(profile, {
        executablePath: CHROMIUM,
        args: CHROMIUM_ARGS,
        headless: true,
        httpCredentials: { username: auth.user, password: auth.password },
        viewport: { width: 1280, height: 800 },
      }),
      (b) => b.close(),
    );
    // The page asks for web fonts from the internet; the test talks to this machine only.
    await browser.route(/^(?!http:\/\/127\.0\.0\.1[:/])/, (route) => route.abort());
    const page = await browser.newPage();

    const overview = await page.goto(`${base}/dashboard`);
    assert.equal(overview?.status(), 200);
    await page.getByText(queue).first().waitFor();

    await page.goto(`${base}/dashboard/queue/${encodeURIComponent(queue)}?status=failed`);
    await page.getByText('not-a-batch').first().waitFor();
    await page.getByText(/ops: must be an array/).first().waitFor();
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-failed-job.png'), fullPage: true });
  });
});
