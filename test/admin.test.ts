/**
 * The admin commands. Numbers and state transitions are checked by calling each command's module
 * in-process (a real consumer, Redis and SQLite file all the same), which costs milliseconds; the
 * CLI surface (exit codes, one-line errors, tables) through the real `userops` process, which
 * costs a second or two a run, so only where it adds something.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { beforeEach, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { type Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';

import { backupDatabase, type BackupSummary } from '../src/cli/backup.js';
import { listFailed } from '../src/cli/failed.js';
import { retryAll, retryJob } from '../src/cli/retry.js';
import { collectStats, formatStats } from '../src/cli/stats.js';
import { type AdminConfig, type ConfigEntry, describeConfig, ENV_HELP } from '../src/config.js';
import { applyJob } from '../src/consumer/apply.js';
import type { ConsumerOptions } from '../src/consumer/options.js';
import { Store } from '../src/consumer/store.js';
import { ConfigError, JobNotFailedError, JobNotFoundError } from '../src/protocol/errors.js';
import { runCli, spawnConsumer } from './helpers/cli.js';
import { newClient, plainQueue, redisSuite, startConsumer, tempDb } from './helpers/fixtures.js';
import { freePort } from './helpers/redis-server.js';

const s = redisSuite();
let env: Record<string, string>;
let config: AdminConfig;
let consumerOptions: ConsumerOptions;
let dir: string;

beforeEach(() => {
  const db = s.t.add(tempDb(), (d) => d.cleanup());
  dir = db.dir;
  env = { REDIS_URL: s.redis.url, USEROPS_QUEUE: s.queue, USEROPS_DB: db.dbPath };
  config = { redisUrl: s.redis.url, queue: s.queue, dbPath: db.dbPath, logLevel: 'silent' };
  consumerOptions = { redisUrl: s.redis.url, queue: s.queue, dbPath: db.dbPath };
});

const user = (nickname: string) => ({ nickname, fullName: 'Admin Test', email: `${nickname}@example.com` });
const createOp = (nickname: string) => ({ op: 'user.create', args: user(nickname) });
type Results = { results: { ok: boolean }[] };

/** Polls until the job reaches `state` (a QueueEvents reader would cost one more connection). */
async function untilState(queue: Queue, jobId: string, state: string): Promise<void> {
  while ((await queue.getJobState(jobId)) !== state) await sleep(20);
}

describe('userops stats', () => {
  it('counts what the test did: jobs by state, users, ledger rows, and names the writer', async () => {
    await startConsumer(s.t, consumerOptions);
    const client = newClient(s.t, { redisUrl: s.redis.url, queue: s.queue });
    // One call at a time: one job each, so the completed count is known.
    for (let i = 0; i < 5; i++) await client.createUser(user(`stat${i}`));
    const queue = plainQueue(s.t, s.redis.url, s.queue);
    await queue.add('batch', { v: 1, ops: 'not an array' }, { jobId: 'bad-1' });
    await untilState(queue, 'bad-1', 'failed');

    const stats = await collectStats(config);
    assert.deepEqual(stats.jobs, { waiting: 0, prioritized: 0, delayed: 0, active: 0, completed: 5, failed: 1 });
    assert.equal(stats.paused, false);
    assert.equal(stats.bullmq5Paused, 0);
    assert.ok(stats.writer.held);
    assert.equal(stats.writer.pid, process.pid, 'the consumer runs in this process');
    assert.ok(stats.writer.ttlMs > 0);
    assert.ok(stats.database.available, JSON.stringify(stats.database));
    assert.equal(stats.database.users, 5);
    assert.equal(stats.database.ledgerRows, 5);
    assert.equal(stats.database.servesQueue, true);
    assert.equal(stats.database.dbId, stats.queueDbId);
    assert.ok(stats.database.bytes.db > 0);

    const human = await runCli(['stats'], env);
    assert.equal(human.code, 0, human.stderr);
    assert.match(human.stdout, /^users +5$/m);
    assert.match(human.stdout, /completed 5, failed 1/);
    assert.match(human.stdout, new RegExp(`^writer +\\S+ pid ${process.pid} `, 'm'));
  });

  it('reports the Redis side when the database is elsewhere, and creates no file', async () => {
    const missing = join(dir, 'elsewhere', 'userops.db');
    const stats = await collectStats({ ...config, dbPath: missing });
    assert.equal(stats.writer.held, false);
    assert.equal(stats.jobs.waiting, 0);
    assert.deepEqual(stats.database, {
      available: false,
      path: missing,
      reason: 'no database file here (USEROPS_DB); the consumer may run on another machine',
    });
    assert.match(formatStats(stats), /^writer +none .*\n(.*\n)*database +\S+\n +unavailable: no database file here/m);
    assert.equal(existsSync(join(dir, 'elsewhere')), false, 'no folder or database created');
  });

  it('exits 3 within the connect deadline when Redis is unreachable, password hidden', async () => {
    const port = await freePort();
    const r = await runCli(['stats'], { ...env, REDIS_URL: `redis://:hunter2@127.0.0.1:${port}` });
    assert.equal(r.code, 3);
    assert.match(r.stderr, /^userops: REDIS_UNAVAILABLE: Redis at redis:\/\/:\*\*\*@127\.0\.0\.1:\d+ is unavailable: connect ECONNREFUSED[^\n]*\n$/);
    assert.doesNotMatch(r.stderr, /hunter2/);
  });
});

