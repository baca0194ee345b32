import assert from 'node:assert/strict';
import { once } from 'node:events';
import { type AddressInfo, createServer } from 'node:net';
import { beforeEach, describe, it } from 'node:test';

import { Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { pino } from 'pino';

import {
  ClientClosedError,
  OpTimeoutError,
  OverloadedError,
  RedisUnavailableError,
  UserExistsError,
  UserNotFoundError,
  ValidationError,
} from '../src/index.js';
import Database from '../src/consumer/sqlite-driver.js';
import { QueueLink } from '../src/producer/link.js';
import { type JobPayload, PROTOCOL_VERSION } from '../src/protocol/index.js';
import type { Teardown } from './helpers/fixtures.js';
import { newClient, plainQueue, redisSuite, startConsumer, tempDb, until } from './helpers/fixtures.js';
import { freePort, TestRedis } from './helpers/redis-server.js';

const suite = redisSuite();
let redis: TestRedis;
let t: Teardown;
let queue: string;
beforeEach(() => ({ redis, t, queue } = suite));

async function setup() {
  const db = t.add(tempDb(), (d) => d.cleanup());
  const consumer = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath });
  const client = newClient(t, { redisUrl: redis.url, queue, timeoutMs: 10_000 });
  return { consumer, client, db };
}

const bob = { nickname: 'bob', fullName: 'Bob Builder', email: 'bob@example.com' };

