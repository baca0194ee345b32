/**
 * Per-test isolation: a fresh SQLite file, a random queue name, and started-and-closed parts that
 * are torn down even when a test fails.
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { after, afterEach, before, beforeEach } from 'node:test';

import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { type Logger, pino } from 'pino';

import { applyJobs } from '../../src/consumer/apply.js';
import { UserOpsConsumer } from '../../src/consumer/consumer.js';
import type { ConsumerOptions } from '../../src/consumer/options.js';
import type { Store } from '../../src/consumer/store.js';
import { UserOpsClient } from '../../src/producer/client.js';
import type { ClientOptions } from '../../src/producer/options.js';
import { TestRedis } from './redis-server.js';

/** A fresh temp folder with a database path inside; removed by `cleanup()`. */
export function tempDb(): { dir: string; dbPath: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'userops-db-'));
  return { dir, dbPath: join(dir, 'userops.db'), cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A queue name no other test uses. */
export function queueName(): string {
  return `t-${randomUUID().slice(0, 8)}`;
}

/** Collects cleanups and runs them last-in first-out, all of them, even if one throws. */
export class Teardown {
  private readonly steps: (() => unknown)[] = [];

  /** Registers `step` to run at teardown and returns `value` for chaining. */
  add<T>(value: T, step: (v: T) => unknown): T {
    this.steps.push(() => step(value));
    return value;
  }

  /** Runs every step, newest first. */
  async run(): Promise<void> {
    for (const step of this.steps.splice(0).reverse()) {
      try {
        await step();
      } catch {
        // teardown goes on; the test's own assertion failure is what matters
      }
    }
  }
}

/** A started consumer, closed at teardown. */
export async function startConsumer(t: Teardown, options: ConsumerOptions): Promise<UserOpsConsumer> {
  const consumer = t.add(new UserOpsConsumer(options), (c) => c.close());
  await consumer.start();
  return consumer;
}

/** A client, closed at teardown. */
export function newClient(t: Teardown, options: ClientOptions): UserOpsClient {
  return t.add(new UserOpsClient(options), (c) => c.close());
}

/** A plain BullMQ queue, as another service would use, closed at teardown. */
export function plainQueue(t: Teardown, url: string, name: string): Queue {
  const connection = t.add(new Redis(url, { maxRetriesPerRequest: null }), (c) => c.disconnect());
  return t.add(new Queue(name, { connection }), (q) => q.close());
}

/** What a test file using {@link redisSuite} gets for each test. */
export interface SuiteContext {
  /** One redis-server for the whole file. */
  redis: TestRedis;
  /** Cleanups of this test, run after it. */
  t: Teardown;
  /** A queue name of this test alone. */
  queue: string;
}

/**
 * Registers the usual hooks: a redis-server started for the file and stopped after it, and for
 * each test a fresh Teardown (run after the test) and queue name. Fields fill in as hooks run.
 */
export function redisSuite(): SuiteContext {
  const ctx = {} as SuiteContext;
  before(async () => {
    ctx.redis = await TestRedis.start();
  });
  after(() => ctx.redis.stop());
  beforeEach(() => {
    ctx.t = new Teardown();
    ctx.queue = queueName();
  });
  afterEach(() => ctx.t.run());
  return ctx;
}

/** Valid arguments for creating `nickname`. */
export function user(nickname: string): { nickname: string; fullName: string; email: string } {
  return { nickname, fullName: 'F', email: `${nickname}@example.com` };
}

/** Records `n` one-op jobs applied at `at` (epoch ms), ids and nicknames `${prefix}0...`, in one transaction. */
export function recordJobs(store: Store, prefix: string, n: number, at: number): void {
  const jobs = Array.from({ length: n }, (_, i) => ({ id: `${prefix}${i}`, ops: [{ op: 'user.create', args: user(`${prefix}${i}`) }] }));
  applyJobs(store, jobs, at);
}

/** Polls `check` until it holds; throws naming `what` after `ms`. */
export async function until(what: string, check: () => boolean | Promise<boolean>, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** A debug-level logger whose lines, parsed, the test can read. */
export function capturedLog(): { log: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => lines.push(JSON.parse(line) as Record<string, unknown>) });
  return { log, lines };
}