describe('a REDIS_URL naming a database Redis does not have', () => {
  it('is a configuration error for the commands, the client and the consumer, not database 0', async () => {
    // redis-server has 16 databases unless told otherwise; ioredis carries on in 0 when SELECT fails.
    const url = `${s.redis.url}/99`;
    const r = await runCli(['stats'], { ...env, REDIS_URL: url });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /^userops: INVALID_CONFIG: Redis at redis:\/\/127\.0\.0\.1:\d+\/99 has no such database \(ERR DB index is out of range\)\n$/);
    const client = newClient(s.t, { redisUrl: url, queue: s.queue });
    await assert.rejects(client.createUser(user('nowhere')), (err: unknown) => err instanceof ConfigError && /has no such database/.test(err.message));
    const consumer = spawnConsumer({ ...env, REDIS_URL: url });
    assert.equal(await consumer.exited, 2);
    // Nothing reached database 0, where the same queue could be served.
    const db0 = s.t.add(new Redis(s.redis.url), (c) => c.disconnect());
    assert.deepEqual(await db0.keys(`bull:${s.queue}:*`), []);
  });
});

describe('userops failed and retry', () => {
  it('lists malformed jobs newest first with their reasons; a retried malformed job fails again', async () => {
    await startConsumer(s.t, consumerOptions);
    const queue = plainQueue(s.t, s.redis.url, s.queue);
    await queue.add('batch', { v: 1, ops: [] }, { jobId: 'empty-1' });
    await untilState(queue, 'empty-1', 'failed');
    await queue.add('batch', { v: 2, ops: [createOp('x')] }, { jobId: 'v2-1' });
    await untilState(queue, 'v2-1', 'failed');

    const failed = await listFailed(config, 20);
    assert.deepEqual(failed.map((j) => [j.id, j.ops, j.attemptsMade]), [['v2-1', 1, 1], ['empty-1', 0, 1]], 'newest first');
    assert.match(failed[1]?.failedReason ?? '', /^Invalid job: ops: must hold at least one op/);
    assert.match(failed[0]?.failedReason ?? '', /v: must be 1 \(the protocol version\) \(got 2\)/);
    assert.ok(failed.every((j) => j.failedAt !== null));
    assert.deepEqual((await listFailed(config, 1)).map((j) => j.id), ['v2-1']);
    const table = await runCli(['failed', '--limit', '1'], env);
    assert.equal(table.code, 0, table.stderr);
    assert.match(table.stdout, /^ID +FAILED AT +OPS +ATTEMPTS +REASON\nv2-1 +\S+ +1 +1 +Invalid job: v: must be 1[^\n]*\n$/);
    // The next page, then one past the end, which must not read as "no failed jobs" at all.
    assert.deepEqual((await listFailed(config, 1, 1)).map((j) => j.id), ['empty-1']);
    const page2 = await runCli(['failed', '--limit', '1', '--offset', '1', '--json'], env);
    assert.equal(page2.code, 0, page2.stderr);
    assert.deepEqual((JSON.parse(page2.stdout) as { id: string }[]).map((j) => j.id), ['empty-1']);
    const past = await runCli(['failed', '--offset', '2'], env);
    assert.equal(past.stdout, 'no failed jobs after the newest 2\n');

    const finishedBefore = (await queue.getJob('empty-1'))?.finishedOn ?? 0;
    assert.deepEqual(await retryJob(config, 'empty-1'), { retried: ['empty-1'], skipped: [] });
    // Failed again, later: the consumer took it a second time.
    while ((await queue.getJobState('empty-1')) !== 'failed' || ((await queue.getJob('empty-1'))?.finishedOn ?? 0) <= finishedBefore) {
      await sleep(20);
    }
    assert.equal(await queue.getFailedCount(), 2);
  });

  it('prints control characters in what others wrote (job ids, reasons) as escapes, never raw to the terminal', async () => {
    await startConsumer(s.t, consumerOptions);
    const queue = plainQueue(s.t, s.redis.url, s.queue);
    // Clears the screen, sets the title and prints a fake all-clear, if printed raw.
    const hostile = 'x\u001b]0;PWNED\u0007\u001b[2J\u001b[Hno failed jobs\u001b[8m';
    await queue.add('batch', { v: 1, ops: [] }, { jobId: hostile });
    await untilState(queue, hostile, 'failed');
    const table = await runCli(['failed'], env);
    assert.equal(table.code, 0, table.stderr);
    assert.ok(![...table.stdout].some((c) => c !== '\n' && /\p{Cc}/u.test(c)), 'no control character but newlines reaches the terminal');
    assert.ok(table.stdout.includes('x\\x1b]0;PWNED\\x07\\x1b[2J\\x1b[Hno failed jobs\\x1b[8m'), table.stdout);
    // --json is for scripts: the id comes back exactly, JSON-escaped.
    const json = await runCli(['failed', '--json'], env);
    assert.equal((JSON.parse(json.stdout) as { id: string }[])[0]?.id, hostile);
  });

  it('says which job ids are unknown or not failed, and checks its arguments', async () => {
    await startConsumer(s.t, consumerOptions);
    const client = newClient(s.t, { redisUrl: s.redis.url, queue: s.queue });
    await client.createUser(user('done'));
    const queue = plainQueue(s.t, s.redis.url, s.queue);
    const [completedId] = await queue.getRanges(['completed']);

    await assert.rejects(retryJob(config, completedId as string), new JobNotFailedError(completedId as string, 'completed'));
    await assert.rejects(retryJob(config, 'no-such-job'), JobNotFoundError);
    const unknown = await runCli(['retry', 'no-such-job'], env);
    assert.equal(unknown.code, 1);
    assert.equal(unknown.stderr, "userops: JOB_NOT_FOUND: Job no-such-job doesn't exist (finished jobs are kept for a while, then removed)\n");

    const both = await runCli(['retry', 'x', '--all'], env);
    assert.equal(both.code, 2);
    assert.equal(both.stderr, "userops: give a job id or --all (one of the two) (run 'userops retry --help' for usage)\n");
    const limit = await runCli(['failed', '--limit', '1001'], env);
    assert.equal(limit.code, 2);
    assert.match(limit.stderr, /^userops: option '--limit <n>' argument '1001' is invalid\. expected a whole number from 1 to 1000, got "1001" \(run 'userops failed --help' for usage\)\n$/);
    const offset = await runCli(['failed', '--offset', '-1'], env);
    assert.equal(offset.code, 2);
    assert.match(offset.stderr, /^userops: option '--offset <n>' argument '-1' is invalid\. expected a whole number, 0 or more, got "-1" /);
  });

  it('applies a job that failed for being too large once the limit is raised', async () => {
    const small = await startConsumer(s.t, { ...consumerOptions, maxOpsPerJob: 2 });
    const queue = plainQueue(s.t, s.redis.url, s.queue);
    await queue.add('batch', { v: 1, ops: [createOp('big1'), createOp('big2'), createOp('big3')] }, { jobId: 'big' });
    await untilState(queue, 'big', 'failed');
    await small.close();

    await startConsumer(s.t, consumerOptions);
    assert.deepEqual(await retryAll(config), { retried: ['big'], skipped: [] });
    await untilState(queue, 'big', 'completed');
    const job = await queue.getJob('big');
    assert.deepEqual((job?.returnvalue as Results).results.map((r) => r.ok), [true, true, true]);
    assert.equal(job?.attemptsMade, 1, 'attempts counted afresh');
    const stats = await collectStats(config);
    assert.ok(stats.database.available);
    assert.equal(stats.database.users, 3);
    assert.equal(stats.jobs.failed, 0);
  });

  it('answers a retried job that had been applied from the ledger, applying nothing twice', async () => {
    // The job was applied, then failed without its acknowledgement (stalled too often, say).
    const payload = { v: 1, ops: [createOp('once')] };
    const store = new Store(config.dbPath);
    applyJob(store, 'applied-1', payload, 1000);
    store.close();
    const queue = plainQueue(s.t, s.redis.url, s.queue);
    await queue.add('batch', payload, { jobId: 'applied-1' });
    const connection = s.t.add(new Redis(s.redis.url, { maxRetriesPerRequest: null }), (c) => c.disconnect());
    const worker = s.t.add(new Worker(s.queue, null, { connection, autorun: false }), (w) => w.close());
    const token = randomUUID();
    const taken = await worker.getNextJob(token);
    assert.ok(taken);
    assert.equal(taken.id, 'applied-1');
    await taken.moveToFailed(new Error('job stalled more than allowable limit'), token, false);
    await worker.close();

    await startConsumer(s.t, consumerOptions);
    assert.deepEqual(await retryJob(config, 'applied-1'), { retried: ['applied-1'], skipped: [] });
    await untilState(queue, 'applied-1', 'completed');
    const job = await queue.getJob('applied-1');
    // Applied a second time, the create would have answered USER_EXISTS.
    assert.deepEqual((job?.returnvalue as Results).results.map((r) => r.ok), [true]);
    const stats = await collectStats(config);
    assert.ok(stats.database.available);
    assert.equal(stats.database.users, 1);
  });
});

