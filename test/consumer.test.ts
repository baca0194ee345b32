import assert from 'node:assert/strict';
import { beforeEach, describe, it } from 'node:test';

import { FlowProducer, type Job, QueueEvents } from 'bullmq';
import { Redis } from 'ioredis';
import { pino } from 'pino';

import { listFailed } from '../src/cli/failed.js';
import { applyJobs, payloadHash } from '../src/consumer/apply.js';
import { UserOpsConsumer } from '../src/consumer/index.js';
import { RedisWatch } from '../src/consumer/redis-watch.js';
import Database from '../src/consumer/sqlite-driver.js';
import { Store } from '../src/consumer/store.js';
import { RedisUnavailableError } from '../src/index.js';
import type { Teardown } from './helpers/fixtures.js';
import { capturedLog, newClient, plainQueue, recordJobs, redisSuite, startConsumer, tempDb, until } from './helpers/fixtures.js';
import { freePort, TestRedis } from './helpers/redis-server.js';

const suite = redisSuite();
let redis: TestRedis;
let t: Teardown;
let queue: string;
beforeEach(() => ({ redis, t, queue } = suite));

/** A plain BullMQ producer and an events reader, as another service would have. */
function foreignProducer() {
  const q = plainQueue(t, redis.url, queue);
  const connection = t.add(new Redis(redis.url, { maxRetriesPerRequest: null }), (c) => c.disconnect());
  const events = t.add(new QueueEvents(queue, { connection }), (e) => e.close());
  return {
    q,
    /** Adds a job and waits for it to finish; resolves with `{ state, value | reason }`. */
    async run(data: unknown, jobId?: string) {
      await events.waitUntilReady();
      const job: Job = await q.add('anything', data, jobId ? { jobId } : {});
      try {
        return { state: 'completed', value: (await job.waitUntilFinished(events, 10_000)) as unknown };
      } catch (err) {
        return { state: 'failed', reason: (err as Error).message };
      }
    },
  };
}

const create = (nickname: string) => ({ op: 'user.create', args: { nickname, fullName: 'N', email: `${nickname}@example.com` } });

