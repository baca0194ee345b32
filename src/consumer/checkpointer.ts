/**
 * Checkpoints the WAL from a worker thread, so that the writer's commits do not stop for it.
 *
 * SQLite copies the WAL's pages back into the database file (a checkpoint) inside the commit that
 * takes the WAL past `wal_autocheckpoint` pages. On a large table in random use every update
 * dirties a page of its own, so that one commit copied and fsynced ~10,000 pages while every
 * caller waited: updates of random users at 1M users had a p99 of 74-91 ms, against ~25 ms at 1k.
 * A thread with its own connection does most of that copying between commits (measured: p99 39 ms,
 * throughput unchanged). The writer keeps its own autocheckpoint as the backstop: it finds little
 * left to copy, and it is what lets the WAL start again from its beginning.
 *
 * Durability does not depend on it: a commit is durable once its WAL frames are fsynced, and a
 * checkpoint only moves committed pages. If the thread fails, the writer's checkpoints carry on.
 */
import { Worker } from 'node:worker_threads';

import type { Logger } from 'pino';

import { settleWithin } from '../redis.js';
import { SQLITE_ENTRY } from './sqlite-driver.js';

/**
 * How often the thread checkpoints: often enough that the writer's backstop finds little to copy.
 * Measured: every 250 ms left update p99 at 1M users at 66 ms (38 ms at 50). An idle daemon pays
 * ~0.3% of a core for the polling; a checkpoint with nothing to copy takes ~7 µs and no fsync.
 */
export const CHECKPOINT_INTERVAL_MS = 50;

/** How long close() waits for the thread to finish a checkpoint and close its connection. */
const STOP_DEADLINE_MS = 5000;

/** What the thread is given. */
interface WorkerData {
  path: string;
  intervalMs: number;
  /** better-sqlite3's entry, resolved here (sqlite-driver.ts): eval'd code would resolve it from the working directory. */
  sqlite: string;
}

/**
 * The thread's code, as a string rather than a module of its own: a worker thread does not inherit
 * the TypeScript loader that runs this package from source (tests, the bench), and a string runs
 * the same there and once built. It reports a failed checkpoint as `{ error }`, once per new
 * message, and on any message from this side stops between two checkpoints and closes cleanly.
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.sqlite);
const db = new Database(workerData.path, { fileMustExist: true });
// The writer never waits for this thread, nor this thread for anyone: a checkpoint that finds
// the WAL busy copies less, and the next one carries on.
db.pragma('busy_timeout = 0');
// A checkpoint copies WAL frames straight into the file: a page cache would only cost memory.
db.pragma('cache_size = 16');
db.pragma('synchronous = FULL');
let lastError;
const timer = setInterval(() => {
  try {
    db.pragma('wal_checkpoint(PASSIVE)');
    lastError = undefined;
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    if (message !== lastError) parentPort.postMessage({ error: message });
    lastError = message;
  }
}, workerData.intervalMs);
parentPort.once('message', () => {
  clearInterval(timer);
  db.close();
  parentPort.close();
});
`;

/** A worker thread checkpointing the database at `path` until closed. */
export class BackgroundCheckpointer {
  private readonly worker: Worker;
  private readonly exited: Promise<void>;
  private closing?: Promise<void>;

  constructor(path: string, log: Logger, intervalMs = CHECKPOINT_INTERVAL_MS) {
    const workerData: WorkerData = { path, intervalMs, sqlite: SQLITE_ENTRY };
    this.worker = new Worker(WORKER_SOURCE, { eval: true, workerData });
    this.exited = new Promise((resolve) => this.worker.once('exit', () => resolve()));
    this.worker.on('message', (m: { error: string }) =>
      log.warn({ error: m.error, db: path }, 'background checkpoint failed; commits checkpoint the WAL themselves meanwhile'),
    );
    // The thread is gone (it could not open the database, say): the daemon carries on without it.
    this.worker.on('error', (err) => log.warn({ err, db: path }, 'background checkpointer stopped; commits checkpoint the WAL themselves'));
    // Never the reason the process stays up.
    this.worker.unref();
  }

  /** Stops the thread between two checkpoints and waits for it. Safe to call more than once. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.worker.postMessage('stop');
      if (!(await settleWithin(this.exited, STOP_DEADLINE_MS))) await this.worker.terminate();
    })();
    return this.closing;
  }
}