describe('UserOpsClient with a running consumer', () => {
  it('creates, reads, updates, lists and deletes a user', async () => {
    const { client } = await setup();
    const created = await client.createUser(bob);
    assert.equal(created.nickname, 'bob');
    assert.equal(typeof created.id, 'number');
    assert.deepEqual(await client.getUser('bob'), created);
    const updated = await client.updateUser('bob', { fullName: 'Robert Builder' });
    assert.equal(updated.fullName, 'Robert Builder');
    assert.equal(updated.email, bob.email);
    await client.createUser({ ...bob, nickname: 'alice' });
    assert.deepEqual((await client.listUsers()).map((u) => u.nickname), ['alice', 'bob']);
    assert.deepEqual((await client.listUsers({ after: 'alice', limit: 5 })).map((u) => u.nickname), ['bob']);
    // Fields present but undefined are absent, as the types say (for exactOptionalPropertyTypes callers).
    assert.deepEqual((await client.listUsers({ after: undefined, limit: undefined })).map((u) => u.nickname), ['alice', 'bob']);
    const again = await client.updateUser('bob', { fullName: undefined, email: 'robert@example.com' });
    assert.deepEqual([again.fullName, again.email], ['Robert Builder', 'robert@example.com']);
    assert.deepEqual(await client.deleteUser('bob'), again);
    await assert.rejects(client.getUser('bob'), UserNotFoundError);
  });

  it('rejects with typed domain errors that name the user', async () => {
    const { client } = await setup();
    await client.createUser(bob);
    await assert.rejects(client.createUser(bob), (err: unknown) => {
      assert.ok(err instanceof UserExistsError);
      assert.equal(err.code, 'USER_EXISTS');
      assert.equal(err.nickname, 'bob');
      return true;
    });
    await assert.rejects(client.getUser('carol'), { name: 'UserNotFoundError', code: 'USER_NOT_FOUND', message: "User carol doesn't exist" });
    await assert.rejects(client.updateUser('carol', { email: 'c@example.com' }), UserNotFoundError);
    await assert.rejects(client.deleteUser('carol'), UserNotFoundError);
  });

  it('validates input before enqueueing anything', async () => {
    const { client } = await setup();
    const probe = plainQueue(t, redis.url, queue);
    await assert.rejects(client.createUser({ ...bob, email: 'not-an-email' }), (err: unknown) => {
      assert.ok(err instanceof ValidationError);
      assert.deepEqual(err.issues.map((i) => i.path), ['email']);
      return true;
    });
    await assert.rejects(client.updateUser('bob', {}), /give at least one of fullName, email/);
    await assert.rejects(client.updateUser('bob', null as never), /changes: must be an object/);
    // The first argument would silently win over it: a rename that does nothing must not succeed.
    await assert.rejects(client.updateUser('bob', { fullName: 'B', nickname: 'robert' } as never), (err: unknown) => {
      assert.ok(err instanceof ValidationError);
      assert.deepEqual(err.issues.map((i) => i.path), ['changes.nickname']);
      assert.match(err.message, /unknown key nickname/);
      return true;
    });
    await assert.rejects(client.listUsers({ limit: -1 }), ValidationError);
    // One mistake, one issue: an empty nickname is not also reported as breaking the pattern.
    await assert.rejects(client.getUser(''), (err: unknown) => {
      assert.ok(err instanceof ValidationError);
      assert.deepEqual(err.issues, [{ path: 'nickname', message: 'must not be empty (got "")' }]);
      return true;
    });
    const counts = await probe.getJobCounts();
    assert.equal(Object.values(counts).reduce((a, b) => a + b, 0), 0, 'nothing was enqueued');
  });

  it('coalesces concurrent calls into batches and keeps the order they were made in', async () => {
    const { client, consumer } = await setup();
    const n = 300;
    const users = await Promise.all(
      Array.from({ length: n }, (_, i) => client.createUser({ ...bob, nickname: `u${String(i).padStart(4, '0')}` })),
    );
    // Applied in call order: ids ascend with the call index.
    users.forEach((u, i) => assert.equal(u.nickname, `u${String(i).padStart(4, '0')}`));
    for (let i = 1; i < n; i++) assert.ok((users[i]?.id ?? 0) > (users[i - 1]?.id ?? 0), `user ${i} applied after ${i - 1}`);
    const jobs = consumer.database?.ledgerSize() ?? 0;
    assert.ok(jobs < n, `expected fewer jobs than calls, got ${jobs} jobs for ${n} calls`);
    assert.equal(consumer.database?.countUsers(), n);
  });

  it('splits list calls over jobs so no job asks for more rows than the consumer allows', async () => {
    const { client, consumer } = await setup();
    await Promise.all(Array.from({ length: 150 }, (_, i) => client.createUser({ ...bob, nickname: `l${String(i).padStart(3, '0')}` })));
    const jobsBefore = consumer.database?.ledgerSize() ?? 0;
    // 300 calls of 150 rows: 45,000 rows. A job of 100 of them (the op cap) would ask for 15,000,
    // over one job's budget of 10,000, and fail whole.
    const pages = await Promise.all(Array.from({ length: 300 }, () => client.listUsers({ limit: 150 })));
    for (const page of pages) assert.equal(page.length, 150);
    const jobs = (consumer.database?.ledgerSize() ?? 0) - jobsBefore;
    assert.ok(jobs >= 5, `expected at least 5 jobs for 45,000 rows, got ${jobs}`);
  });

  it('gives each call in a batch its own outcome', async () => {
    const { client } = await setup();
    await client.createUser(bob);
    const outcomes = await Promise.allSettled([
      client.createUser({ ...bob, nickname: 'x1' }),
      client.createUser(bob),
      client.getUser('nobody'),
      client.createUser({ ...bob, nickname: 'x2' }),
    ]);
    assert.deepEqual(outcomes.map((o) => o.status), ['fulfilled', 'rejected', 'rejected', 'fulfilled']);
    assert.ok(outcomes[1]?.status === 'rejected' && outcomes[1].reason instanceof UserExistsError);
    assert.ok(outcomes[2]?.status === 'rejected' && outcomes[2].reason instanceof UserNotFoundError);
  });

  it('reads its results from a reply stream of its own, trimmed as it reads and deleted when it closes', async () => {
    const { client } = await setup();
    const other = newClient(t, { redisUrl: redis.url, queue, timeoutMs: 10_000 });
    await Promise.all([client.createUser(bob), other.createUser({ ...bob, nickname: 'other' })]);
    for (let i = 0; i < 5; i++) await client.getUser('bob');
    const admin = t.add(new Redis(redis.url), (r) => r.disconnect());
    const streams = await admin.keys(`bull:${queue}:userops:reply:*`);
    assert.equal(streams.length, 2, 'one reply stream per client');
    // The trim travels just after the last reply is handed on; give it a moment.
    for (const key of streams) await until(`${key} trimmed to its last entry`, async () => (await admin.xlen(key)) === 1, 5000);
    await client.close();
    await other.close();
    assert.deepEqual(await admin.keys(`bull:${queue}:userops:reply:*`), [], 'each client deleted its own');
  });

  it("keeps BullMQ's events stream short: nothing of userops reads it, and its entries carry results", async () => {
    const { client } = await setup();
    // One job per call, each adding about five entries (added, waiting, active, completed...):
    // ~3,000 in all, over the cap and under BullMQ's default of 10,000, so only the cap trims them.
    await client.createUser(bob);
    for (let i = 0; i < 600; i++) await client.getUser('bob');
    const admin = t.add(new Redis(redis.url), (r) => r.disconnect());
    const length = await admin.xlen(`bull:${queue}:events`);
    // Trimmed approximately (MAXLEN ~): a little over 1,000 at most, never the ~3,000 added.
    assert.ok(length >= 1000 && length < 1300, `events stream holds ${length} entries`);
  });

  it('closes idempotently and rejects calls made after close', async () => {
    const { client } = await setup();
    await client.createUser(bob);
    await Promise.all([client.close(), client.close()]);
    await client.close();
    await assert.rejects(client.getUser('bob'), ClientClosedError);
  });
});

