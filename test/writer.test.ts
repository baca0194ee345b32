import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { beforeEach, describe, it } from 'node:test';

import { Redis } from 'ioredis';
import { pino } from 'pino';

import { Store, UserOpsConsumer } from '../src/consumer/index.js';
import Database from '../src/consumer/sqlite-driver.js';
import { type DatabaseBinding, leaseOwner, type StandbyDetail, WriterLease } from '../src/consumer/writer-lease.js';
import { ConfigError } from '../src/index.js';
import { spawnConsumer } from './helpers/cli.js';
import type { Teardown } from './helpers/fixtures.js';
import { capturedLog, newClient, redisSuite, startConsumer, tempDb, until, user } from './helpers/fixtures.js';
import { freePort, type TestRedis } from './helpers/redis-server.js';

const suite = redisSuite();
let redis: TestRedis;
let t: Teardown;
let queue: string;
beforeEach(() => ({ redis, t, queue } = suite));


describe('one writer per queue', () => {
  it('a second consumer stands by, and takes over at once when the writer shuts down', async () => {
    const db = t.add(tempDb(), (d) => d.cleanup());
    const a = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath });
    const b = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath });
    assert.equal(a.role, 'writer');
    assert.equal(b.role, 'standby');
    const client = newClient(t, { redisUrl: redis.url, queue });
    await client.createUser(user('before'));
    await a.close();
    await until('b to take over', () => b.role === 'writer', 5000);
    await client.createUser(user('after'));
    assert.deepEqual(b.database?.listUsers({}).map((u) => u.nickname), ['after', 'before']);
  });

  it('takes over within seconds from a writer killed under load; every call applied once', async () => {
    const db = t.add(tempDb(), (d) => d.cleanup());
    const env = { REDIS_URL: redis.url, USEROPS_QUEUE: queue, USEROPS_DB: db.dbPath, LOG_LEVEL: 'info' };
    const first = spawnConsumer(env);
    t.add(first, async (p) => {
      if (p.child.exitCode === null) p.child.kill('SIGKILL');
      await p.exited;
    });
    await first.waitFor(/writer role taken/);
    const standby = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath });
    assert.equal(standby.role, 'standby');

    const client = newClient(t, { redisUrl: redis.url, queue, timeoutMs: 60_000 });
    let resolved = 0;
    const calls = Array.from({ length: 1000 }, (_, i) => client.createUser(user(`k${i}`)).then((u) => (resolved++, u)));
    await until('some calls to resolve', () => resolved >= 100);
    first.child.kill('SIGKILL');
    const killed = Date.now();
    await until('the standby to take over', () => standby.role === 'writer', 15_000);
    const users = await Promise.all(calls);
    assert.deepEqual(users.map((u) => u.nickname), calls.map((_, i) => `k${i}`), 'each create returned its own user, none "exists"');
    assert.equal(standby.database?.countUsers(), 1000);
    assert.ok(Date.now() - killed < 30_000, `recovered in ${Date.now() - killed} ms`);
  });

  it('survives its consumer killed three times under load: every call answered once, with its own result', async () => {
    const db = t.add(tempDb(), (d) => d.cleanup());
    const env = { REDIS_URL: redis.url, USEROPS_QUEUE: queue, USEROPS_DB: db.dbPath, LOG_LEVEL: 'info' };
    const client = newClient(t, { redisUrl: redis.url, queue, timeoutMs: 90_000 });
    let resolved = 0;
    const calls = Array.from({ length: 3000 }, (_, i) => client.createUser(user(`s${i}`)).then((u) => (resolved++, u)));
    for (let kill = 1; kill <= 3; kill++) {
      const proc = spawnConsumer(env);
      t.add(proc, async (p) => {
        if (p.child.exitCode === null) p.child.kill('SIGKILL');
        await p.exited;
      });
      const before = resolved;
      await until(`progress before kill ${kill}`, () => resolved > before + 100);
      proc.child.kill('SIGKILL');
      await proc.exited;
    }
    const last = spawnConsumer(env);
    t.add(last, async (p) => {
      if (p.child.exitCode === null) p.child.kill('SIGKILL');
      await p.exited;
    });
    const users = await Promise.all(calls);
    assert.deepEqual(users.map((u) => u.nickname), calls.map((_, i) => `s${i}`), 'no create came back as "exists"');
    const { Store } = await import('../src/consumer/store.js');
    const store = t.add(new Store(db.dbPath), (s) => s.close());
    assert.equal(store.countUsers(), 3000, 'each applied once');
  });

  it('refuses a consumer whose database is not the one the queue was served from', async () => {
    const one = t.add(tempDb(), (d) => d.cleanup());
    const other = t.add(tempDb(), (d) => d.cleanup());
    const a = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: one.dbPath });
    const theirs = a.database?.dbId as string;
    // Another database that exists: refused, and left as it was.
    new Store(other.dbPath).close();
    const b = t.add(new UserOpsConsumer({ redisUrl: redis.url, queue, dbPath: other.dbPath }), (c) => c.close());
    await assert.rejects(b.start(), (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.match(err.message, new RegExp(`Queue ${queue} is served from database ${theirs}, but ${other.dbPath} is database`));
      return true;
    });
    assert.ok(existsSync(other.dbPath), 'a refused database that existed is kept');
    // A database not created yet: refused without creating it, or its folder.
    const fresh = join(other.dir, 'new', 'userops.db');
    const c = t.add(new UserOpsConsumer({ redisUrl: redis.url, queue, dbPath: fresh }), (x) => x.close());
    await assert.rejects(c.start(), (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.match(err.message, new RegExp(`Queue ${queue} is served from database ${theirs}, but ${fresh} does not exist`));
      return true;
    });
    assert.ok(!existsSync(dirname(fresh)), 'refusing left no new file behind');
    // A database from before identities (schema 2): refused before it is migrated, so the
    // older build it came from can still open it.
    const old = join(other.dir, 'schema2.db');
    const v2 = new Store(old);
    v2.db.exec('DROP TRIGGER ledger_count_insert; DROP TRIGGER ledger_count_delete; DROP TABLE ledger_count; DROP TABLE meta; PRAGMA user_version = 2;');
    v2.close();
    const d = t.add(new UserOpsConsumer({ redisUrl: redis.url, queue, dbPath: old }), (x) => x.close());
    await assert.rejects(d.start(), (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.match(err.message, new RegExp(`Queue ${queue} is served from database ${theirs}, but ${old} has no identity yet`));
      return true;
    });
    const after = new Database(old, { readonly: true });
    assert.equal(after.pragma('user_version', { simple: true }), 2, 'not migrated');
    after.close();
    // The same file, reopened (or a backup of it), is welcome.
    await a.close();
    const again = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: one.dbPath });
    await until('the reopened consumer to write', () => again.role === 'writer', 5000);
  });
});

