/**
 * The per-op baseline consumer: the straightforward design userops is measured against.
 * One BullMQ job per op, a concurrency-1 Worker, each op committed in its own transaction with
 * the same durability (WAL, synchronous=FULL) through the same store.
 */
import { Worker } from 'bullmq';
import { Redis } from 'ioredis';

import { Store } from '../src/consumer/store.js';
import { coerceError, type OpName, parseArgs, UserOpsError } from '../src/protocol/index.js';

const [redisUrl, queue, dbPath] = process.argv.slice(2) as [string, string, string];
const store = new Store(dbPath);

function apply(op: OpName, raw: unknown): unknown {
  const now = Date.now();
  switch (op) {
    case 'user.create':
      return store.createUser(parseArgs(op, raw), now);
    case 'user.get':
      return store.getUser(parseArgs(op, raw));
    case 'user.update':
      return store.updateUser(parseArgs(op, raw), now);
    default:
      throw new Error(`baseline does not bench ${op}`);
  }
}

const worker = new Worker(
  queue,
  (job) => {
    const { op, args } = job.data as { op: OpName; args: unknown };
    try {
      return Promise.resolve({ ok: true, value: store.db.transaction(() => apply(op, args)).immediate() });
    } catch (err) {
      if (err instanceof UserOpsError) return Promise.resolve({ ok: false, error: err.toWire() });
      return Promise.reject(coerceError(err));
    }
  },
  { connection: new Redis(redisUrl, { maxRetriesPerRequest: null }), concurrency: 1 },
);
await worker.waitUntilReady();
process.stdout.write('consumer ready\n');
process.once('SIGTERM', () => {
  // Bounded: worker.close() never returns if Redis is gone (BullMQ #4656).
  setTimeout(() => process.exit(0), 2000).unref();
  void worker.close().then(() => {
    store.close();
    process.exit(0);
  });
});