describe('UserOpsClient when things are missing', () => {
  it('times out with applied: false, and withdraws the job, when no consumer has taken it', async () => {
    const client = newClient(t, { redisUrl: redis.url, queue, timeoutMs: 300 });
    const outcomes = await Promise.allSettled([client.createUser(bob), client.getUser('bob')]);
    for (const outcome of outcomes) {
      assert.equal(outcome.status, 'rejected');
      const err = (outcome).reason as unknown;
      assert.ok(err instanceof OpTimeoutError);
      assert.equal(err.code, 'TIMEOUT');
      assert.equal(err.applied, false);
      assert.match(err.message, /timed out after 300 ms .*applied: false/);
    }
    const probe = plainQueue(t, redis.url, queue);
    const counts = await probe.getJobCounts();
    assert.equal(Object.values(counts).reduce((a, b) => a + b, 0), 0, 'the job is gone from the queue');
    // A consumer that starts now finds nothing to apply: applied: false was the truth.
    const db = t.add(tempDb(), (d) => d.cleanup());
    const consumer = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath });
    const later = newClient(t, { redisUrl: redis.url, queue });
    await assert.rejects(later.getUser('bob'), UserNotFoundError);
    assert.equal(consumer.database?.ledgerSize(), 1, 'only the later call was ever applied');
  });

  it('times out with applied: "unknown" when the consumer has already taken the job', async () => {
    const db = t.add(tempDb(), (d) => d.cleanup());
    const consumer = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath, busyTimeoutMs: 10 });
    // The consumer takes the job, then cannot commit while another connection holds the lock.
    const locker = t.add(new Database(db.dbPath), (d) => d.close());
    locker.exec('BEGIN IMMEDIATE');
    const client = newClient(t, { redisUrl: redis.url, queue, timeoutMs: 500 });
    await assert.rejects(client.createUser(bob), (err: unknown) => {
      assert.ok(err instanceof OpTimeoutError);
      assert.equal(err.applied, 'unknown');
      return true;
    });
    locker.exec('ROLLBACK');
    // And indeed it is applied once the lock is gone.
    const reader = newClient(t, { redisUrl: redis.url, queue });
    assert.equal((await reader.getUser('bob')).nickname, 'bob');
    assert.equal(consumer.database?.countUsers(), 1);
  });

  it('fails fast with RedisUnavailableError when Redis is unreachable', async () => {
    const port = await freePort();
    const client = newClient(t, { redisUrl: `redis://:hunter2@127.0.0.1:${port}`, queue, connectTimeoutMs: 1000 });
    const started = Date.now();
    await assert.rejects(client.getUser('bob'), (err: unknown) => {
      assert.ok(err instanceof RedisUnavailableError);
      assert.equal(err.code, 'REDIS_UNAVAILABLE');
      assert.equal(err.applied, false, 'never enqueued: safe to retry, like any error with applied false');
      assert.match(err.message, /ECONNREFUSED|no connection within/);
      assert.doesNotMatch(err.message, /hunter2/, 'the password is never shown');
      return true;
    });
    assert.ok(Date.now() - started < 5000, 'fails within seconds, not after the call timeout');
  });

  it('says what answered when the address is not a Redis, not that a command was refused', async () => {
    // An HTTP server, say: a wrong port in REDIS_URL.
    const http = createServer((socket) => socket.end('HTTP/1.1 400 Bad Request\r\n\r\n')).listen(0, '127.0.0.1');
    t.add(http, (h) => h.close());
    await once(http, 'listening');
    const client = newClient(t, { redisUrl: `redis://127.0.0.1:${(http.address() as AddressInfo).port}`, queue, connectTimeoutMs: 1000 });
    await assert.rejects(client.getUser('bob'), (err: unknown) => {
      assert.ok(err instanceof RedisUnavailableError);
      // Before: "Stream isn't writeable and enableOfflineQueue options is false", a consequence.
      assert.match(err.message, /Protocol error, got "H" as reply type byte/);
      return true;
    });
  });

  it('closes within seconds when Redis has died (BullMQ #4656 would wait forever)', async () => {
    const own = t.add(await TestRedis.start(), (r) => r.stop());
    const client = newClient(t, { redisUrl: own.url, queue, timeoutMs: 200 });
    await assert.rejects(client.getUser('bob'), OpTimeoutError); // connected, events reader running
    await own.kill();
    const started = Date.now();
    await client.close();
    assert.ok(Date.now() - started < 5000, `close took ${Date.now() - started} ms`);
  });

  it('bounds pending calls: past maxPendingCalls a call fails at once with OverloadedError', async () => {
    const client = newClient(t, { redisUrl: redis.url, queue, timeoutMs: 10_000, maxPendingCalls: 5 });
    const waiting = Array.from({ length: 5 }, (_, i) => client.getUser(`u${i}`));
    await assert.rejects(client.getUser('one-too-many'), (err: unknown) => {
      assert.ok(err instanceof OverloadedError);
      assert.equal(err.code, 'OVERLOADED');
      assert.match(err.message, /Too many calls pending \(5\)/);
      return true;
    });
    assert.equal(client.pendingCount, 5);
    await client.close();
    for (const call of waiting) await assert.rejects(call, ClientClosedError);
    assert.equal(client.pendingCount, 0);
  });

  it('closes with pending calls: withdraws what no consumer took, and says the op will never run', async () => {
    // A window of one job: the first call is sent and waits in the queue, the second waits unsent.
    const client = newClient(t, { redisUrl: redis.url, queue, timeoutMs: 10_000, maxInFlightJobs: 1 });
    const probe = plainQueue(t, redis.url, queue);
    const sent = client.createUser(bob);
    await until('the first job is waiting', async () => (await probe.getWaitingCount()) === 1);
    const unsent = client.getUser('bob');
    const outcomes = Promise.allSettled([sent, unsent]); // handled before close rejects them
    await client.close();
    await outcomes;
    const counts = await probe.getJobCounts();
    assert.equal(Object.values(counts).reduce((a, b) => a + b, 0), 0, 'the sent job was taken back');
    await assert.rejects(sent, (err: unknown) => {
      assert.ok(err instanceof ClientClosedError);
      assert.equal(err.applied, false);
      assert.equal(typeof err.jobId, 'string');
      assert.match(err.message, /client is closed \(job .+; applied: false\)/);
      return true;
    });
    await assert.rejects(unsent, (err: unknown) => {
      assert.ok(err instanceof ClientClosedError);
      assert.equal(err.applied, false);
      assert.equal(err.jobId, undefined);
      assert.match(err.message, /never sent; applied: false/);
      return true;
    });
  });

  it('closes with a call whose job a consumer has taken: applied "unknown"', async () => {
    const client = newClient(t, { redisUrl: redis.url, queue, timeoutMs: 10_000 });
    const pending = client.createUser(bob);
    const outcome = Promise.allSettled([pending]); // handled before close rejects it
    // A worker takes the job and holds it, as a consumer in the middle of a commit would.
    const connection = t.add(new Redis(redis.url, { maxRetriesPerRequest: null }), (c) => c.disconnect());
    const worker = t.add(new Worker(queue, null, { connection }), (w) => w.close(true));
    let taken: unknown;
    await until('the job is taken', async () => (taken ??= await worker.getNextJob('holder', { block: false })) !== undefined);
    await client.close();
    await outcome;
    await assert.rejects(pending, (err: unknown) => {
      assert.ok(err instanceof ClientClosedError);
      assert.equal(err.applied, 'unknown');
      assert.equal(err.jobId, (taken as { id: string }).id);
      return true;
    });
  });
});

