/**
 * Redis connections for both sides of the queue: one place that knows how a URL becomes an ioredis
 * client, which options each kind of connection needs, and how to print a URL without its secrets.
 */
import type { QueueOptions } from 'bullmq';
import { Cluster, Redis, type RedisOptions } from 'ioredis';
import type { Logger } from 'pino';
import { z } from 'zod';

import { ConfigError } from './protocol/errors.js';
import { bullPrefix, parseRedisUrl, redactUrl, type RedisTarget } from './redis-url.js';

export { bullPrefix, redactUrl, userOpsKey } from './redis-url.js';

/** Default Redis when neither an option nor `REDIS_URL` names one. */
export const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';

/**
 * Entries BullMQ keeps in a queue's events stream. Outcomes reach clients through their own reply
 * streams, not this one, yet each completion entry carries its job's results: at BullMQ's default
 * of 10,000 the stream held ~29 MB (64-op jobs) that nothing read. A short one still serves a
 * `QueueEvents` listener watching live.
 */
export const EVENTS_STREAM_MAX_LEN = 1000;

/**
 * Whether Redis answered that a key holds another type than the command expects (WRONGTYPE):
 * something other than userops wrote that key. An answer, not an outage to wait out, unlike the
 * other error replies (LOADING while Redis restarts, READONLY on a replica after a failover).
 */
export function isWrongTypeError(err: unknown): err is Error {
  return err instanceof Error && err.message.startsWith('WRONGTYPE');
}

/**
 * Whether Redis refused to SELECT the URL's database number: it has fewer databases (16 unless
 * configured). ioredis reports that as an error event and carries on in database 0, where the
 * owner would have read and written another queue's keys without a word.
 */
function isNoSuchDatabase(err: Error): boolean {
  return /DB index is out of range|invalid DB index/i.test(err.message);
}

/**
 * Blanks the arguments of the command an ioredis reply error answers when that command carries
 * credentials (AUTH, HELLO ... AUTH): a failed login's error holds the password it tried, and it
 * travels on as the cause of the errors callers get, into their logs as well as ours.
 */
export function hideCredentials(err: unknown): void {
  const command = (err as { command?: { name?: unknown; args?: unknown } } | null)?.command;
  if (typeof command?.name === 'string' && /^(auth|hello)$/i.test(command.name)) command.args = ['***'];
}

/**
 * Whether Redis refused a command because it is over its `maxmemory` (policy `noeviction`, which
 * BullMQ requires). A refusal, not a partial write: Redis refuses a script only at its first
 * write that needs memory, and BullMQ's add script writes nothing before its first such write.
 */
export function isOutOfMemory(err: unknown): err is Error {
  return err instanceof Error && err.message.startsWith('OOM ');
}

/**
 * Whether ioredis refused a command because it has no connection and no offline queue: the
 * command never reached Redis.
 */
export function isOfflineRefusal(err: unknown): boolean {
  return err instanceof Error && /enableOfflineQueue/.test(err.message);
}

/** The options of every userops BullMQ Queue: its connection, its key prefix, a short events stream. */
export function queueOptions(url: string, queue: string, connection: Redis): QueueOptions {
  return { connection, prefix: bullPrefix(url, queue), streams: { events: { maxLen: EVENTS_STREAM_MAX_LEN } } };
}

/**
 * `command`: fails fast while disconnected (no offline queue), for calls a user waits on.
 * `blocking`: BullMQ's Worker and the client's reply reader block on Redis and must retry forever,
 * which BullMQ requires as `maxRetriesPerRequest: null`.
 */
export type ConnectionRole = 'command' | 'blocking';

/**
 * Validates a Redis URL (any form {@link parseRedisUrl} accepts) and returns an error message, or
 * `undefined` when it is usable.
 */
export function checkRedisUrl(url: string): string | undefined {
  const target = parseRedisUrl(url);
  return typeof target === 'string' ? target : undefined;
}

