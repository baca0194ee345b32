import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it } from 'node:test';

import { Redis } from 'ioredis';

import { RedisUnavailableError } from '../src/index.js';
import { newClient, plainQueue, queueName, startConsumer, Teardown, tempDb, until, user } from './helpers/fixtures.js';
import { TestRedis } from './helpers/redis-server.js';

let t: Teardown;
let queue: string;

beforeEach(() => {
  t = new Teardown();
  queue = queueName();
});
afterEach(() => t.run());


describe('faults', () => {
  it('a client created while Redis is down works once Redis is back; the consumer rides out the restart', async () => {
    const redis = t.add(await TestRedis.start(), (r) => r.stop());
    const db = t.add(tempDb(), (d) => d.cleanup());
    const consumer = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath });
    await redis.kill();

    const client = newClient(t, { redisUrl: redis.url, queue, connectTimeoutMs: 500, timeoutMs: 10_000 });
    await assert.rejects(client.createUser(user('early')), RedisUnavailableError);
    await redis.restart();
    // The same client, with no restart of its own, now gets through; the consumer resumed by itself.
    await until('the client to get through', async () => {
      try {
        await client.createUser(user('later'));
        return true;
      } catch (err) {
        if (err instanceof RedisUnavailableError) return false;
        throw err;
      }
    }, 15_000);
    assert.equal((await client.getUser('later')).nickname, 'later');
    assert.equal(consumer.database?.countUsers(), 1, 'the rejected call was never applied');
  });

  it('Redis killed and restarted under load: every call settles, every resolved op is in SQLite', async () => {
    const redis = t.add(await TestRedis.start(), (r) => r.stop());
    const db = t.add(tempDb(), (d) => d.cleanup());
    const consumer = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath });
    const client = newClient(t, { redisUrl: redis.url, queue, timeoutMs: 20_000, connectTimeoutMs: 1000 });
    const outcomes: Promise<PromiseSettledResult<unknown>>[] = [];
    let stop = false;
    const load = (async () => {
      for (let i = 0; !stop; i++) {
        outcomes.push(Promise.allSettled([client.createUser(user(`r${i}`))]).then(([o]) => o as PromiseSettledResult<unknown>));
        await new Promise((r) => setTimeout(r, 2));
      }
    })();
    await new Promise((r) => setTimeout(r, 500));
    await redis.kill();
    await new Promise((r) => setTimeout(r, 1000));
    await redis.restart();
    await new Promise((r) => setTimeout(r, 1500));
    stop = true;
    await load;
    const settled = await Promise.all(outcomes);
    const codes = new Map<string, number>();
    for (const o of settled) {
      const code = o.status === 'fulfilled' ? 'ok' : String((o.reason as { code?: string }).code);
      codes.set(code, (codes.get(code) ?? 0) + 1);
    }
    // Every failure says what happened, in a code a caller can act on.
    for (const code of codes.keys()) assert.ok(['ok', 'REDIS_UNAVAILABLE'].includes(code), `unexpected ${code}: ${JSON.stringify([...codes])}`);
    assert.ok((codes.get('ok') ?? 0) > 0, JSON.stringify([...codes]));
    // Every resolved create is in SQLite, and nothing unresolved-but-said-unavailable is.
    const rows = consumer.database?.db.prepare('SELECT nickname FROM users').all() as { nickname: string }[];
    const created = new Set(rows.map((r) => r.nickname));
    settled.forEach((o, i) => {
      if (o.status === 'fulfilled') assert.ok(created.has(`r${i}`), `r${i} resolved but is not in SQLite`);
      else if ((o.reason as { code?: string }).code === 'REDIS_UNAVAILABLE') assert.ok(!created.has(`r${i}`), `r${i} said unavailable yet applied`);
    });
    // And the system is whole again.
    assert.equal((await client.createUser(user('after'))).nickname, 'after');
  });

  it('settles a call whose reply was lost, by reading the job from Redis', async () => {
    const redis = t.add(await TestRedis.start(), (r) => r.stop());
    const db = t.add(tempDb(), (d) => d.cleanup());
    const client = newClient(t, { redisUrl: redis.url, queue, timeoutMs: 30_000 });
    const probe = plainQueue(t, redis.url, queue);
    const call = client.createUser(user('lost'));
    await until('the job to be queued', async () => (await probe.getWaitingCount()) === 1, 15_000);

    // Make the client's reply stream a string, so the consumer's reply fails (WRONGTYPE) and never arrives.
    const [job] = await probe.getWaiting();
    const replyId = (job?.data as { reply?: string } | undefined)?.reply;
    assert.ok(replyId, 'the job names its reply stream');
    const admin = t.add(new Redis(redis.url), (r) => r.disconnect());
    await admin.set(`bull:${queue}:userops:reply:${replyId}`, 'not a stream');
    await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath });

    const started = Date.now();
    assert.equal((await call).nickname, 'lost');
    assert.ok(Date.now() - started < 15_000, 'settled by reconciliation, long before the 30 s timeout');
  });
});
