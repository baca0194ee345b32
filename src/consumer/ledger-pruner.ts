/**
 * Deletes ledger rows older than the retention, at start and on a schedule, a bounded chunk per
 * transaction.
 *
 * The writer's connection is synchronous and shared with the commit loop: one DELETE of an hour's
 * rows would hold the event loop for as long as it takes (measured ~2 µs a row for one-op jobs,
 * ~6 µs for 64-op jobs, so seconds at a few hundred jobs a second), stalling every caller, the
 * writer-lease renewal (a 5 s lease lapses after ~3 s of stall) and job-lock renewals. In chunks,
 * with the event loop let run between them, groups keep committing while old rows go.
 */
import { setImmediate as yieldToLoop } from 'node:timers/promises';

import type { Logger } from 'pino';

import type { Store } from './store.js';

/** Rows deleted per transaction: ~5–15 ms of writer time, about what a group commit takes. */
const PRUNE_CHUNK_ROWS = 2000;

/** Prunes one store's ledger when started, then every `intervalMs` until closed. */
export class LedgerPruner {
  private timer?: NodeJS.Timeout;
  /** The prune in progress, which later ticks join instead of starting another. */
  private running?: Promise<number>;
  private closed = false;

  /**
   * @param retentionMs - rows applied longer ago than this are deleted
   * @param isWriter - a standby prunes nothing: the writer owns the database's writes
   * @param chunkRows - rows per transaction
   */
  constructor(
    private readonly store: Store,
    private readonly retentionMs: number,
    private readonly intervalMs: number,
    private readonly log: Logger,
    private readonly isWriter: () => boolean,
    private readonly chunkRows = PRUNE_CHUNK_ROWS,
  ) {}

  /**
   * Prunes now and every `intervalMs` after. This first run deletes only rows that were past the
   * retention already when the database was last written: a job the consumer held when it
   * stopped is re-delivered in the first seconds after it starts again, and its row must still be
   * there however long the consumer was down. Call before anything is committed.
   */
  start(): void {
    if (this.timer || this.closed) return;
    const last = this.store.lastLedgerAt();
    if (last !== undefined) void this.prune(Math.min(last, Date.now()) - this.retentionMs);
    this.timer = setInterval(() => void this.prune(), this.intervalMs);
    this.timer.unref();
  }

  /**
   * Deletes every row applied before `before` (by default, older than the retention), chunk by
   * chunk; resolves with how many. A call while a run is in progress joins it. Never rejects: a
   * failure is logged and the next tick tries again.
   */
  prune(before = Date.now() - this.retentionMs): Promise<number> {
    this.running ??= this.run(before).finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  /** @param before - fixed for the run, so rows that age meanwhile wait for the next one and the run ends */
  private async run(before: number): Promise<number> {
    const started = performance.now();
    let removed = 0;
    try {
      for (;;) {
        if (this.closed || !this.isWriter() || !this.store.db.open) break;
        const n = this.store.pruneLedger(before, this.chunkRows);
        removed += n;
        if (n < this.chunkRows) break;
        await yieldToLoop();
      }
    } catch (err) {
      this.log.warn({ err, removed }, 'ledger prune failed; will try again');
    }
    if (removed > 0) this.log.info({ removed, ms: Math.round(performance.now() - started) }, 'pruned old ledger rows');
    return removed;
  }

  /** Stops the schedule and waits for a prune in progress to end its chunk. Safe to call twice. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    await this.running;
  }
}