/** A Redis URL, checked by {@link checkRedisUrl}. */
export const redisUrlSchema = z.string().superRefine((url, ctx) => {
  const problem = checkRedisUrl(url);
  if (problem) ctx.addIssue({ code: 'custom', message: problem });
});

/**
 * The Redis connections of one owner (a client or a consumer), opened from one URL.
 *
 * BullMQ duplicates a connection for its blocking readers, copying our options; the retry
 * strategy below is shared by those copies, so once `close()` starts, every one of them stops
 * reconnecting and ends. Without that, closing while Redis is down would wait forever
 * (BullMQ issue #4656) or leave a reconnecting socket keeping the process alive.
 */
export class RedisConnections {
  private closing = false;
  private readonly clients: Redis[] = [];
  private readonly lastErrors = new WeakMap<Redis, Error>();
  private readonly target: RedisTarget;
  private readonly reportOutages: boolean;
  private refuse?: (err: ConfigError) => void;
  /**
   * Rejects with a `ConfigError` once Redis has refused what the URL asks of every connection (a
   * database it does not have): waiting for such a connection would never end. Never resolves.
   */
  readonly refused: Promise<never>;

  /**
   * @param url - the Redis URL; never logged without {@link redactUrl}
   * @param logger - connection errors are logged here, once per outage and connection
   * @param options - `reportOutages: false` when the owner reports outages itself (the consumer,
   *   see consumer/redis-watch.ts): each connection's are then logged at debug only
   */
  constructor(
    readonly url: string,
    private readonly logger: Logger,
    options: { reportOutages?: boolean } = {},
  ) {
    const target = parseRedisUrl(url);
    // Options are validated before they get here; this is a programming error, not a user's.
    if (typeof target === 'string') throw new TypeError(`invalid Redis URL ${redactUrl(url)}: ${target}`);
    this.target = target;
    this.reportOutages = options.reportOutages ?? true;
    this.refused = new Promise<never>((_, reject) => (this.refuse = reject));
    // Raced by whoever waits for a connection; unobserved, it must not count as unhandled.
    this.refused.catch(() => undefined);
  }

  /** Opens a connection for `role`. */
  open(role: ConnectionRole, extra: RedisOptions = {}): Redis {
    const options: RedisOptions = {
      connectionName: `userops-${role}`,
      connectTimeout: 5000,
      // Closing a connection that never connected arms a timer this long, and it holds the
      // process: 2 s by default, past the ~5 s in which a command should fail with Redis down.
      disconnectTimeout: 200,
      // Quick at first, then every 2 s; never again once closing.
      retryStrategy: (times) => (this.closing ? null : Math.min(100 * 2 ** Math.min(times, 5), 2000)),
      ...(role === 'command'
        ? { enableOfflineQueue: false, maxRetriesPerRequest: 1 }
        : { enableOfflineQueue: true, maxRetriesPerRequest: null }),
      ...extra,
    };
    const client = connect(this.target, options);
    const where = { redis: redactUrl(this.url), role };
    let down = false;
    client.on('error', (err: Error) => {
      // A command refused while not connected is a consequence, not a cause: a host that never
      // answers would otherwise be reported as "Stream isn't writeable" instead of a timeout.
      if (isOfflineRefusal(err)) return;
      hideCredentials(err);
      this.lastErrors.set(client, err);
      if (isNoSuchDatabase(err)) {
        // Reported before the connection is ready, so nothing has run in database 0 yet.
        const message = `Redis at ${redactUrl(this.url)} has no such database (${err.message})`;
        this.closing = true;
        client.disconnect();
        this.refuse?.(new ConfigError([{ path: 'REDIS_URL', message: `the database number: ${err.message}` }], message));
        // Its owner is told, and says so: the client's caller, the commands' one-line error.
        this.logger[this.reportOutages ? 'warn' : 'debug'](where, message);
        return;
      }
      if (!down && !this.closing) this.logger[this.reportOutages ? 'warn' : 'debug']({ err, ...where }, 'Redis connection error');
      down = true;
    });
    client.on('ready', () => {
      if (down) this.logger[this.reportOutages ? 'info' : 'debug'](where, 'Redis connection restored');
      down = false;
    });
    this.clients.push(client);
    return client;
  }

