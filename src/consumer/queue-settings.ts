/**
 * The queue's shared state that other BullMQ clients can change under the consumer, checked by
 * the writer now and then:
 *
 * - The events stream's cap. Every BullMQ `Queue` writes its own `streams.events.maxLen` into the
 *   queue's meta hash when it opens, and one opened with BullMQ's defaults (another team's
 *   producer, a dashboard) raises it from userops' 1,000 entries to 10,000, each carrying a job's
 *   results, which nothing reads. The consumer sets it back.
 * - BullMQ 5 clients. BullMQ 5 keeps the jobs added while a queue is paused in a list of their
 *   own, and its `resume()` renames that list over the wait list: the jobs that BullMQ 6 clients
 *   (every userops client) added meanwhile are overwritten, and their ops lost without a trace.
 *   Nothing here can stop that; the consumer says so while it can still be avoided: when a
 *   BullMQ 5 `Queue` opens on the queue, and while that list holds jobs.
 *
 * Each finding is logged once, not at every check.
 */
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';

import { EVENTS_STREAM_MAX_LEN } from '../redis.js';

/** The key of BullMQ 5's list of jobs added while the queue was paused (BullMQ 6 has no such list). */
export function bullmq5PausedKey(queue: Pick<Queue, 'toKey'>): string {
  return queue.toKey('paused');
}

/**
 * Jobs waiting in BullMQ 5's paused list. BullMQ 6's counts leave them out, and no consumer takes
 * them until a `resume()` moves them back: a backlog that the usual counts do not show.
 */
export async function countBullmq5Paused(queue: Queue): Promise<number> {
  return (await queue.getBackend().client).llen(bullmq5PausedKey(queue));
}

/** BullMQ's meta field for the events stream's cap. */
const MAX_LEN_FIELD = 'opts.maxLenEvents';

/** The oldest BullMQ major whose `resume()` keeps jobs added while the queue was paused. */
const SAFE_BULLMQ_MAJOR = 6;

/** The major version in BullMQ's `meta.version` (`bullmq:5.81.5`), if it is BullMQ's. */
function bullmqMajor(version: string | null): number | undefined {
  const match = /^bullmq:(\d+)\./.exec(version ?? '');
  return match ? Number(match[1]) : undefined;
}

/** Checks the queue's shared settings when started, then every `intervalMs` until stopped. */
export class QueueSettingsGuard {
  private timer?: NodeJS.Timeout;
  private running?: Promise<void>;
  /** Findings already logged, so that a check repeats none of them. */
  private readonly reported = new Set<string>();
  /** Jobs last seen in BullMQ 5's paused list. */
  private legacyPaused = 0;

  /**
   * @param redis - a connection that fails fast: a check during an outage is skipped, not queued
   * @param keys - the queue's meta hash and BullMQ 5's paused list
   * @param isWriter - standbys check nothing: one consumer's word is enough
   */
  constructor(
    private readonly redis: Redis,
    private readonly keys: { meta: string; paused: string },
    private readonly intervalMs: number,
    private readonly log: Logger,
    private readonly isWriter: () => boolean,
  ) {}

  /** Checks now and every `intervalMs` after. Idempotent. */
  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.check(), this.intervalMs);
    this.timer.unref();
    void this.check();
  }

  /**
   * Checks once; a call while a check runs joins it. Never rejects: a failed check (Redis away) is
   * logged at debug, and the next one tries again.
   */
  check(): Promise<void> {
    this.running ??= (this.isWriter() ? this.run() : Promise.resolve())
      .catch((err: unknown) => this.log.debug({ err }, 'queue settings check failed; will try again'))
      .finally(() => {
        this.running = undefined;
      });
    return this.running;
  }

  /** Stops the schedule and waits for a check in progress. Safe to call twice. */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.running;
  }

  private async run(): Promise<void> {
    const { meta, paused } = this.keys;
    const [[maxLen = null, version = null], legacy] = await Promise.all([this.redis.hmget(meta, MAX_LEN_FIELD, 'version'), this.redis.llen(paused)]);
    if (maxLen !== String(EVENTS_STREAM_MAX_LEN)) {
      await this.redis.hset(meta, MAX_LEN_FIELD, EVENTS_STREAM_MAX_LEN);
      this.once(`maxLen:${maxLen}`, () =>
        this.log.warn(
          { key: meta, field: MAX_LEN_FIELD, was: maxLen, now: EVENTS_STREAM_MAX_LEN },
          `the events stream's cap was ${maxLen ?? 'unset'}, set back to ${EVENTS_STREAM_MAX_LEN}: a BullMQ Queue opened on this queue ` +
            `without streams.events.maxLen, and BullMQ's default keeps 10,000 entries, each with a job's results; ` +
            `open every Queue of this queue with streams: { events: { maxLen: ${EVENTS_STREAM_MAX_LEN} } }`,
        ),
      );
    }
    const major = bullmqMajor(version);
    if (major !== undefined && major < SAFE_BULLMQ_MAJOR) {
      this.once(`version:${version}`, () =>
        this.log.warn(
          { key: meta, version },
          `a BullMQ ${major} Queue opened on this queue (${version}): pause and resume it only with BullMQ ${SAFE_BULLMQ_MAJOR} or later. ` +
            `BullMQ ${major}'s resume() overwrites the jobs that BullMQ ${SAFE_BULLMQ_MAJOR} clients, userops' own among them, add while the queue is paused, and their ops are lost`,
        ),
      );
    }
    if (legacy > 0 && this.legacyPaused === 0) {
      this.log.warn(
        { key: paused, jobs: legacy },
        `${legacy} job(s) wait in ${paused}, BullMQ 5's list for jobs added while the queue is paused, where no consumer takes them. ` +
          `Resume the queue with BullMQ ${SAFE_BULLMQ_MAJOR} or later (Queue.resume(), or the dashboard), which moves them back into line; ` +
          `BullMQ 5's resume() would overwrite the jobs other clients added meanwhile, and their ops would be lost`,
      );
    } else if (legacy === 0 && this.legacyPaused > 0) {
      this.log.info({ key: paused }, "BullMQ 5's paused list is empty again");
    }
    this.legacyPaused = legacy;
  }

  private once(finding: string, report: () => void): void {
    if (this.reported.has(finding)) return;
    this.reported.add(finding);
    report();
  }
}