describe('a queue key something else wrote', () => {
  it('refuses to start, naming the key, when the database id key is not a string', async () => {
    const db = t.add(tempDb(), (d) => d.cleanup());
    const client = t.add(new Redis(redis.url), (c) => c.disconnect());
    await client.hset(`bull:${queue}:userops:db`, 'x', 'y');
    const c = t.add(new UserOpsConsumer({ redisUrl: redis.url, queue, dbPath: db.dbPath }), (x) => x.close());
    await assert.rejects(c.start(), (err: unknown) => {
      assert.ok(err instanceof ConfigError, `a ConfigError (exit 2), not an outage: ${String(err)}`);
      assert.match(err.message, new RegExp(`^Redis key bull:${queue}:userops:db holds something other than a database id \\(WRONGTYPE`));
      return true;
    });
  });
});

describe("the queue's database after Redis loses its data", () => {
  /** Deletes every key of this test's queue, as a Redis restarted without its data would. */
  async function loseQueueKeys(client: Redis): Promise<void> {
    const keys = await client.keys(`bull:${queue}:*`);
    if (keys.length > 0) await client.del(...keys);
  }

  it('is bound to the running writer\'s database again, so a consumer on another file is still refused', async () => {
    const a = t.add(tempDb(), (d) => d.cleanup());
    const b = t.add(tempDb(), (d) => d.cleanup());
    const probe = t.add(new Redis(redis.url), (c) => c.disconnect());
    const writer = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: a.dbPath, writerLeaseMs: 1500 });
    const client = newClient(t, { redisUrl: redis.url, queue });
    await client.createUser(user('alice'));
    await loseQueueKeys(probe);
    await until('the binding put back', async () => (await probe.get(`bull:${queue}:userops:db`)) === writer.database?.dbId, 5000);
    // Before, the binding was set only at start: this consumer bound the queue to its own new
    // file and took over, and users were split between the two files.
    const other = t.add(new UserOpsConsumer({ redisUrl: redis.url, queue, dbPath: b.dbPath, writerLeaseMs: 1500 }), (x) => x.close());
    await assert.rejects(other.start(), (err: unknown) => err instanceof ConfigError && /is served from database/.test(err.message));
    await client.createUser(user('bob'));
    assert.deepEqual(writer.database?.listUsers({}).map((u) => u.nickname), ['alice', 'bob']);
  });

  it('a writer whose queue was bound to another database meanwhile stops writing, and is not ready, saying why', async () => {
    const a = t.add(tempDb(), (d) => d.cleanup());
    const probe = t.add(new Redis(redis.url), (c) => c.disconnect());
    const { log, lines } = capturedLog();
    const writer = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: a.dbPath, writerLeaseMs: 1500, logger: log });
    const client = newClient(t, { redisUrl: redis.url, queue, timeoutMs: 1500 });
    await client.createUser(user('alice'));
    // Another consumer, on another file, bound the queue before this writer's next renewal.
    await loseQueueKeys(probe);
    await probe.set(`bull:${queue}:userops:db`, 'someone-else');
    await until('the writer to stand by', () => writer.role === 'standby', 5000);
    const readiness = await writer.readiness();
    assert.deepEqual([readiness.ready, readiness.failing], [false, ['lease']]);
    assert.match(readiness.lease, new RegExp(`^Queue ${queue} is served from database someone-else, but ${a.dbPath} is database ${writer.database?.dbId}`));
    assert.ok(lines.some((l) => l.level === 50 && String(l.msg).startsWith(`Queue ${queue} is served from database someone-else`)));
    await assert.rejects(client.createUser(user('bob')), /timed out/i);
    assert.deepEqual(writer.database?.listUsers({}).map((u) => u.nickname), ['alice'], 'nothing applied to a database the queue is not served from');
  });
});