describe('consumer', () => {
  it('fails malformed jobs at once with a reason, keeps them in the failed set, and keeps going', async () => {
    const db = t.add(tempDb(), (d) => d.cleanup());
    const consumer = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath, maxOpsPerJob: 50 });
    const foreign = foreignProducer();
    const cases: [unknown, RegExp][] = [
      [null, /job data must be an object/],
      ['user.create bob', /job data must be an object/],
      [[1, 2], /job data must be an object/],
      [{ ops: [create('a')] }, /v: must be 1/],
      [{ v: 2, ops: [create('a')] }, /v: must be 1/],
      [{ v: 1, ops: [] }, /at least one op/],
      [{ v: 1, ops: 'all of them' }, /ops: must be an array/],
      [{ v: 1, ops: Array.from({ length: 51 }, (_, i) => create(`n${i}`)) }, /at most 50 ops/],
      [{ v: 1, ops: [create('a')], sneaky: true }, /unknown key\(s\) sneaky/],
      [{ v: 1, ops: [create('a')], reply: 'bull:other:key' }, /reply: must be 1-64 characters/],
    ];
    for (const [data, reason] of cases) {
      const outcome = await foreign.run(data);
      assert.equal(outcome.state, 'failed', `expected ${JSON.stringify(data)?.slice(0, 60)} to fail`);
      assert.match(outcome.reason ?? '', reason);
    }
    const failed = await foreign.q.getFailed();
    assert.equal(failed.length, cases.length, 'every malformed job stays in the failed set');
    assert.ok(failed.every((j) => j.attemptsMade === 1), 'malformed jobs are not retried');
    assert.equal(consumer.database?.countUsers(), 0, 'nothing was applied');
    // Still serving:
    const client = newClient(t, { redisUrl: redis.url, queue });
    assert.equal((await client.createUser({ nickname: 'after', fullName: 'A', email: 'a@example.com' })).nickname, 'after');
  });

  it('survives hostile jobs: huge, deep, polluting, mistyped; stores only valid data', async () => {
    const db = t.add(tempDb(), (d) => d.cleanup());
    const consumer = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath });
    const foreign = foreignProducer();
    let deep: unknown = { nickname: 'deep' };
    for (let i = 0; i < 1000; i++) deep = { nested: deep };
    const whole: [unknown, RegExp][] = [
      [{ v: 1, ops: Array.from({ length: 10_000 }, (_, i) => create(`many${i}`)) }, /at most 1000 ops/],
      [{ v: 1, ops: [{ op: 'user.create', args: { nickname: 'big', fullName: 'x'.repeat(4 * 1024 * 1024), email: 'b@example.com' } }] }, /bytes of JSON, more than the limit of 1048576/],
      [JSON.parse('{"v":1,"ops":[],"__proto__":{"polluted":true}}'), /unknown key\(s\) __proto__/],
    ];
    for (const [data, reason] of whole) {
      const outcome = await foreign.run(data);
      assert.equal(outcome.state, 'failed');
      assert.match(outcome.reason ?? '', reason);
    }
    const perOp = await foreign.run({
      v: 1,
      ops: [
        { op: 'user.create', args: deep },
        JSON.parse('{"op":"user.create","args":{"nickname":"p","fullName":"P","email":"p@example.com","__proto__":{"admin":true}}}'),
        { op: 'constructor', args: {} },
        { op: 'user.create', args: { nickname: ['a'], fullName: { x: 1 }, email: 42 } },
        { op: 'user.list', args: { limit: 1e9 } },
        create('fine'),
      ],
    });
    assert.equal(perOp.state, 'completed');
    const { results } = perOp.value as { results: { ok: boolean; error?: { code: string } }[] };
    assert.deepEqual(results.map((r) => (r.ok ? 'ok' : r.error?.code)), ['INVALID_INPUT', 'INVALID_INPUT', 'INVALID_INPUT', 'INVALID_INPUT', 'INVALID_INPUT', 'ok']);
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
    assert.equal(({} as Record<string, unknown>).admin, undefined);
    assert.deepEqual(consumer.database?.listUsers({}).map((u) => u.nickname), ['fine'], 'only valid data stored');
    const client = newClient(t, { redisUrl: redis.url, queue });
    assert.equal((await client.getUser('fine')).nickname, 'fine', 'still serving');
  });

  it("writes each job's outcome to the reply stream the job names, which expires", async () => {
    const db = t.add(tempDb(), (d) => d.cleanup());
    await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath });
    const foreign = foreignProducer();
    assert.equal((await foreign.run({ v: 1, ops: [create('replied')], reply: 'r1' }, 'job-ok')).state, 'completed');
    assert.equal((await foreign.run({ v: 2, ops: [create('never')], reply: 'r1' }, 'job-bad')).state, 'failed');
    const admin = t.add(new Redis(redis.url), (r) => r.disconnect());
    const key = `bull:${queue}:userops:reply:r1`;
    const entries = await admin.xrange(key, '-', '+');
    assert.deepEqual(entries.map(([, fields]) => [fields[0], fields[1], fields[2]]), [['job', 'job-ok', 'returnvalue'], ['job', 'job-bad', 'failed']]);
    const [ok, bad] = entries.map(([, fields]) => fields[3] as string);
    assert.equal((JSON.parse(ok as string) as { results: { value: { nickname: string } }[] }).results[0]?.value.nickname, 'replied');
    assert.match(bad as string, /v: must be 1/);
    const ttl = await admin.pttl(key);
    assert.ok(ttl > 0 && ttl <= 10 * 60_000, `expires within 10 minutes (pttl ${ttl})`);
  });

  it('answers bad ops in a foreign job with per-op errors and applies the good ones', async () => {
    const db = t.add(tempDb(), (d) => d.cleanup());
    const consumer = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath });
    const foreign = foreignProducer();
    const outcome = await foreign.run({
      v: 1,
      ops: [create('good'), { op: 'user.create', args: { nickname: 'bad', fullName: 7 } }, { op: 'drop.table', args: {} }, null],
    });
    assert.equal(outcome.state, 'completed');
    const { results } = outcome.value as { results: { ok: boolean; error?: { code: string; message: string } }[] };
    assert.deepEqual(results.map((r) => (r.ok ? 'ok' : r.error?.code)), ['ok', 'INVALID_INPUT', 'INVALID_INPUT', 'INVALID_INPUT']);
    assert.match(results[1]?.error?.message ?? '', /fullName: must be a string \(got 7\)/);
    assert.deepEqual(consumer.database?.listUsers({}).map((u) => u.nickname), ['good']);
  });

  it('answers an op the store fails for no fault of the caller as INTERNAL, logs why, and applies its neighbours', async () => {
    const db = t.add(tempDb(), (d) => d.cleanup());
    const { log, lines } = capturedLog();
    const consumer = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath, logger: log });
    // Something in the file the code does not expect, as a hand-added trigger is.
    const other = new Database(db.dbPath);
    other.exec("CREATE TRIGGER no_mallory BEFORE INSERT ON users WHEN NEW.nickname = 'mallory' BEGIN SELECT RAISE(ABORT, 'mallory is banned here'); END");
    other.close();
    const outcome = await foreignProducer().run({ v: 1, ops: [create('alice'), create('mallory'), create('bob')] }, 'job-internal');
    assert.equal(outcome.state, 'completed');
    const { results } = outcome.value as { results: { ok: boolean; error?: { code: string; message: string } }[] };
    assert.deepEqual(results.map((r) => (r.ok ? 'ok' : r.error?.code)), ['ok', 'INTERNAL', 'ok']);
    assert.equal(results[1]?.error?.message, 'Internal error: mallory is banned here');
    assert.deepEqual(consumer.database?.listUsers({}).map((u) => u.nickname), ['alice', 'bob']);
    const logged = lines.filter((l) => l.msg === 'op failed with an internal error; answered INTERNAL, its neighbours applied');
    assert.equal(logged.length, 1);
    assert.equal(logged[0]?.level, 50);
    assert.equal(logged[0]?.jobId, 'job-internal');
    assert.equal(logged[0]?.op, 1);
    assert.match(String((logged[0]?.err as { stack?: unknown } | undefined)?.stack), /mallory is banned here/);
  });

  it('fails, without applying it, a flow parent that BullMQ failed because a required child failed', async () => {
    const db = t.add(tempDb(), (d) => d.cleanup());
    const { log, lines } = capturedLog();
    const consumer = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath, logger: log });
    const flows = t.add(new FlowProducer({ connection: { url: redis.url } }), (f) => f.close());
    const flow = await flows.add({
      name: 'parent',
      queueName: queue,
      data: { v: 1, ops: [create('parent-op')] },
      children: [
        { name: 'good', queueName: queue, data: { v: 1, ops: [create('child-op')] } },
        { name: 'bad', queueName: queue, data: { v: 9 }, opts: { failParentOnFailure: true } },
      ],
    });
    const q = plainQueue(t, redis.url, queue);
    const parentId = flow.job.id as string;
    await until('the parent to fail', async () => (await q.getJobState(parentId)) === 'failed');
    assert.match((await q.getJob(parentId))?.failedReason ?? '', /child .* failed/);
    assert.deepEqual(consumer.database?.listUsers({}).map((u) => u.nickname), ['child-op'], "the parent's op was not applied");
    assert.ok(lines.some((l) => l.msg === 'job failed by BullMQ before it was applied; failing it' && l.jobId === parentId));
  });

  it('completes a job whose timestamp is not a number, and the jobs beside it', async () => {
    const db = t.add(tempDb(), (d) => d.cleanup());
    const q = plainQueue(t, redis.url, queue);
    // Queued before the consumer runs, so all three are one group.
    await q.add('batch', { v: 1, ops: [create('before')] }, { jobId: 'ts-before' });
    await q.add('batch', { v: 1, ops: [create('odd')] }, { jobId: 'ts-odd', timestamp: 'abc' as unknown as number });
    await q.add('batch', { v: 1, ops: [create('after')] }, { jobId: 'ts-after' });
    await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath });
    for (const id of ['ts-before', 'ts-odd', 'ts-after']) await until(`${id} to complete`, async () => (await q.getJobState(id)) === 'completed');
  });

  /**
   * A job hash written by hand (as no Queue would) with `data` and `opts` as given, queued between
   * two good jobs; resolves once a consumer has completed both good ones.
   */
  async function handWrittenBetweenGoodJobs(id: string, data: string, opts: string) {
    const db = t.add(tempDb(), (d) => d.cleanup());
    const { log, lines } = capturedLog();
    const q = plainQueue(t, redis.url, queue);
    await q.add('batch', { v: 1, ops: [create('first')] }, { jobId: 'good-1' });
    const raw = t.add(new Redis(redis.url), (c) => c.disconnect());
    await raw.hset(`bull:${queue}:${id}`, 'name', 'batch', 'data', data, 'opts', opts, 'timestamp', String(Date.now()));
    await raw.lpush(`bull:${queue}:wait`, id);
    await q.add('batch', { v: 1, ops: [create('second')] }, { jobId: 'good-2' });
    await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath, logger: log });
    for (const good of ['good-1', 'good-2']) await until(`${good} to complete`, async () => (await q.getJobState(good)) === 'completed');
    return { db, lines, raw };
  }

  it('fails a job whose stored data is not JSON, lists it, and keeps the jobs fetched beside it', async () => {
    const { db, lines, raw } = await handWrittenBetweenGoodJobs('unreadable', '{not json', '{}');
    // Before, BullMQ's parse error lost the job's id: it stayed active and came back for ever.
    await until('the unreadable job to fail', async () => (await raw.zscore(`bull:${queue}:failed`, 'unreadable')) !== null);
    assert.match(await raw.hget(`bull:${queue}:unreadable`, 'failedReason') ?? '', /^data is not JSON \(.+\)$/);
    assert.ok(lines.some((l) => l.msg === 'malformed job rejected' && l.jobId === 'unreadable'));
    // A plain Queue cannot list the failed set now; `userops failed` can.
    const failed = await listFailed({ redisUrl: redis.url, queue, dbPath: db.dbPath, logLevel: 'silent' }, 10);
    assert.deepEqual(failed.map((j) => [j.id, j.ops]), [['unreadable', null]]);
    assert.match(failed[0]?.failedReason ?? '', /^data is not JSON/);
    // Before, the fetch round's failure dropped good-1 while it was locked: it completed only after stalling.
    assert.deepEqual(lines.filter((l) => l.msg === 'job stalled; it will be re-delivered').map((l) => l.jobId), []);
  });

  it('keeps the jobs fetched beside one whose stored options BullMQ cannot read', async () => {
    // BullMQ parses options before it knows the job's id, so this one cannot be failed: it is skipped.
    const { lines } = await handWrittenBetweenGoodJobs('bad-opts', '{"v":1,"ops":[]}', '{not json');
    assert.ok(lines.some((l) => l.msg === 'skipped a job whose stored options are not JSON; BullMQ cannot read it'));
    assert.deepEqual(lines.filter((l) => l.msg === 'job stalled; it will be re-delivered').map((l) => l.jobId), []);
  });

  it('stops gathering a group at a job past the byte limit, so a run of huge jobs is refused a few at a time', async () => {
    const db = t.add(tempDb(), (d) => d.cleanup());
    const { log, lines } = capturedLog();
    const q = plainQueue(t, redis.url, queue);
    const huge = { v: 1, ops: [{ op: 'user.get', args: { nickname: 'n'.repeat(4096) } }] };
    await q.add('batch', { v: 1, ops: [create('small-1')] }, { jobId: 'small-1' });
    for (let i = 0; i < 6; i++) await q.add('batch', huge, { jobId: `huge-${i}` });
    await q.add('batch', { v: 1, ops: [create('small-2')] }, { jobId: 'small-2' });
    await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath, maxJobBytes: 2048, logger: log });
    await until('small-2 to complete', async () => (await q.getJobState('small-2')) === 'completed');
    for (let i = 0; i < 6; i++) assert.match((await q.getJob(`huge-${i}`))?.failedReason ?? '', /data is at least \d+ bytes of JSON, more than the limit of 2048/);
    // Without the stop, rounds double while they come back full: 1 + 1 + 2 + 4 jobs in the first group.
    const groups = lines.filter((l) => l.msg === 'group committed').map((l) => l.jobs);
    assert.equal(groups[0], 2, `groups of ${groups.join(', ')}`);
    assert.ok(groups.every((n) => (n as number) <= 2), `groups of ${groups.join(', ')}`);
  });

  it('answers a job delivered again from the ledger and applies nothing twice', async () => {
    const db = t.add(tempDb(), (d) => d.cleanup());
    const consumer = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath });
    const foreign = foreignProducer();
    const payload = { v: 1, ops: [create('once'), { op: 'user.update', args: { nickname: 'once', fullName: 'Twice?' } }] };
    const first = await foreign.run(payload, 'job-again');
    assert.equal(first.state, 'completed');
    // Delivered again under the same id, as after a crash between commit and acknowledgement.
    await foreign.q.remove('job-again');
    const second = await foreign.run(payload, 'job-again');
    assert.deepEqual(second.value, first.value, 'the recorded results, not "exists"');
    assert.equal(consumer.database?.countUsers(), 1);
    assert.equal(consumer.database?.ledgerSize(), 1);
  });

  it('prunes ledger rows older than the retention on schedule, keeping newer ones', async () => {
    const db = t.add(tempDb(), (d) => d.cleanup());
    // 5,000 jobs applied two hours ago: more than one chunk.
    const store = new Store(db.dbPath);
    recordJobs(store, 'old-', 5000, Date.now() - 2 * 3_600_000);
    store.close();
    const consumer = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath, ledgerRetentionMs: 3_600_000, ledgerPruneIntervalMs: 1000 });
    assert.equal((await foreignProducer().run({ v: 1, ops: [create('new')] }, 'new-job')).state, 'completed');
    await until('the old ledger rows are pruned', () => consumer.database?.ledgerSize() === 1);
    assert.equal(consumer.database?.ledgerGet('new-job', payloadHash([create('new')])) !== undefined, true);
    assert.equal(consumer.database?.countUsers(), 5001, 'users untouched');
  });

  it('prunes when it starts, sparing what was recent when the database was last written', async () => {
    const db = t.add(tempDb(), (d) => d.cleanup());
    // Down for ten days after its last commit; a prune at start must not take that last hour.
    const last = Date.now() - 10 * 24 * 3_600_000;
    const store = new Store(db.dbPath);
    recordJobs(store, 'old-', 3000, last - 2 * 3_600_000);
    applyJobs(store, [{ id: 'in-hand', ops: [create('inhand')] }], last);
    store.close();
    // The default interval (an hour): only the prune at start can run during this test.
    const consumer = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath, ledgerRetentionMs: 3_600_000 });
    await until('the rows already old at the last commit are pruned', () => consumer.database?.ledgerSize() === 1);
    // Re-delivered as after a crash: answered from the ledger, not applied again.
    const again = await foreignProducer().run({ v: 1, ops: [create('inhand')] }, 'in-hand');
    assert.deepEqual((again.value as { results: { ok: boolean }[] }).results.map((r) => r.ok), [true], 'the recorded result, not "exists"');
  });

  it('commits waiting jobs as one group, in queue order, failing only the malformed one', async () => {
    const db = t.add(tempDb(), (d) => d.cleanup());
    const foreign = foreignProducer();
    // Queued before any consumer runs, so the consumer finds them all waiting.
    const jobs = [
      { v: 1, ops: [create('g1')] },
      { v: 1, ops: [{ op: 'user.update', args: { nickname: 'g1', fullName: 'Second' } }] },
      { v: 99, ops: [create('never')] },
      { v: 1, ops: [{ op: 'user.update', args: { nickname: 'g1', fullName: 'Third' } }, create('g2')] },
    ];
    const added: Job[] = [];
    for (const data of jobs) added.push(await foreign.q.add('x', data));
    const lines: string[] = [];
    const logger = pino({ level: 'debug' }, { write: (line: string) => void lines.push(line) });
    const consumer = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath, logger });
    // Read outcomes from the jobs themselves: they may finish before any events reader starts.
    const states = async () => Promise.all(added.map(async (job) => (await foreign.q.getJob(job.id as string))?.finishedOn));
    while ((await states()).some((finished) => !finished)) await new Promise((r) => setTimeout(r, 20));
    const finished = await Promise.all(added.map((job) => foreign.q.getJob(job.id as string)));
    assert.deepEqual(finished.map((job) => (job?.failedReason ? 'failed' : 'completed')), ['completed', 'completed', 'failed', 'completed']);
    assert.equal(consumer.database?.getUser({ nickname: 'g1' }).fullName, 'Third', 'applied in queue order');
    assert.equal(consumer.database?.countUsers(), 2);
    const applied = lines.map((l) => JSON.parse(l) as { msg: string; groupJobs?: number }).filter((l) => l.msg === 'job applied');
    assert.equal(applied.length, 3);
    assert.ok(applied.every((l) => l.groupJobs === 4), 'the four waiting jobs were taken as one group');
  });

  it('retries a job in place while SQLite is locked, then applies it once', async () => {
    const db = t.add(tempDb(), (d) => d.cleanup());
    const lines: string[] = [];
    const logger = pino({ level: 'warn' }, { write: (line: string) => void lines.push(line) });
    const consumer = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath, busyTimeoutMs: 10, logger });
    const locker = t.add(new Database(db.dbPath), (d) => d.close());
    locker.exec('BEGIN IMMEDIATE');
    const client = newClient(t, { redisUrl: redis.url, queue, timeoutMs: 20_000 });
    const call = client.createUser({ nickname: 'patient', fullName: 'P', email: 'p@example.com' });
    // Wait for the consumer to say why it is retrying, then release the lock.
    while (!lines.some((l) => l.includes('SQLITE_BUSY'))) await new Promise((r) => setTimeout(r, 20));
    locker.exec('ROLLBACK');
    assert.equal((await call).nickname, 'patient');
    assert.equal(consumer.database?.countUsers(), 1);
    assert.match(lines.find((l) => l.includes('SQLITE_BUSY')) ?? '', /retrying in place/);
  });

  it('says plainly that a job was gone from Redis when it comes to record its outcome', async () => {
    const db = t.add(tempDb(), (d) => d.cleanup());
    const { log, lines } = capturedLog();
    await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath, busyTimeoutMs: 10, logger: log });
    // The commit waits on this lock while the job is deleted, as a Redis restarted empty would.
    const locker = t.add(new Database(db.dbPath), (d) => d.close());
    locker.exec('BEGIN IMMEDIATE');
    const q = plainQueue(t, redis.url, queue);
    await q.add('batch', { v: 1, ops: [create('vanishing')] }, { jobId: 'vanishing' });
    await until('the commit to wait on the lock', () => lines.some((l) => String(l.msg).includes('retrying in place')));
    const raw = t.add(new Redis(redis.url), (c) => c.disconnect());
    await raw.del(`bull:${queue}:vanishing`);
    locker.exec('ROLLBACK');
    await until('the outcome to be refused', () => lines.some((l) => l.jobId === 'vanishing' && l.level === 40));
    const line = lines.find((l) => l.jobId === 'vanishing' && l.level === 40);
    assert.equal(line?.msg, 'a job was gone from Redis before its outcome could be recorded there (did Redis restart without its data?)');
    assert.match(String(line?.reason), /^Missing key for job vanishing/);
    assert.equal(line?.err, undefined, 'no stack: it says nothing more');
  });

  it('hands back a lone job and the job found during its commit, in queue order, when it closes', async () => {
    const db = t.add(tempDb(), (d) => d.cleanup());
    const lines: string[] = [];
    const logger = pino({ level: 'warn' }, { write: (line: string) => void lines.push(line) });
    const first = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath, busyTimeoutMs: 10, logger });
    const foreign = foreignProducer();
    // One lone job makes the consumer idle: it commits the next job alone and looks for more meanwhile.
    assert.equal((await foreign.run({ v: 1, ops: [create('warm')] })).state, 'completed');
    const locker = t.add(new Database(db.dbPath), (d) => d.close());
    locker.exec('BEGIN IMMEDIATE');
    // Both waiting at once: the first is taken alone (its commit then waits on the lock), the second by the look for more.
    const [created, renamed] = await foreign.q.addBulk([
      { name: 'x', data: { v: 1, ops: [create('ordered')] } },
      { name: 'x', data: { v: 1, ops: [{ op: 'user.update', args: { nickname: 'ordered', fullName: 'Second' } }] } },
    ]);
    await until('the commit to wait on the lock', () => lines.some((l) => l.includes('SQLITE_BUSY')), 15_000);
    await first.close();
    const handedBack = lines.map((l) => JSON.parse(l) as { msg: string; jobs?: number }).find((l) => l.msg.startsWith('jobs returned to the head'));
    assert.equal(handedBack?.jobs, 2, 'the job in hand and the one found meanwhile both went back');
    assert.deepEqual((await foreign.q.getWaiting()).map((j) => j.id).sort(), [created?.id, renamed?.id].sort(), 'both waiting again');
    locker.exec('ROLLBACK');
    const second = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath });
    await until('both jobs to complete', async () => (await foreign.q.getCompletedCount()) === 3, 15_000);
    // In the wrong order the rename would fail (no such user) and the name would stay 'N'.
    assert.equal(second.database?.getUser({ nickname: 'ordered' }).fullName, 'Second', 'created, then renamed');
  });

  it('refuses to start when Redis is unreachable, saying so, and closes twice safely', async () => {
    const db = t.add(tempDb(), (d) => d.cleanup());
    const port = await freePort();
    const consumer = new UserOpsConsumer({ redisUrl: `redis://:pw@127.0.0.1:${port}`, queue, dbPath: db.dbPath, startTimeoutMs: 500 });
    await assert.rejects(consumer.start(), (err: unknown) => {
      assert.ok(err instanceof RedisUnavailableError);
      assert.match(err.message, new RegExp(`127\\.0\\.0\\.1:${port}`));
      assert.doesNotMatch(err.message, /:pw@/);
      return true;
    });
    await consumer.close();
    await consumer.close();
  });

  it('waits for an unreachable Redis with one warning, not an error per retry, and says when it is back', async () => {
    const password = 'watch-secret';
    const own = t.add(await TestRedis.start(['--requirepass', password]), (r) => r.stop());
    await own.kill();
    const db = t.add(tempDb(), (d) => d.cleanup());
    const { log, lines } = capturedLog();
    const consumer = t.add(new UserOpsConsumer({ redisUrl: `redis://:${password}@127.0.0.1:${own.port}`, queue, dbPath: db.dbPath, logger: log }), (c) => c.close());
    const started = consumer.start();
    // Each reconnect attempt is refused on each of the worker's connections: wait for a few rounds.
    const refused = () => lines.filter((l) => (l.err as { code?: string } | undefined)?.code === 'ECONNREFUSED');
    await until('a few refused reconnects', () => refused().length >= 6);
    assert.deepEqual(refused().filter((l) => (l.level as number) >= 50), [], 'a refused connection is no error of its own');
    const where = `redis://:***@127.0.0.1:${own.port}`;
    const waiting = lines.filter((l) => l.msg === `waiting for Redis at ${where}`);
    assert.ok(waiting.length >= 1 && waiting.length < refused().length, 'said once, not per retry');
    assert.equal(waiting[0]?.level, 40);
    assert.equal(waiting[0]?.reason, `connect ECONNREFUSED 127.0.0.1:${own.port}`);
    await own.restart();
    await started;
    await until('the consumer to say Redis is back', () => lines.some((l) => l.msg === `Redis reachable again at ${where}` && l.level === 30));
    assert.ok(!JSON.stringify(lines).includes(password), 'the password is never logged');
  });

  it('tells connection errors, which the outage line reports, from genuine worker errors', async () => {
    const connection = t.add(new Redis(redis.url, { maxRetriesPerRequest: null }), (c) => c.disconnect());
    const watch = t.add(new RedisWatch(connection, redis.url, capturedLog().log), (w) => w.stop());
    await until('the connection to be ready', () => connection.status === 'ready');
    const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED', syscall: 'connect' });
    assert.equal(watch.isOutageNoise(refused), true);
    assert.equal(watch.isOutageNoise(new Error('Connection is closed.')), true);
    assert.equal(watch.isOutageNoise(new Error('Missing lock for job 1. moveToFinished')), false);
    connection.disconnect();
    await until('the connection to end', () => connection.status === 'end');
    assert.equal(watch.isOutageNoise(new Error('Missing lock for job 1. moveToFinished')), true, 'while disconnected, every error echoes the outage');
  });

  it('closes within seconds when Redis has died', async () => {
    const own = t.add(await TestRedis.start(), (r) => r.stop());
    const db = t.add(tempDb(), (d) => d.cleanup());
    const consumer = new UserOpsConsumer({ redisUrl: own.url, queue, dbPath: db.dbPath });
    await consumer.start();
    await own.kill();
    const started = Date.now();
    await consumer.close();
    assert.ok(Date.now() - started < 5000, `close took ${Date.now() - started} ms`);
    assert.equal(consumer.database?.db.open, false, 'SQLite closed');
  });

  it('rejects invalid options by name', () => {
    assert.throws(() => new UserOpsConsumer({ dbPath: 'x.db', lockDurationMs: 5 }), /Invalid consumer options: lockDurationMs: .*\(got 5\)/);
  });
});
