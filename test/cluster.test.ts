/**
 * Beyond one Redis: the queue on a real three-node Redis Cluster (keys hash-tagged by queue, so
 * each queue lives in one slot) and through a Sentinel that fails the master over under load.
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';

import { Redis } from 'ioredis';

import { UserOpsError } from '../src/index.js';
import { bullPrefix } from '../src/redis.js';
import { newClient, queueName, startConsumer, Teardown, tempDb } from './helpers/fixtures.js';
import { TestRedisCluster, TestRedisSentinel } from './helpers/redis-cluster.js';

let t: Teardown;
beforeEach(() => {
  t = new Teardown();
});
afterEach(() => t.run());

describe('Redis Cluster', () => {
  let cluster: TestRedisCluster;
  before(async () => {
    cluster = await TestRedisCluster.start();
  });
  after(() => cluster.stop());

  it('serves calls through redis+cluster://, each queue in its own hash slot', async () => {
    // Two queues whose names hash to different nodes: tagging by queue name spreads queues.
    const first = queueName();
    let second = queueName();
    while ((await cluster.nodeFor(`{${second}}`)) === (await cluster.nodeFor(`{${first}}`))) second = queueName();
    const queues = [first, second];
    for (const queue of queues) {
      const { dbPath, cleanup } = tempDb();
      t.add(undefined, cleanup);
      await startConsumer(t, { redisUrl: cluster.url, queue, dbPath });
      const client = newClient(t, { redisUrl: cluster.url, queue, timeoutMs: 20_000 });
      const created = await Promise.all(
        Array.from({ length: 20 }, (_, i) => client.createUser({ nickname: `${queue}-u${i}`, fullName: `User ${i}`, email: `u${i}@example.com` })),
      );
      assert.equal(created.length, 20);
      assert.equal((await client.updateUser(`${queue}-u3`, { fullName: 'Renamed' })).fullName, 'Renamed');
      assert.equal((await client.getUser(`${queue}-u3`)).fullName, 'Renamed');
      await assert.rejects(client.getUser('nobody'), (err: unknown) => err instanceof UserOpsError && err.code === 'USER_NOT_FOUND');
      assert.equal((await client.listUsers({ limit: 100 })).length, 20);
    }
    // Every key of a queue sits in the slot of its tag: no CROSSSLOT, whichever node serves it.
    const readers = cluster.ports.map((port) => t.add(new Redis(port, '127.0.0.1'), (c) => c.disconnect()));
    const nodes: number[] = [];
    for (const queue of queues) {
      const prefix = bullPrefix(cluster.url, queue);
      assert.equal(prefix, `bull:{${queue}}`);
      const keys = (await Promise.all(readers.map((node) => node.keys(`${prefix}:*`)))).flat();
      assert.ok(keys.some((k) => k.endsWith(':userops:writer')), `the writer lease lives beside the queue: ${keys.join(' ')}`);
      const owners = new Set(await Promise.all(keys.map((k) => cluster.nodeFor(k))));
      assert.equal(owners.size, 1, `${queue}: its keys are on one node`);
      nodes.push([...owners][0] as number);
    }
    assert.notEqual(nodes[0], nodes[1], 'the two queues are served by different nodes');
  });
});

describe('Redis Sentinel', () => {
  let sentinel: TestRedisSentinel;
  before(async () => {
    sentinel = await TestRedisSentinel.start();
  });
  after(() => sentinel.stop());

  it('serves calls through redis+sentinel:// and follows a failover of the master', async () => {
    const queue = queueName();
    const { dbPath, cleanup } = tempDb();
    t.add(undefined, cleanup);
    await startConsumer(t, { redisUrl: sentinel.url, queue, dbPath });
    const client = newClient(t, { redisUrl: sentinel.url, queue, timeoutMs: 60_000 });
    await client.createUser({ nickname: 'before', fullName: 'Before Failover', email: 'before@example.com' });
    await sentinel.failover();
    // The old master is gone; the client and the consumer find the promoted replica through the
    // Sentinel once they reconnect. Until then a call fails fast, as a caller would see it.
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        const after = await client.createUser({ nickname: 'after', fullName: 'After Failover', email: 'after@example.com' });
        assert.equal(after.nickname, 'after');
        break;
      } catch (err) {
        if (!(err instanceof UserOpsError && err.code === 'REDIS_UNAVAILABLE') || Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    assert.equal((await client.getUser('before')).fullName, 'Before Failover');
  });
});
