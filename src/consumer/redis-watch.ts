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
 * A condition that lasts (Redis unreachable, Redis refusing writes): reported when it begins, again
 * every {@link REMIND_EVERY_MS} while it lasts, and ended by the caller, who says how it ended.
 */
class Incident {
  private since?: number;
  private reminder?: NodeJS.Timeout;
  /** The latest reason given: a long incident reports what it is now, not what it first was. */
  reason = '';

  constructor(private readonly report: (reason: string, forMs: number) => void) {}

  get active(): boolean {
    return this.since !== undefined;
  }

  /** Records `reason`; reports only an incident that was not already under way. */
  begin(reason: string): void {
    this.reason = reason;
    if (this.since !== undefined) return;
    this.since = Date.now();
    this.remind();
    this.reminder = setInterval(() => this.remind(), REMIND_EVERY_MS);
    this.reminder.unref();
  }

  /** Ends the incident: how long it lasted, or `undefined` if none was under way. */
  end(): number | undefined {
    if (this.since === undefined) return undefined;
    this.stop();
    const lastedMs = Date.now() - this.since;
    this.since = undefined;
    return lastedMs;
  }

  /** Stops the reminders. Idempotent. */
  stop(): void {
    clearInterval(this.reminder);
  }

  private remind(): void {
    this.report(this.reason, Date.now() - (this.since ?? Date.now()));
  }
}

/**
 * Watches one connection and reports its outages; `stop()` before closing the connection. Also
 * told by the consumer when Redis refuses writes for want of memory: Redis then answers PING and
 * reads, but refuses every script that takes, finishes or adds a job, and left to the loop that
 * was an error with a stack trace every few seconds that never said what to do.
 */
export class RedisWatch {
  private readonly where: string;
  private readonly outage: Incident;
  private readonly refusal: Incident;

  /**
   * @param client - the connection whose outages stand for the consumer's: the worker's own
   * @param url - the Redis URL, logged with its password redacted
   */
  constructor(
    private readonly client: Redis,
    url: string,
    private readonly log: Logger,
  ) {
    const where = (this.where = redactUrl(url));
    // The reason alone, without the stack: where a socket failed says nothing worth its lines.
    this.outage = new Incident((reason, downForMs) => log.warn({ redis: where, reason, downForMs }, `waiting for Redis at ${where}`));
    this.refusal = new Incident((reason, refusedForMs) =>
      log.warn(
        { redis: where, reason, refusedForMs },
        `Redis at ${where} is out of memory and refuses writes: no job can be taken or finished, and clients' calls fail. Free memory in Redis or raise its maxmemory`,
      ),
    );
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
    return this.refusal.active ? `out of memory, refusing writes: ${this.refusal.reason}` : undefined;
  }

  /**
   * Whether `err` is Redis refusing a write for want of memory; if so, reported here (once, then
   * every {@link REMIND_EVERY_MS} until {@link writesAccepted}), and the caller logs it at debug.
   */
  refusedWrite(err: unknown): boolean {
    if (!isOutOfMemory(err)) return false;
    this.refusal.begin(err.message.replace(/\.? script: .*$/s, '.'));
    return true;
  }

  /**
   * Ends a refusal {@link refusedWrite} reported: with one line when a write went through
   * (`proven`), quietly when the consumer merely has no write to make any more (a standby that
   * found a writer to wait behind).
   */
  writesAccepted(proven = true): void {
    const refusedForMs = this.refusal.end();
    if (refusedForMs === undefined) return;
    this.log[proven ? 'info' : 'debug']({ redis: this.where, refusedForMs }, `Redis at ${this.where} accepts writes again`);
  }

  /** Stops watching: errors of a connection being closed are no outage. Idempotent. */
  stop(): void {
    this.client.off('error', this.onError);
    this.client.off('ready', this.onReady);
    this.outage.stop();
    this.refusal.stop();
  }

  private readonly onError = (err: Error): void => this.outage.begin(err.message);

  private readonly onReady = (): void => {
    const downForMs = this.outage.end();
    if (downForMs === undefined) return;
    this.log.info({ redis: this.where, downForMs }, `Redis reachable again at ${this.where}`);
  };
}
