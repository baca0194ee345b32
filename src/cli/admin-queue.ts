/**
 * The admin commands' connection to the queue: one BullMQ Queue on one command connection, ready
 * within a deadline or a `RedisUnavailableError`, and closed within a deadline whatever Redis does.
 */
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';

import type { AdminConfig } from '../config.js';
import { createLogger } from '../logger.js';
import { ConfigError, RedisUnavailableError } from '../protocol/errors.js';
import { DEFAULT_REDIS_URL, queueOptions, RedisConnections, redactUrl, settleWithin, userOpsKey, withDeadline } from '../redis.js';
import { TolerantQueue } from '../unreadable-jobs.js';

/** How long a command waits for Redis before exiting 3; as long as a client's connect timeout. */
const CONNECT_DEADLINE_MS = 5000;
/** Longest wait for each close step: BullMQ's close can hang while Redis is down (#4656). */
const CLOSE_DEADLINE_MS = 2000;

/** What an admin command gets to work with. */
export interface AdminQueue {
  queue: Queue;
  /** The command connection, for userops' own keys. */
  redis: Redis;
  /** userops' own keys beside the queue's: the writer lease and the database identity. */
  keys: { writer: string; db: string };
  /** The Redis URL with its password redacted, for output. */
  redisUrl: string;
}

/** Connects, runs `work`, and closes, even when `work` throws. */
export async function withAdminQueue<T>(config: AdminConfig, work: (q: AdminQueue) => Promise<T>): Promise<T> {
  const url = config.redisUrl ?? DEFAULT_REDIS_URL;
  const logger = createLogger(config.logLevel, process.stderr);
  const connections = new RedisConnections(url, logger);
  const redis = connections.open('command');
  const queue = new TolerantQueue(config.queue, queueOptions(url, config.queue, redis));
  queue.on('error', (err) => logger.debug({ err }, 'queue error'));
  try {
    try {
      const ready = Promise.race([queue.waitUntilReady(), connections.refused]);
      await withDeadline(ready, CONNECT_DEADLINE_MS, () => new Error(`no connection within ${CONNECT_DEADLINE_MS} ms`));
    } catch (err) {
      throw err instanceof ConfigError ? err : new RedisUnavailableError(redactUrl(url), connections.lastError(redis) ?? err);
    }
    return await work({ queue, redis, keys: { writer: userOpsKey(url, config.queue, 'writer'), db: userOpsKey(url, config.queue, 'db') }, redisUrl: redactUrl(url) });
  } finally {
    connections.stopReconnecting();
    // Not connected: end the socket first, so BullMQ's close has nothing to wait for.
    if (redis.status !== 'ready') await connections.close();
    await settleWithin(queue.close(), CLOSE_DEADLINE_MS);
    await connections.close();
  }
}
