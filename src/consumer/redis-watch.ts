/**
 * What the consumer says while Redis is unreachable: one warning naming what it waits for, a
 * reminder now and then, and one line when Redis is back. Left to the connections, an outage
 * logged an error with a stack trace per reconnect attempt and per connection, about two a second,
 * without ever saying what the consumer was waiting for.
 */
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';

import { isOutOfMemory, redactUrl } from '../redis.js';

/**
 * How often an outage that goes on is reported again. Once per outage scrolls out of view (or out of
 * a `logs --since` window) in an outage of hours; once per reconnect attempt buries everything
 * else. Two lines a minute keep the reason in any recent window of the log.
 */
const REMIND_EVERY_MS = 30_000;

/** What ioredis fails commands with on a connection that has closed. */
const CONNECTION_CLOSED = 'Connection is closed.';

/**
 * Whether `err` says a connection to Redis failed or closed, rather than that something went wrong
 * in a command or the worker: Node's socket and DNS errors name the system call that failed.
 */
export function isConnectionError(err: unknown): boolean {
  const e = err as { syscall?: unknown; message?: unknown } | null | undefined;
  return typeof e?.syscall === 'string' || e?.message === CONNECTION_CLOSED;
}

/**
 * Watches one connection and reports its outages; `stop()` before closing the connection. Also
 * told by the consumer when Redis refuses writes for want of memory: Redis then answers PING and
 * reads, but refuses every script that takes, finishes or adds a job, and left to the loop that
 * was an error with a stack trace every few seconds that never said what to do.
 */
export class RedisWatch {
  private readonly where: string;
  private downSince?: number;
  private reason = '';
  private reminder?: NodeJS.Timeout;
  private refusingSince?: number;
  private refusal = '';
  private refusalReminder?: NodeJS.Timeout;

  /**
   * @param client - the connection whose outages stand for the consumer's: the worker's own
   * @param url - the Redis URL, logged with its password redacted
   */
  constructor(
    private readonly client: Redis,
    url: string,
    private readonly log: Logger,
  ) {
    this.where = redactUrl(url);
    client.on('error', this.onError);
    client.on('ready', this.onReady);
  }

  /**
   * Whether a worker error is an echo of an outage this watch reports, to be logged at debug only.
   * BullMQ forwards every error of each of its connections, and a copy of ours may notice a
   * failure before ours does, so a connection error counts whatever our connection's state.
   */
  isOutageNoise(err: unknown): boolean {
    return this.client.status !== 'ready' || isConnectionError(err);
  }

  /**
   * Why Redis refuses writes, while it does (it is over its maxmemory), for `/readyz`: the
   * consumer can take and finish no job, though PING answers.
   */
  get writeProblem(): string | undefined {
    return this.refusingSince === undefined ? undefined : `out of memory, refusing writes: ${this.refusal}`;
  }

  /**
   * Whether `err` is Redis refusing a write for want of memory; if so, reported here (once, then
   * every {@link REMIND_EVERY_MS} until {@link writesAccepted}), and the caller logs it at debug.
   */
  refusedWrite(err: unknown): boolean {
    if (!isOutOfMemory(err)) return false;
    this.writesRefused(err);
    return true;
  }

  private writesRefused(err: Error): void {
    this.refusal = err.message.replace(/\.? script: .*$/s, '.');
    if (this.refusingSince !== undefined) return;
    this.refusingSince = Date.now();
    this.reportRefusal();
    this.refusalReminder = setInterval(() => this.reportRefusal(), REMIND_EVERY_MS);
    this.refusalReminder.unref();
  }

  /**
   * Ends a refusal {@link refusedWrite} reported: with one line when a write went through
   * (`proven`), quietly when the consumer merely has no write to make any more (a standby that
   * found a writer to wait behind).
   */
  writesAccepted(proven = true): void {
    if (this.refusingSince === undefined) return;
    clearInterval(this.refusalReminder);
    const refusedForMs = Date.now() - this.refusingSince;
    this.log[proven ? 'info' : 'debug']({ redis: this.where, refusedForMs }, `Redis at ${this.where} accepts writes again`);
    this.refusingSince = undefined;
  }

  /** Stops watching: errors of a connection being closed are no outage. Idempotent. */
  stop(): void {
    this.client.off('error', this.onError);
    this.client.off('ready', this.onReady);
    clearInterval(this.reminder);
    clearInterval(this.refusalReminder);
  }

  private readonly onError = (err: Error): void => {
    this.reason = err.message;
    if (this.downSince !== undefined) return;
    this.downSince = Date.now();
    this.report();
    this.reminder = setInterval(() => this.report(), REMIND_EVERY_MS);
    this.reminder.unref();
  };

  private readonly onReady = (): void => {
    if (this.downSince === undefined) return;
    clearInterval(this.reminder);
    this.log.info({ redis: this.where, downForMs: Date.now() - this.downSince }, `Redis reachable again at ${this.where}`);
    this.downSince = undefined;
  };

  private report(): void {
    // The reason alone, without the stack: where a socket failed says nothing worth its lines.
    const downForMs = Date.now() - (this.downSince ?? Date.now());
    this.log.warn({ redis: this.where, reason: this.reason, downForMs }, `waiting for Redis at ${this.where}`);
  }

  private reportRefusal(): void {
    const refusedForMs = Date.now() - (this.refusingSince ?? Date.now());
    this.log.warn(
      { redis: this.where, reason: this.refusal, refusedForMs },
      `Redis at ${this.where} is out of memory and refuses writes: no job can be taken or finished, and clients' calls fail. Free memory in Redis or raise its maxmemory`,
    );
  }
}
