/**
 * The client's link to Redis: its connections, the BullMQ Queue it adds to, and the reader of its
 * own reply stream, whose replies settle every call.
 *
 * Nothing is opened until the first call. Connections are not lazy once opened: ioredis keeps
 * retrying by itself and BullMQ's setup waits for it, so a client created while Redis is down
 * starts working when Redis comes up. Each call waits for that at most `connectTimeoutMs`.
 */
import { randomUUID } from 'node:crypto';

import { type Job, Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';

import { ConfigError, JOB_NAME, type JobPayload, RedisUnavailableError } from '../protocol/index.js';
import { isOfflineRefusal, isOutOfMemory, queueOptions, RedisConnections, redactUrl, settleWithin, userOpsKey, withDeadline } from '../redis.js';
import type { StaleJob } from './dispatcher.js';
import { ReplyReader } from './reply-reader.js';

/** Longest wait for each BullMQ close step; a healthy close takes milliseconds. */
const CLOSE_DEADLINE_MS = 2000;

/**
 * How far apart the clocks of a client and a consumer may be: a job's send time is the client's,
 * its finish time the consumer's.
 */
const CLOCK_SKEW_MS = 10_000;

/**
 * Whether Redis would still hold `job` had it run, given when the oldest finished job it keeps
 * finished (`keptSince`) and when the jobs it still holds finished (`finishedOn`). Either by the
 * clocks: everything that finished since well before the job was sent is kept. Or, on a queue too
 * young or too busy for that, by the queue's order: the job would have finished after `job.after`,
 * at least one commit later, and everything that finished since `job.after` did is kept (both
 * times are the consumer's, so no skew).
 */
function wouldStillHold(job: StaleJob, keptSince: number, finishedOn: ReadonlyMap<string, number>): boolean {
  if (keptSince < job.since - CLOCK_SKEW_MS) return true;
  const after = job.after === undefined ? undefined : finishedOn.get(job.after);
  return after !== undefined && keptSince <= after;
}

/** Where a finished job's outcome goes. */
export interface Outcomes {
  completed(jobId: string, returnValue: unknown): void;
  failed(jobId: string, reason: string): void;
  /** A job whose add failed mid-flight turned out never to have reached Redis. */
  lost(jobId: string, err: RedisUnavailableError | ConfigError): void;
}

interface Parts {
  redis: RedisConnections;
  commands: Redis;
  queue: Queue;
  replies?: ReplyReader;
}

/** An add that may have reached Redis before its connection failed: the job may exist. */
export class MaybeEnqueuedError extends Error {}

/** Connections, queue and reply reader of one client. */
export class QueueLink {
  private parts?: Parts;
  private connecting?: Promise<Parts>;
  private closed = false;
  /** Names this client's reply stream in every job it adds. */
  private readonly replyId = randomUUID();
  private readonly replyKey: string;

  constructor(
    private readonly options: { redisUrl: string; queue: string; connectTimeoutMs: number },
    private readonly outcomes: Outcomes,
    private readonly log: Logger,
  ) {
    this.replyKey = userOpsKey(options.redisUrl, options.queue, `reply:${this.replyId}`);
  }

  /** Adds a job. Throws `RedisUnavailableError` only when it certainly was not enqueued. */
  async add(jobId: string, payload: JobPayload): Promise<void> {
    const { commands, queue } = await this.ready();
    if (commands.status !== 'ready') throw this.unavailable(undefined);
    try {
      // No attempts: the consumer retries transient errors in place, keeping the job's turn; a
      // BullMQ retry would run it after later jobs, and other failures are deterministic.
      await queue.add(JOB_NAME, { ...payload, reply: this.replyId }, { jobId });
    } catch (err) {
      // ioredis refused to send it (no offline queue), or Redis refused it for want of memory:
      // either way nothing was enqueued, and the caller can be told so at once.
      if (isOfflineRefusal(err) || isOutOfMemory(err)) throw this.unavailable(err);
      throw new MaybeEnqueuedError(err instanceof Error ? err.message : String(err));
    }
  }

  /**
   * Takes a job back if no consumer has taken it yet; true if it was withdrawn (so it will never
   * run). Atomic: LREM on the wait list succeeds only while the job is still waiting, so a job a
   * consumer already took is never removed behind its back.
   */
  async withdraw(jobId: string): Promise<boolean> {
    const parts = this.parts;
    if (!parts || parts.commands.status !== 'ready') return false;
    try {
      const removed = await parts.commands.lrem(parts.queue.keys.wait as string, 1, jobId);
      if (removed !== 1) return false;
      // No longer in any list: drop its hash too, as BullMQ's own remove would.
      await parts.queue.remove(jobId).catch(() => 0);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Reads finished jobs among `jobIds` straight from Redis and reports their outcomes; of the
   * `uncertain` ones (adds that failed mid-flight), reports those Redis never received as lost.
   */
  async reconcile(stale: StaleJob[]): Promise<void> {
    const parts = this.parts;
    if (!parts || parts.commands.status !== 'ready' || stale.length === 0) return;
    const jobs = await Promise.all(stale.map(({ id }) => parts.queue.getJob(id).then((job) => job, () => null)));
    // Absent (not merely unreadable) and its add uncertain: it never arrived, or it ran and BullMQ
    // has already dropped it (the consumer keeps the newest 10,000 finished jobs, seconds' worth
    // on a busy queue). Only the first may be reported as lost: "never reached Redis" tells the
    // caller it is safe to call again.
    const absent = stale.filter(({ uncertain }, i) => uncertain && jobs[i] === undefined);
    if (absent.length > 0) {
      const keptSince = await this.finishedKeptSince(parts);
      const finishedOn = await this.finishTimes(parts, absent.map((job) => job.after));
      for (const job of absent) {
        if (keptSince !== undefined && wouldStillHold(job, keptSince, finishedOn)) {
          this.outcomes.lost(job.id, this.unavailable(new Error('the connection failed while the job was being added; it never reached Redis')));
        } else {
          this.log.debug({ jobId: job.id }, 'cannot tell whether a job whose add failed reached Redis; its calls will time out');
        }
      }
    }
    for (const job of jobs as (Job | undefined | null)[]) {
      if (!job?.id || !job.finishedOn) continue;
      this.log.debug({ jobId: job.id }, 'settled a call from the job itself (its event was missed)');
      if (job.failedReason && (await job.isFailed())) this.outcomes.failed(job.id, job.failedReason);
      else this.outcomes.completed(job.id, job.returnvalue);
    }
  }

  /** When each of these jobs finished (epoch ms, the consumer's clock), for those Redis still holds. */
  private async finishTimes(parts: Parts, ids: (string | undefined)[]): Promise<Map<string, number>> {
    const unique = [...new Set(ids.filter((id) => id !== undefined))];
    const jobs = await Promise.all(unique.map((id) => parts.queue.getJob(id).catch(() => undefined)));
    const times = new Map<string, number>();
    unique.forEach((id, i) => {
      const at = jobs[i]?.finishedOn;
      if (at !== undefined) times.set(id, at);
    });
    return times;
  }

  /**
   * When the oldest finished job BullMQ still keeps finished (epoch ms, the consumer's clock), the
   * later of the completed and failed sets': every job that finished after it is still there,
   * because BullMQ drops finished jobs oldest first. `-Infinity` when both sets are empty, and
   * `undefined` when Redis could not say.
   */
  private async finishedKeptSince(parts: Parts): Promise<number | undefined> {
    try {
      const oldest = await Promise.all(
        [parts.queue.keys.completed, parts.queue.keys.failed].map(async (key) => {
          const [, score] = await parts.commands.zrange(key as string, 0, 0, 'WITHSCORES');
          return score === undefined ? -Infinity : Number(score);
        }),
      );
      return Math.max(...oldest);
    } catch {
      return undefined;
    }
  }

  /** The connected parts, or `RedisUnavailableError` after `connectTimeoutMs`. */
  private async ready(): Promise<Parts> {
    if (this.parts) return this.parts;
    if (!this.connecting) {
      const connecting = this.connect();
      this.connecting = connecting;
      // A failed attempt is forgotten so the next call tries again.
      connecting.catch(() => {
        if (this.connecting === connecting) this.connecting = undefined;
      });
    }
    const ms = this.options.connectTimeoutMs;
    try {
      return await withDeadline(this.connecting, ms, () => new Error(`no connection within ${ms} ms`));
    } catch (err) {
      throw this.unavailable(err);
    }
  }

  private async connect(): Promise<Parts> {
    const redis = new RedisConnections(this.options.redisUrl, this.log);
    const commands = redis.open('command');
    const queue = new Queue(this.options.queue, queueOptions(this.options.redisUrl, this.options.queue, commands));
    queue.on('error', (err) => this.log.debug({ err }, 'queue error'));
    const parts: Parts = { redis, commands, queue };
    this.attempt = parts;
    const stillWanted = () => {
      if (this.closed) throw new Error('client closed while connecting');
    };
    try {
      await Promise.race([queue.waitUntilReady(), redis.refused]);
      stillWanted();
      // Its own connection: XREAD blocks it. Retrying forever, like BullMQ's blocking readers.
      const replies = new ReplyReader(redis.open('blocking'), this.replyKey, this.outcomes, this.log);
      parts.replies = replies;
      replies.start();
      this.parts = parts;
      this.log.debug({ redis: redactUrl(this.options.redisUrl), replyId: this.replyId }, 'client connected');
      return parts;
    } catch (err) {
      await this.teardown(parts);
      throw err;
    }
  }

  /** The newest connection attempt, for the cause of an outage. */
  private attempt?: Parts;

  private unavailable(err: unknown): RedisUnavailableError | ConfigError {
    if (err instanceof RedisUnavailableError || err instanceof ConfigError) return err;
    const commands = this.attempt?.commands;
    const known = commands && commands.status !== 'ready' ? this.attempt?.redis.lastError(commands) : undefined;
    return new RedisUnavailableError(redactUrl(this.options.redisUrl), known ?? err, isOutOfMemory(err));
  }

  private async teardown(parts: Parts): Promise<void> {
    // With Redis gone BullMQ's close may never return (BullMQ #4656): stop reconnecting so the
    // connections end on their own, and wait for each step only briefly.
    parts.redis.stopReconnecting();
    await parts.replies?.stop();
    // Replies to jobs still in flight would only recreate it, to expire with its TTL.
    if (parts.commands.status === 'ready') await settleWithin(parts.commands.del(this.replyKey), CLOSE_DEADLINE_MS);
    await settleWithin(parts.queue.close(), CLOSE_DEADLINE_MS);
    await parts.redis.close();
  }

  /** Closes whatever is open or opening. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const parts = this.parts ?? this.attempt;
    this.parts = undefined;
    // An attempt still connecting is torn down here too; its waitUntilReady may then never
    // settle, so it is not waited for.
    if (parts) await this.teardown(parts);
  }
}
