/**
 * The real parts a chaos scenario breaks: a redis-server of its own, consumer daemons as separate
 * processes (`userops consumer`, so they can be SIGKILLed), clients in this process, and the
 * SQLite file the verdict is read from. Everything is torn down by `close()`.
 */
import { randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { Queue } from 'bullmq';
import { Redis } from 'ioredis';

import { UserOpsClient } from '../src/index.js';
import { type ConsumerProcess, spawnConsumer } from '../test/helpers/cli.js';
import { TestRedis } from '../test/helpers/redis-server.js';
import { Load } from './load.js';

/** Grace given to a consumer's SIGTERM before the stack gives up on it. */
const STOP_MS = 12_000;

/** A scenario's processes, clients and load. */
export class Stack {
  readonly queue = `chaos-${randomUUID().slice(0, 8)}`;
  readonly tag = 'c';
  readonly consumers: ConsumerProcess[] = [];
  readonly clients: UserOpsClient[] = [];
  /** A plain connection and queue, as an operator or another service would have. */
  readonly admin: { redis: Redis; queue: Queue };
  load?: Load;

  private constructor(
    readonly redis: TestRedis,
    readonly dir: string,
    readonly dbPath: string,
    private readonly timeoutMs: number,
  ) {
    const connection = new Redis(redis.url, { maxRetriesPerRequest: null, lazyConnect: false });
    // Scenarios kill this Redis: an admin connection must not crash the run with an unhandled error.
    connection.on('error', () => undefined);
    this.admin = { redis: connection, queue: new Queue(this.queue, { connection }) };
    this.admin.queue.on('error', () => undefined);
  }

  /**
   * Starts Redis and a folder for the database.
   * @param dbDir - where the database goes (a small filesystem, for the disk scenarios)
   * @param timeoutMs - every call's timeout: the longest a call may take to settle
   */
  static async start(options: { dbDir?: string; timeoutMs: number }): Promise<Stack> {
    const redis = await TestRedis.start();
    const dir = options.dbDir ?? mkdtempSync(join(tmpdir(), 'userops-chaos-'));
    mkdirSync(dir, { recursive: true });
    return new Stack(redis, dir, join(dir, 'userops.db'), options.timeoutMs);
  }

  /**
   * Starts a `userops consumer` process; waits until it is up when `ready` is true.
   * @param httpPort - serve /readyz and /metrics there (off by default)
   */
  async startConsumer(ready = true, httpPort = 0): Promise<ConsumerProcess> {
    const consumer = spawnConsumer({
      REDIS_URL: this.redis.url, USEROPS_QUEUE: this.queue, USEROPS_DB: this.dbPath, LOG_LEVEL: 'info',
      USEROPS_HTTP_PORT: String(httpPort), USEROPS_HTTP_HOST: '127.0.0.1',
    });
    this.consumers.push(consumer);
    if (ready) await consumer.waitFor(/consumer ready/);
    return consumer;
  }

  /** Consumers still running. */
  get live(): ConsumerProcess[] {
    return this.consumers.filter((c) => c.child.exitCode === null && c.child.signalCode === null);
  }

  /** Sends `signal` to `consumer` and waits for it to exit; resolves with how long that took. */
  async stopConsumer(consumer: ConsumerProcess, signal: NodeJS.Signals): Promise<{ code: number | null; ms: number }> {
    const started = Date.now();
    consumer.child.kill(signal);
    const code = await Promise.race([consumer.exited, new Promise<'late'>((r) => setTimeout(() => r('late'), STOP_MS))]);
    if (code === 'late') {
      consumer.child.kill('SIGKILL');
      return { code: await consumer.exited, ms: Date.now() - started };
    }
    return { code, ms: Date.now() - started };
  }

  /** Starts `callers` callers over `clients` clients. */
  startLoad(clients: number, callers: number): Load {
    for (let i = 0; i < clients; i++) {
      this.clients.push(new UserOpsClient({ redisUrl: this.redis.url, queue: this.queue, timeoutMs: this.timeoutMs }));
    }
    this.load = new Load(this.clients, callers, this.tag);
    return this.load;
  }

  /**
   * Stops the load and waits for every call to settle. A consumer must be running for calls in
   * flight to finish; the call timeout bounds the wait either way.
   */
  async settle(): Promise<void> {
    if (this.live.length === 0) await this.startConsumer();
    await this.load?.stop();
  }

  /** Stops every consumer (SIGTERM), closes clients, stops Redis, removes files. */
  async close(): Promise<void> {
    await Promise.all(this.clients.map((c) => c.close().catch(() => undefined)));
    await Promise.all(this.live.map((c) => this.stopConsumer(c, 'SIGTERM')));
    await this.admin.queue.close().catch(() => undefined);
    this.admin.redis.disconnect();
    await this.redis.stop();
  }

  /** Removes the database folder (after the verdict has been read). */
  removeFiles(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}