describe('Reconciling a job whose add failed midway', () => {
  /** A link whose outcomes are recorded, connected by one add. */
  function link() {
    const outcomes = { lost: [] as string[], completed: [] as string[], failed: [] as string[] };
    const l = t.add(
      new QueueLink(
        { redisUrl: redis.url, queue, connectTimeoutMs: 5000 },
        {
          completed: (id) => outcomes.completed.push(id),
          failed: (id) => outcomes.failed.push(id),
          lost: (id) => outcomes.lost.push(id),
        },
        pino({ level: 'silent' }),
      ),
      (x) => x.close(),
    );
    return { l, outcomes };
  }
  const payload: JobPayload = { v: PROTOCOL_VERSION, ops: [{ op: 'user.get', args: { nickname: 'bob' } }] };

  it('reports it lost when Redis would still hold it had it run', async () => {
    const { l, outcomes } = link();
    await l.add('warm-up', payload);
    await l.reconcile([{ id: 'never-sent', uncertain: true, since: Date.now() - 4000, after: undefined }]);
    assert.deepEqual(outcomes.lost, ['never-sent']);
  });

  it('does not report it lost when BullMQ may have dropped it after it ran', async () => {
    const { l, outcomes } = link();
    // A worker that keeps only the newest two finished jobs, as a busy queue keeps seconds' worth.
    const connection = t.add(new Redis(redis.url, { maxRetriesPerRequest: null }), (c) => c.disconnect());
    const done: string[] = [];
    const worker = t.add(new Worker(queue, () => Promise.resolve({ results: [] }), { connection, removeOnComplete: { count: 2 } }), (w) => w.close());
    worker.on('completed', (job) => done.push(job.id as string));
    const since = Date.now();
    for (const id of ['before', 'ran', 'later-1', 'later-2', 'later-3']) await l.add(id, payload);
    await until('five jobs completed', () => done.length === 5);
    assert.equal(await connection.exists(`bull:${queue}:ran`), 0, 'the job that ran has been dropped');
    // Neither the clocks nor the queue's order can tell: the job it was sent after is gone too.
    await l.reconcile([{ id: 'ran', uncertain: true, since, after: undefined }]);
    await l.reconcile([{ id: 'ran', uncertain: true, since, after: 'before' }]);
    assert.deepEqual(outcomes, { lost: [], completed: [], failed: [] }, 'left to time out as "unknown", not reported as never sent');
    // Sent after a job that is still kept: had it run, it would have finished later, and be kept too.
    await l.reconcile([{ id: 'sent-after-later-2', uncertain: true, since: Date.now(), after: 'later-2' }]);
    // Sent well after the oldest finished job still kept, by the clocks.
    await l.reconcile([{ id: 'sent-later', uncertain: true, since: Date.now() + 60_000, after: undefined }]);
    assert.deepEqual(outcomes.lost, ['sent-after-later-2', 'sent-later']);
  });
});
