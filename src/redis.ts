/**
 * Redis connections for both sides of the queue: one place that knows how a URL becomes an ioredis
 * client, which options each kind of connection needs, and how to print a URL without its secrets.
 */
import { Redis, type RedisOptions } from 'ioredis';
import type { Logger } from 'pino';
import { z } from 'zod';

/** Default Redis when neither an option nor `REDIS_URL` names one. */
export const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';

/**
 * `command`: fails fast while disconnected (no offline queue), for calls a user waits on.
 * `blocking`: BullMQ's Worker and QueueEvents block on Redis and must retry forever, which BullMQ
 * requires as `maxRetriesPerRequest: null`.
 */
export type ConnectionRole = 'command' | 'blocking';

/** Returns the URL with any password replaced by `***`, fit for logs and error messages. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return '<unparseable Redis URL>';
  }
}

/**
 * Validates a Redis URL and returns an error message, or `undefined` when it is usable.
 * Accepts `redis://` and `rediss://` (TLS), with optional user, password and database number.
 */
export function checkRedisUrl(url: string): string | undefined {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return 'expected a URL like redis://[user:password@]host:port[/db]';
  }
  if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') {
    return `expected the scheme redis:// or rediss://, got ${parsed.protocol}//`;
  }
  if (!parsed.hostname) return 'expected a host, as in redis://host:6379';
  const db = parsed.pathname.replace(/^\//, '');
  if (db !== '' && !/^\d{1,2}$/.test(db)) return `expected a database number after the host, got /${db}`;
  return undefined;
}

/** A Redis URL, checked by {@link checkRedisUrl}. */
export const redisUrlSchema = z.string().superRefine((url, ctx) => {
  const problem = checkRedisUrl(url);
  if (problem) ctx.addIssue({ code: 'custom', message: problem });
});

const lastErrors = new WeakMap<Redis, Error>();

/**
 * The most recent connection error of `client` (ECONNREFUSED, WRONGPASS, ...): more telling than
 * the "Connection is closed" a failed command reports.
 */
export function lastConnectionError(client: Redis): Error | undefined {
  return lastErrors.get(client);
}

/** How long to wait between reconnection attempts: quick at first, then every 2 s. */
function retryStrategy(times: number): number {
  return Math.min(100 * 2 ** Math.min(times, 5), 2000);
}

/**
 * Opens an ioredis connection for `role`. Connection errors are logged (at most once per outage)
 * instead of surfacing as unhandled `error` events.
 */
export function createRedis(url: string, role: ConnectionRole, logger: Logger, extra: RedisOptions = {}): Redis {
  const options: RedisOptions = {
    connectionName: `userops-${role}`,
    connectTimeout: 5000,
    retryStrategy,
    ...(role === 'command'
      ? { enableOfflineQueue: false, maxRetriesPerRequest: 1 }
      : { enableOfflineQueue: true, maxRetriesPerRequest: null }),
    ...extra,
  };
  const client = new Redis(url, options);
  let down = false;
  client.on('error', (err: Error) => {
    lastErrors.set(client, err);
    if (!down) logger.warn({ err, redis: redactUrl(url), role }, 'Redis connection error');
    down = true;
  });
  client.on('ready', () => {
    if (down) logger.info({ redis: redactUrl(url), role }, 'Redis connection restored');
    down = false;
  });
  return client;
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
