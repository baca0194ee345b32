/**
 * The client's options: defaults, validation and the normalised form, in one place.
 */
import type { Logger } from 'pino';
import { z } from 'zod';

import { DEFAULT_MAX_OPS_PER_JOB, DEFAULT_QUEUE, parseWith, queueNameSchema } from '../protocol/index.js';
import { loggerSchema } from '../logger.js';
import { DEFAULT_REDIS_URL, redisUrlSchema } from '../redis.js';

/** Options of {@link UserOpsClient}. */
export interface ClientOptions {
  /**
   * Redis that carries the queue; `rediss://` for TLS, credentials in the URL.
   * @defaultValue the `REDIS_URL` environment variable, else `redis://127.0.0.1:6379`
   */
  redisUrl?: string;
  /**
   * Queue name; must match the consumer's `USEROPS_QUEUE`.
   * @defaultValue `userops`
   */
  queue?: string;
  /**
   * How long a call may take, from the call to its result, before it rejects with `OpTimeoutError`.
   * @defaultValue 30000
   */
  timeoutMs?: number;
  /**
   * How long a call waits for Redis to be reachable before it rejects with
   * `RedisUnavailableError`. Calls fail fast instead of queueing in memory while Redis is down.
   * @defaultValue 5000
   */
  connectTimeoutMs?: number;
  /** A pino logger; the client logs with `child({ component: 'client' })`. Defaults to silent. */
  logger?: Logger;
  /**
   * Most ops coalesced into one job while earlier jobs are in flight.
   * @defaultValue 100
   */
  maxBatchOps?: number;
  /**
   * Most bytes of serialized ops coalesced into one job (a single larger op is sent alone).
   * @defaultValue 256 KiB
   */
  maxBatchBytes?: number;
  /**
   * Most jobs of this client in flight at once; further calls wait and are batched.
   * @defaultValue 4
   */
  maxInFlightJobs?: number;
  /**
   * Most calls pending (queued or in flight) at once; a call beyond it rejects at once with
   * `OverloadedError` instead of growing memory without bound.
   * @defaultValue 10000
   */
  maxPendingCalls?: number;
}

const schema = z.strictObject({
  redisUrl: redisUrlSchema.optional(),
  queue: queueNameSchema.default(DEFAULT_QUEUE),
  timeoutMs: z.number().int().min(1).max(24 * 3_600_000).default(30_000),
  connectTimeoutMs: z.number().int().min(1).max(600_000).default(5000),
  logger: loggerSchema.optional(),
  maxBatchOps: z.number().int().min(1).max(DEFAULT_MAX_OPS_PER_JOB).default(100),
  maxBatchBytes: z.number().int().min(1024).max(64 * 1024 * 1024).default(256 * 1024),
  maxInFlightJobs: z.number().int().min(1).max(1000).default(4),
  maxPendingCalls: z.number().int().min(1).max(10_000_000).default(10_000),
});

/** Options after defaults and validation. */
export type ResolvedClientOptions = Omit<z.output<typeof schema>, 'redisUrl'> & { redisUrl: string };

/** Applies defaults and validates; throws a `ConfigError` naming each bad option. */
export function resolveClientOptions(options: ClientOptions = {}): ResolvedClientOptions {
  const parsed = parseWith(schema, options, 'UserOpsClient options', 'config');
  // The documented fallback; checked like the option, so a bad REDIS_URL is named as such.
  const redisUrl = parsed.redisUrl ?? parseWith(redisUrlSchema.optional(), process.env.REDIS_URL || undefined, 'REDIS_URL', 'config');
  return { ...parsed, redisUrl: redisUrl ?? DEFAULT_REDIS_URL };
}