describe('userops backup', () => {
  it('copies the live database while clients write: sound, and holding every user resolved before', async () => {
    const first = await startConsumer(s.t, consumerOptions);
    const client = newClient(s.t, { redisUrl: s.redis.url, queue: s.queue, timeoutMs: 60_000 });
    const before = await Promise.all(Array.from({ length: 300 }, (_, i) => client.createUser(user(`pre${i}`))));
    // Clients keep writing, ten calls at a time, until the backup (another process) is done.
    let backingUp = true;
    let written = 0;
    const writing = (async () => {
      while (backingUp) {
        await Promise.all(Array.from({ length: 10 }, () => client.createUser(user(`during${written++}`))));
      }
    })();
    const file = join(dir, 'backup.db');
    const run = await runCli(['backup', file], env).finally(() => (backingUp = false));
    await writing;
    assert.equal(run.code, 0, run.stderr);
    const summary = JSON.parse(run.stdout) as BackupSummary;
    const total = 300 + written;

    assert.equal(summary.path, file);
    assert.equal(summary.integrity, 'ok');
    assert.equal(statSync(file).mode & 0o777, 0o600, 'it holds every user: readable by its owner only, whatever the umask');
    assert.ok(summary.users > 300 && summary.users < total, `${summary.users} of ${total}: taken while clients wrote`);
    const copy = new Store(file);
    try {
      assert.deepEqual(copy.db.pragma('integrity_check', { simple: true }), 'ok');
      assert.equal(copy.countUsers(), summary.users);
      for (const u of before) assert.deepEqual(copy.getUser({ nickname: u.nickname }), u);
      assert.equal(copy.ledgerSize(), summary.ledgerRows);
    } finally {
      copy.close();
    }

    const again = await runCli(['backup', file], env);
    assert.equal(again.code, 2);
    assert.equal(again.stderr, `userops: INVALID_CONFIG: Invalid <file>: ${file} exists; pass --force to replace it\n`);
    const forced = await backupDatabase(config.dbPath, file, { force: true });
    assert.equal(forced.users, total, 'every write done by now');
    await assert.rejects(backupDatabase(config.dbPath, config.dbPath, { force: true }), /is the live database \(USEROPS_DB\)/);

    // Restore as the README says: stop, replace the file, drop the stale -wal/-shm, start.
    await client.createUser(user('after-backup'));
    await first.close();
    copyFileSync(file, config.dbPath);
    rmSync(`${config.dbPath}-wal`, { force: true });
    rmSync(`${config.dbPath}-shm`, { force: true });
    await startConsumer(s.t, consumerOptions);
    const restored = await collectStats(config);
    assert.ok(restored.database.available);
    assert.equal(restored.database.users, total, 'the restored database, without the user made after the backup');
    assert.equal(restored.database.servesQueue, true, 'same db_id: the queue accepts it');
    assert.equal((await client.getUser('pre0')).nickname, 'pre0');
  });

  it('refuses a directory as <file>, with or without --force, before copying anything', async () => {
    await startConsumer(s.t, consumerOptions);
    const folder = join(dir, 'backups');
    mkdirSync(folder);
    const message = `userops: INVALID_CONFIG: Invalid <file>: ${folder} is a directory; give the path of a file to write, e.g. ${join(folder, 'userops-backup.db')}\n`;
    for (const args of [['backup', folder], ['backup', '--force', folder]]) {
      const run = await runCli(args, env);
      assert.equal(run.code, 2, run.stderr);
      assert.equal(run.stderr, message);
      assert.equal(run.stdout, '');
    }
    assert.deepEqual(readdirSync(folder), []);
    assert.deepEqual(readdirSync(dir).filter((name) => name.includes('.partial-')), [], 'no partial copy left beside it');
  });

  it('refuses a database that is not there, and creates none', async () => {
    const missing = join(dir, 'nope', 'userops.db');
    await assert.rejects(
      backupDatabase(missing, join(dir, 'b.db'), { force: false }),
      (err: unknown) => err instanceof ConfigError && err.message === `Invalid USEROPS_DB: cannot back up ${missing}: no database file there`,
    );
    assert.equal(existsSync(join(dir, 'nope')), false);
    assert.equal(existsSync(join(dir, 'b.db')), false);
  });
});