  /**
   * The most recent connection error of `client` (ECONNREFUSED, WRONGPASS, ...): more telling
   * than the "Connection is closed" a failed command reports.
   */
  lastError(client: Redis): Error | undefined {
    return this.lastErrors.get(client);
  }

  /** True once `stopReconnecting()` or `close()` has been called. */
  get stopping(): boolean {
    return this.closing;
  }

  /** Stops every connection, and BullMQ's copies of them, from reconnecting. Call before closing BullMQ objects. */
  stopReconnecting(): void {
    this.closing = true;
  }

  /** Closes every connection: QUIT when connected, a hard disconnect otherwise. Idempotent. */
  async close(): Promise<void> {
    this.closing = true;
    await Promise.all(this.clients.map((c) => closeRedis(c)));
  }
}

/**
 * A client for `target`. A Cluster is returned typed as `Redis`: it answers the same commands,
 * BullMQ takes either, and the few members that differ (`status`, `quit`, `disconnect`,
 * `duplicate`, events) behave alike; one cast here spares every caller a union type.
 */
function connect(target: RedisTarget, options: RedisOptions): Redis {
  switch (target.mode) {
    case 'standalone':
      return new Redis(target.url, options);
    case 'sentinel': {
      const { sentinels, name, db, username, password, sentinelUsername, sentinelPassword, tls } = target;
      return new Redis({
        ...options,
        sentinels,
        name,
        db,
        ...(username ? { username } : {}),
        ...(password ? { password } : {}),
        ...(sentinelUsername ? { sentinelUsername } : {}),
        ...(sentinelPassword ? { sentinelPassword } : {}),
        ...(tls ? { tls: {}, sentinelTLS: {}, enableTLSForSentinelMode: true } : {}),
        // The Sentinels are asked again on every reconnect, so a failover is followed.
        ...(options.retryStrategy ? { sentinelRetryStrategy: options.retryStrategy } : {}),
      });
    }
    case 'cluster': {
      const { nodes, username, password, tls } = target;
      const { retryStrategy, enableOfflineQueue, lazyConnect, ...nodeOptions } = options;
      const cluster = new Cluster(nodes, {
        clusterRetryStrategy: retryStrategy ?? null,
        ...(enableOfflineQueue === undefined ? {} : { enableOfflineQueue }),
        ...(lazyConnect === undefined ? {} : { lazyConnect }),
        redisOptions: {
          ...nodeOptions,
          ...(username ? { username } : {}),
          ...(password ? { password } : {}),
          ...(tls ? { tls: {} } : {}),
        },
      });
      return cluster as unknown as Redis;
    }
  }
}

/**
 * Waits for `work` at most `ms`; resolves `true` if it settled in time. For close steps of
 * libraries that can wait forever on a dead connection.
 */
export async function settleWithin(work: Promise<unknown> | undefined, ms: number): Promise<boolean> {
  if (!work) return true;
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([work.then(() => true as const, () => true as const), expired]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Resolves or rejects as `work` does, or rejects with `onExpiry()` once `ms` pass first: for
 * waits on a connection that may never come. The timer is cleared either way.
 */
export async function withDeadline<T>(work: Promise<T>, ms: number, onExpiry: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(onExpiry()), ms);
  });
  try {
    return await Promise.race([work, expired]);
  } finally {
    clearTimeout(timer);
  }
}

/** Closes a connection politely, falling back to a hard disconnect if Redis does not answer. */
export async function closeRedis(client: Redis): Promise<void> {
  if (client.status === 'end') return;
  if (client.status !== 'ready') {
    client.disconnect();
    return;
  }
  try {
    await client.quit();
  } catch {
    client.disconnect();
  }
}
