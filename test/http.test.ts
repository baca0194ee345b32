import assert from 'node:assert/strict';
import { beforeEach, describe, it } from 'node:test';

import { QueueEvents } from 'bullmq';
import { Redis } from 'ioredis';

import { pino } from 'pino';

import { UserOpsConsumer } from '../src/consumer/index.js';
import type { ConsumerOptions } from '../src/consumer/options.js';
import { UserExistsError, UserNotFoundError } from '../src/index.js';
import { OP_NAMES } from '../src/protocol/index.js';
import type { Teardown } from './helpers/fixtures.js';
import { newClient, plainQueue, redisSuite, startConsumer, tempDb, user } from './helpers/fixtures.js';
import { TestRedis } from './helpers/redis-server.js';

const suite = redisSuite();
let redis: TestRedis;
let t: Teardown;
let queue: string;
beforeEach(() => ({ redis, t, queue } = suite));


/** A consumer with its HTTP server on a free loopback port, and that server's base URL. */
async function served(options: Partial<ConsumerOptions> = {}): Promise<{ consumer: UserOpsConsumer; base: string; dbPath: string }> {
  const dbPath = options.dbPath ?? t.add(tempDb(), (d) => d.cleanup()).dbPath;
  const consumer = await startConsumer(t, { redisUrl: redis.url, queue, dbPath, http: { port: 0, host: '127.0.0.1' }, ...options });
  const address = consumer.httpAddress;
  assert.ok(address, 'the HTTP server is listening');
  return { consumer, base: `http://127.0.0.1:${address.port}`, dbPath };
}