describe('userops config', () => {
  it('shows every variable with its source, the Redis password redacted', async () => {
    const url = 'redis://admin:s3cret@127.0.0.1:6399/2';
    const entries = describeConfig({
      ...env,
      REDIS_URL: url,
      USEROPS_TIMEOUT_MS: '',
      USEROPS_DASHBOARD: '1',
      USEROPS_DASHBOARD_USER: 'ops',
      USEROPS_DASHBOARD_PASSWORD: 'dashpw',
    });
    const byName = Object.fromEntries(entries.map((e) => [e.variable, e]));
    assert.deepEqual(
      [byName.REDIS_URL?.value, byName.REDIS_URL?.source],
      ['redis://admin:***@127.0.0.1:6399/2', 'env'],
    );
    assert.deepEqual([byName.USEROPS_TIMEOUT_MS?.value, byName.USEROPS_TIMEOUT_MS?.source], ['30000', 'default']);
    assert.deepEqual([byName.USEROPS_DB?.value, byName.USEROPS_DB?.source], [config.dbPath, 'env']);
    assert.deepEqual([byName.USEROPS_DASHBOARD_USER?.value, byName.USEROPS_DASHBOARD_PASSWORD?.value], ['ops', '***']);
    assert.deepEqual(entries.map((e) => e.variable), Object.keys(ENV_HELP), 'every variable, in the help order');
    assert.throws(() => describeConfig({ USEROPS_MAX_JOB_BYTES: '12' }), /USEROPS_MAX_JOB_BYTES: must be at least 1024 \(got "12"\)/);

    const json = await runCli(['config', '--json'], { ...env, REDIS_URL: url });
    assert.equal(json.code, 0, json.stderr);
    assert.deepEqual((JSON.parse(json.stdout) as ConfigEntry[]).find((e) => e.variable === 'REDIS_URL')?.value, 'redis://admin:***@127.0.0.1:6399/2');
    const table = await runCli(['config'], { ...env, REDIS_URL: url });
    assert.equal(table.code, 0, table.stderr);
    assert.match(table.stdout, /^REDIS_URL +redis:\/\/admin:\*\*\*@127\.0\.0\.1:6399\/2 +env$/m);
    assert.doesNotMatch(json.stdout + json.stderr + table.stdout + table.stderr, /s3cret/);
  });
});
