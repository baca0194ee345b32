/**
 * Environment parsing for the entry points (the CLI): every variable userops reads, its default,
 * and the check that names it when it is wrong. Libraries take options, never `process.env`.
 */
import { resolve } from 'node:path';

import { z } from 'zod';

import { LOG_LEVELS, type LogLevel } from './logger.js';
import { DEFAULT_MAX_JOB_BYTES, DEFAULT_MAX_OPS_PER_JOB, DEFAULT_QUEUE, parseWith, queueNameSchema } from './protocol/index.js';
import { redisUrlSchema } from './redis.js';

/** Default SQLite file, relative to the working directory. */
export const DEFAULT_DB_PATH = './data/userops.db';

/** Environment variables and what they mean; `userops --help` and the README list these. */
export const ENV_HELP: Record<string, string> = {
  REDIS_URL: 'Redis URL, redis:// or rediss:// with optional user:password (default redis://127.0.0.1:6379)',
  USEROPS_QUEUE: `queue name (default ${DEFAULT_QUEUE})`,
  USEROPS_DB: `consumer: SQLite file (default ${DEFAULT_DB_PATH})`,
  USEROPS_TIMEOUT_MS: 'client commands: how long a call may take (default 30000)',
  USEROPS_MAX_OPS_PER_JOB: `consumer: most ops one job may carry (default ${DEFAULT_MAX_OPS_PER_JOB})`,
  USEROPS_MAX_JOB_BYTES: 'consumer: most bytes of JSON one job may carry (default 1048576)',
  USEROPS_LEDGER_RETENTION_HOURS: 'consumer: how long applied job ids are remembered (default 168)',
  LOG_LEVEL: `one of ${LOG_LEVELS.join(', ')} (default info for the consumer, error for commands)`,
};

// Unset and empty mean the same: `FOO= userops ...` should not be an error.
const unsetIfEmpty = (v: unknown) => (v === '' ? undefined : v);
const optional = <T extends z.ZodType>(schema: T) => z.preprocess(unsetIfEmpty, schema.optional());
const integer = (min: number, max: number) =>
  z.coerce
    .number({ error: 'must be a number' })
    .int('must be a whole number')
    .min(min, `must be at least ${min}`)
    .max(max, `must be at most ${max}`);

const envSchema = z.object({
  REDIS_URL: optional(redisUrlSchema),
  USEROPS_QUEUE: optional(queueNameSchema),
  USEROPS_DB: optional(z.string()),
  USEROPS_TIMEOUT_MS: optional(integer(1, 24 * 3_600_000)),
  USEROPS_MAX_OPS_PER_JOB: optional(integer(1, 100_000)),
  USEROPS_MAX_JOB_BYTES: optional(integer(1024, 512 * 1024 * 1024)),
  USEROPS_LEDGER_RETENTION_HOURS: optional(integer(1, 24 * 365)),
  LOG_LEVEL: optional(z.enum(LOG_LEVELS, { error: `must be one of ${LOG_LEVELS.join(', ')}` })),
});

type Env = z.output<typeof envSchema>;

function readEnv(env: NodeJS.ProcessEnv): Env {
  const subset = Object.fromEntries(Object.keys(envSchema.shape).map((k) => [k, env[k]]));
  return parseWith(envSchema, subset, 'environment', 'config');
}

/** What `userops consumer` runs with. */
export interface ConsumerConfig {
  /** `undefined` when REDIS_URL is unset: the CLI then looks for, or starts, a local Redis. */
  redisUrl: string | undefined;
  queue: string;
  dbPath: string;
  logLevel: LogLevel;
  maxOpsPerJob: number;
  maxJobBytes: number;
  ledgerRetentionMs: number;
}

/** Reads the consumer's configuration; throws `ConfigError` naming the bad variable. */
export function consumerConfig(env: NodeJS.ProcessEnv = process.env): ConsumerConfig {
  const e = readEnv(env);
  return {
    redisUrl: e.REDIS_URL,
    queue: e.USEROPS_QUEUE ?? DEFAULT_QUEUE,
    dbPath: resolve(e.USEROPS_DB ?? DEFAULT_DB_PATH),
    logLevel: e.LOG_LEVEL ?? 'info',
    maxOpsPerJob: e.USEROPS_MAX_OPS_PER_JOB ?? DEFAULT_MAX_OPS_PER_JOB,
    maxJobBytes: e.USEROPS_MAX_JOB_BYTES ?? DEFAULT_MAX_JOB_BYTES,
    ledgerRetentionMs: (e.USEROPS_LEDGER_RETENTION_HOURS ?? 168) * 3_600_000,
  };
}

/** What the client commands (`create`, `get`, ...) run with. */
export interface ClientConfig {
  redisUrl: string | undefined;
  queue: string;
  timeoutMs: number;
  logLevel: LogLevel;
}

/** Reads the client commands' configuration; throws `ConfigError` naming the bad variable. */
export function clientConfig(env: NodeJS.ProcessEnv = process.env): ClientConfig {
  const e = readEnv(env);
  return {
    redisUrl: e.REDIS_URL,
    queue: e.USEROPS_QUEUE ?? DEFAULT_QUEUE,
    timeoutMs: e.USEROPS_TIMEOUT_MS ?? 30_000,
    logLevel: e.LOG_LEVEL ?? 'error',
  };
}