async function getJson(url: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(url);
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

/** Samples of a Prometheus text exposition, keyed by `name{labels}` as printed. */
async function scrape(base: string): Promise<Map<string, number>> {
  const res = await fetch(`${base}/metrics`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  const samples = new Map<string, number>();
  for (const line of (await res.text()).split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    samples.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return samples;
}

describe('consumer HTTP server', () => {
  it('answers /healthz, and /readyz as the writer with every part ok', async () => {
    const { base } = await served();
    const health = await getJson(`${base}/healthz`);
    assert.equal(health.status, 200);
    assert.equal(health.body.alive, true);
    const ready = await getJson(`${base}/readyz`);
    assert.equal(ready.status, 200);
    assert.deepEqual(ready.body, { ready: true, role: 'writer', consumer: 'running', redis: 'ok', sqlite: 'ok', lease: 'ok', failing: [] });
  });

  it('reports a second consumer on the same queue as a ready standby', async () => {
    const writer = await served();
    const standby = await served({ dbPath: writer.dbPath });
    assert.equal((await getJson(`${writer.base}/readyz`)).body.role, 'writer');
    const ready = await getJson(`${standby.base}/readyz`);
    assert.equal(ready.status, 200);
    assert.equal(ready.body.role, 'standby');
    assert.equal(ready.body.ready, true);
    const samples = await scrape(standby.base);
    assert.equal(samples.get('userops_writer'), 0);
    assert.equal((await scrape(writer.base)).get('userops_writer'), 1);
  });

  it('answers /readyz 503 naming Redis once Redis is killed, and stays alive', async () => {
    const own = t.add(await TestRedis.start(), (r) => r.stop());
    const { base } = await served({ redisUrl: own.url });
    assert.equal((await getJson(`${base}/readyz`)).status, 200);
    await own.kill();
    const ready = await getJson(`${base}/readyz`);
    assert.equal(ready.status, 503);
    assert.equal(ready.body.ready, false);
    assert.deepEqual(ready.body.failing, ['redis']);
    assert.notEqual(ready.body.redis, 'ok');
    assert.equal(ready.body.sqlite, 'ok');
    assert.equal((await getJson(`${base}/healthz`)).status, 200, 'alive without Redis');
    const samples = await scrape(base);
    assert.equal(samples.get('userops_redis_up'), 0, '/metrics answers, saying Redis is down');
    assert.equal(samples.has('userops_queue_jobs{state="waiting"}'), false, 'no stale queue depth');
    assert.ok(Number.isNaN(samples.get('userops_queue_paused')), 'nor a stale paused flag');
  });

  it('answers /readyz 503 "starting" while Redis is awaited, then 200 once it comes', async () => {
    const own = t.add(await TestRedis.start(), (r) => r.stop());
    await own.kill();
    const dbPath = t.add(tempDb(), (d) => d.cleanup()).dbPath;
    let listening!: () => void;
    const up = new Promise<void>((resolve) => (listening = resolve));
    const logger = pino({ level: 'info' }, { write: (line: string) => void (line.includes('http server listening') && listening()) });
    const consumer = t.add(new UserOpsConsumer({ redisUrl: own.url, queue, dbPath, logger, http: { port: 0, host: '127.0.0.1' } }), (c) => c.close());
    const started = consumer.start();
    await up;
    const base = `http://127.0.0.1:${consumer.httpAddress?.port}`;
    const waiting = await getJson(`${base}/readyz`);
    assert.equal(waiting.status, 503);
    assert.equal(waiting.body.consumer, 'starting');
    assert.equal(waiting.body.role, 'starting', 'not a standby before it has asked for the writer role');
    assert.deepEqual(waiting.body.failing, ['consumer', 'redis']);
    assert.match(String(waiting.body.redis), /^unreachable \(/);
    assert.match(String(waiting.body.sqlite), /^not created yet: waiting for Redis/, 'a new database is created once the queue says it may be');
    assert.equal((await getJson(`${base}/healthz`)).status, 200);
    await own.restart();
    await started;
    assert.equal((await getJson(`${base}/readyz`)).status, 200);
  });

  it('reports "closing" as not ready once close() has begun', async () => {
    const { consumer } = await served();
    const closing = consumer.close();
    const ready = await consumer.readiness();
    await closing;
    assert.equal(ready.ready, false);
    assert.equal(ready.consumer, 'closing');
    assert.ok(ready.failing.includes('consumer'));
  });

  it('counts ops by op and outcome, jobs, groups and queue depth exactly', async () => {
    const { base } = await served();
    const before = await scrape(base);
    // Every op and outcome shown from the start, at 0: an alert on increase() must see the first one.
    for (const op of OP_NAMES) {
      for (const outcome of ['ok', 'USER_NOT_FOUND', 'USER_EXISTS', 'INVALID_INPUT', 'INTERNAL']) {
        assert.equal(before.get(`userops_ops_applied_total{op="${op}",outcome="${outcome}"}`), 0, `${op} ${outcome}, before any op`);
      }
    }
    assert.equal(before.get('userops_ops_applied_total{op="invalid",outcome="INVALID_INPUT"}'), 0);
    assert.equal(before.get('userops_ops_applied_total{op="invalid",outcome="ok"}'), undefined, 'an op not ours is never ok');
    for (const outcome of ['applied', 'replayed', 'failed', 'malformed']) assert.equal(before.get(`userops_jobs_total{outcome="${outcome}"}`), 0);
    assert.equal(before.get('userops_redis_up'), 1);

    const client = newClient(t, { redisUrl: redis.url, queue });
    await Promise.all(['a', 'b', 'c'].map((n) => client.createUser(user(n))));
    await client.getUser('a');
    await assert.rejects(client.getUser('nobody'), UserNotFoundError);
    await assert.rejects(client.createUser(user('a')), UserExistsError);
    await client.updateUser('b', { fullName: 'B' });
    // A job no userops client would send: failed as malformed.
    const connection = t.add(new Redis(redis.url, { maxRetriesPerRequest: null }), (c) => c.disconnect());
    const events = t.add(new QueueEvents(queue, { connection }), (e) => e.close());
    await events.waitUntilReady();
    const bad = await plainQueue(t, redis.url, queue).add('x', { v: 1, ops: 'all of them' });
    await assert.rejects(bad.waitUntilFinished(events, 10_000), /ops: must be an array/);

    const m = await scrape(base);
    assert.equal(m.get('userops_ops_applied_total{op="user.create",outcome="ok"}'), 3);
    assert.equal(m.get('userops_ops_applied_total{op="user.create",outcome="USER_EXISTS"}'), 1);
    assert.equal(m.get('userops_ops_applied_total{op="user.get",outcome="ok"}'), 1);
    assert.equal(m.get('userops_ops_applied_total{op="user.get",outcome="USER_NOT_FOUND"}'), 1);
    assert.equal(m.get('userops_ops_applied_total{op="user.update",outcome="ok"}'), 1);
    assert.equal(m.get('userops_group_ops_sum'), 7, 'every op in some group');
    assert.equal(m.get('userops_jobs_total{outcome="malformed"}'), 1);
    const applied = m.get('userops_jobs_total{outcome="applied"}') ?? 0;
    assert.ok(applied >= 5 && applied <= 7, `the client batches 7 calls into 5 to 7 jobs, got ${applied}`);
    assert.equal(m.get('userops_job_latency_seconds_count'), applied);
    assert.equal(m.get('userops_ledger_rows'), applied, 'one ledger row per applied job');
    // The malformed job came alone, to an idle consumer: a group with nothing to commit is no commit.
    assert.equal(m.get('userops_group_jobs_sum'), applied);
    assert.equal(m.get('userops_commit_duration_seconds_count'), m.get('userops_group_ops_count'));
    assert.equal(m.get('userops_queue_jobs{state="failed"}'), 1);
    assert.equal(m.get('userops_queue_jobs{state="waiting"}'), 0);
    assert.equal(m.get('userops_queue_jobs{state="bullmq5_paused"}'), 0);
    assert.equal(m.get('userops_writer'), 1);
    assert.equal(m.get('userops_queue_paused'), 0);
    assert.ok((m.get('process_cpu_seconds_total') ?? 0) > 0, "prom-client's process metrics");

    // A job another service added with a priority waits in a state of its own; the queue is
    // paused so that the consumer leaves it there to be counted.
    const other = plainQueue(t, redis.url, queue);
    await other.pause();
    await other.add('x', { v: 1, ops: [{ op: 'user.get', args: { nickname: 'a' } }] }, { priority: 5 });
    const paused = await scrape(base);
    assert.equal(paused.get('userops_queue_jobs{state="prioritized"}'), 1);
    assert.equal(paused.get('userops_queue_jobs{state="waiting"}'), 0);
    assert.equal(paused.get('userops_queue_paused'), 1, 'a paused queue is visible to alerts, not only to `stats`');
  });

  it('keeps the counts of two consumers in one process apart', async () => {
    const one = await served();
    const other = await served({ queue: `${queue}-b` });
    await newClient(t, { redisUrl: redis.url, queue }).createUser(user('only-one'));
    assert.equal((await scrape(one.base)).get('userops_ops_applied_total{op="user.create",outcome="ok"}'), 1);
    assert.equal((await scrape(other.base)).get('userops_ops_applied_total{op="user.create",outcome="ok"}'), 0);
  });

  it('answers unknown paths 404 and other methods 405', async () => {
    const { base } = await served();
    assert.equal((await fetch(`${base}/nope`)).status, 404);
    assert.equal((await fetch(`${base}/dashboard`)).status, 404, 'no dashboard unless asked for');
    const post = await fetch(`${base}/readyz`, { method: 'POST' });
    assert.equal(post.status, 405);
    assert.equal(post.headers.get('allow'), 'GET, HEAD');
    assert.equal((await fetch(`${base}/metrics?x=1`, { method: 'HEAD' })).status, 200);
  });

  it('closes the server with the consumer, safely twice', async () => {
    const { consumer, base } = await served();
    const client = newClient(t, { redisUrl: redis.url, queue });
    await client.createUser(user('x'));
    // A kept-alive connection must not hold close() up.
    assert.equal((await fetch(`${base}/healthz`)).status, 200);
    await Promise.all([consumer.close(), consumer.close()]);
    await consumer.close();
    await assert.rejects(fetch(`${base}/healthz`), /fetch failed/);
  });
});
