/**
 * Other services' BullMQ clients on the same queue, as docs/protocol.md invites: a Queue opened
 * with BullMQ's defaults, and a BullMQ 5 one (the `bullmq5` dev dependency is the real package).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Queue as Queue5 } from 'bullmq5';
import { Redis } from 'ioredis';

import { collectStats, formatStats } from '../src/cli/stats.js';
import { EVENTS_STREAM_MAX_LEN } from '../src/redis.js';
import { capturedLog, plainQueue, redisSuite, startConsumer, tempDb, until, user } from './helpers/fixtures.js';

const s = redisSuite();

describe('other producers on the queue', () => {
  it("sets the events stream's cap back when another Queue raised it, and warns once", async () => {
    const { t, redis, queue } = s;
    const db = t.add(tempDb(), (d) => d.cleanup());
    const { log, lines } = capturedLog();
    await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath, logger: log, queueCheckIntervalMs: 200 });
    const probe = t.add(new Redis(redis.url), (r) => r.disconnect());
    const meta = `bull:${queue}:meta`;

    // Another team's producer, opened with BullMQ's defaults: it writes 10,000 over userops' cap.
    const theirs = plainQueue(t, redis.url, queue);
    await theirs.waitUntilReady();
    const warnings = () => lines.filter((l) => typeof l.msg === 'string' && l.msg.startsWith("the events stream's cap was 10000, set back to 1000"));
    await until('the cap raised by their Queue, and set back', () => warnings().length > 0);
    assert.equal(await probe.hget(meta, 'opts.maxLenEvents'), String(EVENTS_STREAM_MAX_LEN));

    // And the stream is really held to it: ~4 events per job, 6,000 entries under their cap.
    const jobs = Array.from({ length: 1500 }, (_, i) => ({ name: 'batch', data: { v: 1, ops: [{ op: 'user.create', args: user(`u${i}`) }] } }));
    await theirs.addBulk(jobs);
    await until('every job applied', async () => (await theirs.getCompletedCount()) === 1500, 60_000);
    const length = await probe.xlen(`bull:${queue}:events`);
    assert.ok(length < 1.5 * EVENTS_STREAM_MAX_LEN, `events stream held to about ${EVENTS_STREAM_MAX_LEN} entries (got ${length})`);

    assert.equal(warnings().length, 1, 'one warning, not one per check');
    assert.match(String(warnings()[0]?.msg), /open every Queue of this queue with streams: \{ events: \{ maxLen: 1000 \} \}/);
  });

  it("warns about a BullMQ 5 Queue and the jobs it parks in BullMQ 5's paused list, which a BullMQ 6 resume brings back", async () => {
    const { t, redis, queue } = s;
    const db = t.add(tempDb(), (d) => d.cleanup());
    const { log, lines } = capturedLog();
    const consumer = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath, logger: log, queueCheckIntervalMs: 200 });
    const warned = (start: string) => lines.some((l) => l.level === 40 && typeof l.msg === 'string' && l.msg.startsWith(start));

    const connection = t.add(new Redis(redis.url, { maxRetriesPerRequest: null }), (c) => c.disconnect());
    const five = t.add(new Queue5(queue, { connection }), (q) => q.close());
    await five.waitUntilReady();
    await until('the BullMQ 5 warning', () => warned('a BullMQ 5 Queue opened on this queue (bullmq:5.'));

    // Paused by BullMQ 5, a job it adds goes to its own paused list, which BullMQ 6 never reads.
    await five.pause();
    await five.add('batch', { v: 1, ops: [{ op: 'user.create', args: user('five') }] });
    await until('the paused-list warning', () => warned(`1 job(s) wait in bull:${queue}:paused, BullMQ 5's list`));
    // BullMQ 6's counts leave that list out; stats and metrics count it.
    const config = { redisUrl: redis.url, queue, dbPath: db.dbPath, logLevel: 'silent' } as const;
    const stats = await collectStats(config);
    assert.equal(stats.bullmq5Paused, 1);
    assert.equal(stats.jobs.waiting, 0);
    assert.match(formatStats(stats), /^ +1 in BullMQ 5's paused list: no consumer takes them until a BullMQ 6 resume\(\)/m);
    assert.match(await consumer.metrics.registry.metrics(), /^userops_queue_jobs\{state="bullmq5_paused"\} 1$/m);

    // BullMQ 6's resume moves them into line; BullMQ 5's would have renamed them over it.
    const six = plainQueue(t, redis.url, queue);
    await six.resume();
    const applied = consumer.database?.db.prepare<[string], { n: number }>('SELECT count(*) AS n FROM users WHERE nickname = ?');
    await until('the job from the paused list applied', () => applied?.get('five')?.n === 1);
    await until('the all-clear', () => lines.some((l) => l.msg === "BullMQ 5's paused list is empty again"));
    const after = await collectStats(config);
    assert.equal(after.bullmq5Paused, 0);
    assert.doesNotMatch(formatStats(after), /BullMQ 5/);
    assert.equal(lines.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('a BullMQ 5 Queue')).length, 1, 'warned once');
  });
});
