/**
 * Redis over its maxmemory (policy noeviction, as BullMQ requires): it answers PING and reads but
 * refuses every write with "OOM command not allowed". A real redis-server, squeezed with
 * CONFIG SET maxmemory below what it uses.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Redis } from 'ioredis';

import { UserOpsConsumer } from '../src/consumer/consumer.js';
import { RedisUnavailableError } from '../src/index.js';
import { capturedLog, newClient, redisSuite, startConsumer, tempDb, type Teardown, until, user } from './helpers/fixtures.js';

const s = redisSuite();

/** Makes Redis refuse writes until `release()`, which teardown also runs. */
function squeezer(t: Teardown, url: string): { squeeze: () => Promise<unknown>; release: () => Promise<unknown> } {
  const admin = t.add(new Redis(url), (r) => r.disconnect());
  const release = () => admin.config('SET', 'maxmemory', '0');
  t.add(undefined, release);
  return { squeeze: () => admin.config('SET', 'maxmemory', '1'), release };
}

const said = (lines: Record<string, unknown>[], start: string) => lines.some((l) => typeof l.msg === 'string' && l.msg.startsWith(start));

describe('Redis out of memory', () => {
  it('fails a call at once, saying Redis is out of memory and that nothing was enqueued', async () => {
    const { t, redis, queue } = s;
    const db = t.add(tempDb(), (d) => d.cleanup());
    const consumer = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath });
    // A timeout far beyond the test's own: the call must be answered by the refusal, not by a
    // lookup or a timeout ("applied: unknown", "Is the consumer running?").
    const client = newClient(t, { redisUrl: redis.url, queue, timeoutMs: 600_000 });
    await client.createUser(user('before'));
    const { squeeze, release } = squeezer(t, redis.url);

    await squeeze();
    await assert.rejects(client.createUser(user('refused')), (err: unknown) => {
      assert.ok(err instanceof RedisUnavailableError);
      assert.equal(err.applied, false);
      assert.match(err.message, /^Redis at redis:\/\/127\.0\.0\.1:\d+ is out of memory \(over its maxmemory\) and refused the call; nothing was enqueued\./);
      assert.match(String((err.cause as Error).message), /^OOM command not allowed/);
      return true;
    });

    await release();
    assert.equal((await client.createUser(user('after'))).nickname, 'after');
    await assert.rejects(client.getUser('refused'), /User refused doesn't exist/);
    assert.equal(consumer.database?.countUsers(), 2);
  });

  it('says once that Redis refuses writes, fails /readyz on redis meanwhile, and carries on when memory is freed', async () => {
    const { t, redis, queue } = s;
    const db = t.add(tempDb(), (d) => d.cleanup());
    const { log, lines } = capturedLog();
    const consumer = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath, logger: log });
    const client = newClient(t, { redisUrl: redis.url, queue });
    const { squeeze, release } = squeezer(t, redis.url);

    await squeeze();
    await until('the warning', () => said(lines, `Redis at ${redis.url} is out of memory and refuses writes`));
    await until('/readyz failing on redis', async () => (await consumer.readiness()).failing.includes('redis'));
    assert.match((await consumer.readiness()).redis, /^out of memory, refusing writes: OOM command not allowed when used memory > 'maxmemory'\.$/);
    // Taking jobs fails every few seconds meanwhile: none of that is an error with a stack.
    const idle = lines.length;
    await new Promise((r) => setTimeout(r, 4000));
    const errors = lines.slice(idle).filter((l) => (l.level as number) >= 50);
    assert.deepEqual(errors.map((l) => l.msg), [], 'no error lines while Redis refuses writes');

    await release();
    assert.equal((await client.createUser(user('after'))).nickname, 'after');
    await until('the all-clear', () => said(lines, `Redis at ${redis.url} accepts writes again`));
    assert.deepEqual((await consumer.readiness()).failing, []);
    assert.equal(lines.filter((l) => typeof l.msg === 'string' && l.msg.includes('is out of memory and refuses writes')).length, 1, 'warned once');
  });

  it('starts while Redis refuses writes: waits, instead of exiting into a restart loop', async () => {
    const { t, redis, queue } = s;
    const db = t.add(tempDb(), (d) => d.cleanup());
    const { log, lines } = capturedLog();
    const { squeeze, release } = squeezer(t, redis.url);

    await squeeze();
    const consumer = t.add(new UserOpsConsumer({ redisUrl: redis.url, queue, dbPath: db.dbPath, logger: log }), (c) => c.close());
    const started = consumer.start();
    let settled = false;
    void started.then(
      () => (settled = true),
      () => (settled = true),
    );
    await until('the warning', () => said(lines, `Redis at ${redis.url} is out of memory and refuses writes`));
    assert.equal(settled, false, 'still starting, not failed');

    await release();
    await started;
    const client = newClient(t, { redisUrl: redis.url, queue });
    assert.equal((await client.createUser(user('after'))).nickname, 'after');
  });
});