describe('the writer lease', () => {
  /** The queue's database binding, as a consumer on database `id` holds it. */
  const binding = (id = 'our-db'): DatabaseBinding => ({ key: `userops:${queue}:db`, id, describeRefusal: (theirs) => `bound to ${theirs}, not ${id}` });

  /** A lease on this test's queue, and the roles (with reasons) it reported. */
  function lease(client: Redis, owner: string, ttlMs = 5000) {
    const changes: string[] = [];
    const details: (StandbyDetail | undefined)[] = [];
    const l = new WriterLease(client, `userops:${queue}:writer`, owner, ttlMs, binding(), pino({ level: 'silent' }), (role, why, detail) => {
      changes.push(why ? `${role} (${why})` : role);
      details.push(detail);
    });
    t.add(l, (x) => x.stop());
    return { l, changes, details };
  }

  it('takes back a lease Redis still holds for it, instead of standing by behind itself', async () => {
    const client = t.add(new Redis(redis.url), (c) => c.disconnect());
    const owner = leaseOwner('me');
    // Our clock gave the lease up while Redis did not answer; Redis kept it.
    await client.set(`userops:${queue}:writer`, owner, 'PX', 60_000);
    const mine = lease(client, owner);
    await mine.l.start();
    assert.deepEqual(mine.changes, ['writer']);
    // Someone else's lease is still theirs.
    const theirs = lease(client, leaseOwner('another'));
    await theirs.l.start();
    assert.deepEqual(theirs.changes, ['standby (held)']);
  });

  it('keeps writing, and says so, when Redis loses its lease (a restart without its data)', async () => {
    const client = t.add(new Redis(redis.url), (c) => c.disconnect());
    const key = `userops:${queue}:writer`;
    const { log, lines } = capturedLog();
    const changes: string[] = [];
    const l = t.add(new WriterLease(client, key, leaseOwner('me'), 1200, binding(), log, (role, why) => changes.push(why ? `${role} (${why})` : role)), (x) => x.stop());
    await l.start();
    await client.del(key);
    await until('the lease to be taken again', async () => (await client.get(key)) !== null);
    // Before, it stood by for a tick, saying another consumer was the writer when none was.
    assert.deepEqual(changes, ['writer']);
    assert.ok(l.held());
    assert.ok(lines.some((x) => x.msg === 'the writer lease was gone from Redis (did it restart without its data?); taken again'));
  });

  it('names the holder of a lease it waits behind, and says when that lease will never expire', async () => {
    const client = t.add(new Redis(redis.url), (c) => c.disconnect());
    // Set by hand, without a TTL: nobody would ever take over.
    await client.set(`userops:${queue}:writer`, leaseOwner('by-hand'));
    const { l, changes, details } = lease(client, leaseOwner('me'));
    await l.start();
    assert.deepEqual(changes, ['standby (held)']);
    assert.equal(details[0]?.holder?.token, 'by-hand');
    assert.equal(details[0]?.leaseTtlMs, -1);
    assert.match(l.problem ?? '', new RegExp(`^userops:${queue}:writer is held by token by-hand on \\S+ \\(pid \\d+\\) with no expiry, so no consumer will take over until it is deleted$`));
  });

  it('is not ready, saying why, while a lease with no expiry keeps every consumer from writing', async () => {
    const db = t.add(tempDb(), (d) => d.cleanup());
    const { log, lines } = capturedLog();
    const client = t.add(new Redis(redis.url), (c) => c.disconnect());
    const key = `bull:${queue}:userops:writer`;
    await client.set(key, leaseOwner('by-hand'));
    const c = await startConsumer(t, { redisUrl: redis.url, queue, dbPath: db.dbPath, writerLeaseMs: 1500, logger: log });
    const stuck = await c.readiness();
    assert.deepEqual([stuck.ready, stuck.role, stuck.failing], [false, 'standby', ['lease']]);
    assert.match(stuck.lease, new RegExp(`^${key} is held by token by-hand .* with no expiry`));
    assert.ok(lines.some((l) => l.level === 50 && String(l.msg).startsWith(`no consumer can be the writer: ${key} is held by token by-hand`)));
    // Given an expiry (an operator mending it by hand), it is an ordinary standby's wait: ready.
    await client.pexpire(key, 60_000);
    await until('the lease to read as mended', async () => (await c.readiness()).lease === 'ok', 5000);
    assert.deepEqual((await c.readiness()).failing, []);
    await client.del(key);
    await until('the consumer to take over', () => c.role === 'writer', 5000);
  });

  it('says Redis refused the lease, and gives up writing at once, when the key holds something else', async () => {
    const client = t.add(new Redis(redis.url), (c) => c.disconnect());
    const key = `userops:${queue}:writer`;
    const { l, changes, details } = lease(client, leaseOwner('me'), 600);
    await l.start();
    assert.deepEqual(changes, ['writer']);
    // Replaced behind its back between two renewals: the lapse is reported, not left silent.
    await client.multi().del(key).hset(key, 'a', 'b').exec();
    await until('the lease to be refused', () => changes.length === 2);
    assert.deepEqual(changes, ['writer', 'standby (refused)']);
    assert.equal(l.held(), false);
    assert.match(details[1]?.err?.message ?? '', /WRONGTYPE/);
    assert.match(l.problem ?? '', new RegExp(`^${key} holds something other than a lease \\(WRONGTYPE`));
    // Mended: the lease is taken again and the problem is gone.
    await client.del(key);
    await until('the lease to be taken again', () => changes.length === 3);
    assert.deepEqual([changes[2], l.problem], ['writer', undefined]);
  });

  it("puts back the queue's database binding that Redis lost, and stops writing while it names another database", async () => {
    const client = t.add(new Redis(redis.url), (c) => c.disconnect());
    const dbKey = `userops:${queue}:db`;
    const { l, changes } = lease(client, leaseOwner('me'), 600);
    await l.start();
    assert.deepEqual(changes, ['writer']);
    assert.equal(await client.get(dbKey), 'our-db', 'bound when the lease was taken');
    // Lost (Redis restarted without its data): put back at the next renewal, still the writer.
    await client.del(dbKey);
    await until('the binding put back', async () => (await client.get(dbKey)) === 'our-db');
    assert.deepEqual(changes, ['writer']);
    // Bound meanwhile to another database (a consumer started on another file): not renewed.
    await client.set(dbKey, 'their-db');
    await until('the writer to stand by', () => changes.length === 2);
    assert.deepEqual([changes[1], l.held(), l.problem], ['standby (unbound)', false, 'bound to their-db, not our-db']);
    // A standby on the wrong database does not take a free lease either.
    await client.del(`userops:${queue}:writer`);
    await new Promise((r) => setTimeout(r, 700));
    assert.equal(await client.get(`userops:${queue}:writer`), null);
    // Bound back to ours (the operator's fix): writing again.
    await client.set(dbKey, 'our-db');
    await until('the writer role back', () => changes.length === 3);
    assert.deepEqual([changes[2], l.problem], ['writer', undefined]);
  });

  it('says Redis did not answer, not that another consumer writes, when it cannot ask', async () => {
    const dead = t.add(new Redis(`redis://127.0.0.1:${await freePort()}`, { enableOfflineQueue: false, retryStrategy: () => null, lazyConnect: true }), (c) => c.disconnect());
    const { l, changes } = lease(dead, leaseOwner('me'));
    await l.start();
    assert.deepEqual(changes, ['standby (unanswered)']);
  });
});
