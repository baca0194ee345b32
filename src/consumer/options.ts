/**
 * The consumer's options: defaults, validation and the normalised form, in one place.
 */
import type { Logger } from 'pino';
import { z } from 'zod';

import { DEFAULT_MAX_JOB_BYTES, DEFAULT_MAX_OPS_PER_JOB, DEFAULT_QUEUE, parseWith, queueNameSchema } from '../protocol/index.js';
import { loggerSchema } from '../logger.js';
import { DEFAULT_REDIS_URL, redisUrlSchema } from '../redis.js';

/** Options of {@link UserOpsConsumer}. */
export interface ConsumerOptions {
  /** SQLite database file; its folder is created if missing. */
  dbPath: string;
  /**
   * Redis to consume from.
   * @defaultValue `redis://127.0.0.1:6379`
   */
  redisUrl?: string;
  /**
   * Queue name, under BullMQ's default `bull` prefix (`bull:{<queue>}` on a Redis Cluster; see `bullPrefix`).
   * @defaultValue `userops`
   */
  queue?: string;
  /** A pino logger; the consumer logs with `child({ component: 'consumer' })`. Defaults to silent. */
  logger?: Logger;
  /**
   * Most ops a job may carry; a larger job fails as malformed.
   * @defaultValue 1000
   */
  maxOpsPerJob?: number;
  /**
   * Most bytes of JSON a job's data may take; a larger job fails as malformed.
   * @defaultValue 1 MiB
   */
  maxJobBytes?: number;
  /**
   * Most ops committed in one transaction when several jobs are waiting. Larger groups share one
   * fsync among more ops; smaller ones bound how long one commit holds the consumer, and its memory.
   * @defaultValue 2000
   */
  maxOpsPerCommit?: number;
  /**
   * How long ledger rows (job id -> results) are kept. A job re-delivered within this window is
   * answered from the ledger and applied nothing twice; keep it far longer than any retry horizon.
   * @defaultValue 7 days
   */
  ledgerRetentionMs?: number;
  /**
   * How often old ledger rows are pruned.
   * @defaultValue 1 hour
   */
  ledgerPruneIntervalMs?: number;
  /**
   * How often the writer checks the queue's settings that other BullMQ clients can change (the
   * events stream's cap, which it sets back) and looks for signs of BullMQ 5 clients, which it
   * warns about (docs/protocol.md).
   * @defaultValue 10 s
   */
  queueCheckIntervalMs?: number;
  /**
   * BullMQ job lock duration. A consumer that dies holding jobs releases them when the lock
   * expires, so this bounds recovery time. Jobs are held only for the milliseconds a group commit
   * takes (and locks are renewed while a storage error is retried), so a short lock is safe.
   * @defaultValue 5 s
   */
  lockDurationMs?: number;
  /**
   * How long SQLite waits for a lock held by another connection before the job is retried.
   * Must stay below `lockDurationMs` minus 2 s.
   * @defaultValue 2000
   */
  busyTimeoutMs?: number;
  /**
   * Lifetime of the writer lease: only its holder applies jobs, and a standby consumer takes over
   * this long after the writer dies (at once when it shuts down cleanly).
   * @defaultValue 5000
   */
  writerLeaseMs?: number;
  /**
   * How long to wait for Redis at start before giving up with a clear error.
   * @defaultValue 30 s
   */
  startTimeoutMs?: number;
  /**
   * An HTTP server for probes and scrapes: `/healthz`, `/readyz`, `/metrics` and, with `dashboard`,
   * the bull-board dashboard at `/dashboard`. Port 0 picks a free port (see `httpAddress`).
   * Closed with the consumer.
   * @defaultValue no server
   */
  http?: {
    port: number;
    /** @defaultValue `0.0.0.0`, so a Prometheus outside the container can scrape it */
    host?: string;
    /**
     * Serve the dashboard; with `auth`, only to a browser that gives these credentials. Without
     * `auth`, `host` must be a loopback address (127.0.0.1, ::1, localhost).
     */
    dashboard?: { auth?: { user: string; password: string } };
  };
}

const HOUR = 3_600_000;

/** Where the HTTP server listens unless told: every interface, so a Prometheus outside a container can scrape it. */
export const DEFAULT_HTTP_HOST = '0.0.0.0';

const schema = z.strictObject({
  dbPath: z.string().min(1, 'must be a file path'),
  redisUrl: redisUrlSchema.default(DEFAULT_REDIS_URL),
  queue: queueNameSchema.default(DEFAULT_QUEUE),
  logger: loggerSchema.optional(),
  maxOpsPerJob: z.number().int().min(1).max(100_000).default(DEFAULT_MAX_OPS_PER_JOB),
  maxJobBytes: z.number().int().min(1024).max(512 * 1024 * 1024).default(DEFAULT_MAX_JOB_BYTES),
  maxOpsPerCommit: z.number().int().min(1).max(1_000_000).default(2000),
  ledgerRetentionMs: z.number().int().min(60_000, 'must be at least one minute').default(7 * 24 * HOUR),
  ledgerPruneIntervalMs: z.number().int().min(1000).default(HOUR),
  queueCheckIntervalMs: z.number().int().min(100).max(HOUR).default(10_000),
  lockDurationMs: z.number().int().min(1000).max(600_000).default(5000),
  busyTimeoutMs: z.number().int().min(0).max(600_000).default(2000),
  writerLeaseMs: z.number().int().min(1000).max(600_000).default(5000),
  startTimeoutMs: z.number().int().min(0).default(30_000),
  http: z
    .strictObject({
      port: z.number().int().min(0).max(65_535),
      host: z.string().min(1, 'must be a host name or address').default(DEFAULT_HTTP_HOST),
      dashboard: z
        .strictObject({
          auth: z.strictObject({ user: z.string().min(1, 'must not be empty'), password: z.string().min(1, 'must not be empty') }).optional(),
        })
        .optional(),
    })
    .optional(),
});

/** Whether `host` is a loopback address or name: only this machine's processes reach a server there. */
export function isLoopback(host: string): boolean {
  return /^127\.\d+\.\d+\.\d+$/.test(host) || host === '::1' || host.toLowerCase() === 'localhost';
}

// A commit blocked on a lock for busyTimeoutMs, plus the retry backoff (2 s), must fit inside
// the job lock, or a consumer merely waiting on SQLite would look dead.
const checked = schema
  .refine((o) => o.busyTimeoutMs + 2000 < o.lockDurationMs, {
    path: ['busyTimeoutMs'],
    message: 'must be less than lockDurationMs minus 2000',
  })
  // An open dashboard shows people's data and adds, retries and removes jobs for whoever reaches
  // it: on an address other machines reach, that is a mistake to refuse, not a choice to serve.
  .refine((o) => !o.http?.dashboard || o.http.dashboard.auth || isLoopback(o.http.host), {
    path: ['http', 'dashboard', 'auth'],
    message:
      'must be set (USEROPS_DASHBOARD_USER and USEROPS_DASHBOARD_PASSWORD) unless the HTTP server listens on a loopback address ' +
      '(USEROPS_HTTP_HOST=127.0.0.1): without it, anyone who reaches the port could read job data and add or remove jobs',
  });

/** Options after defaults and validation. */
export type ResolvedConsumerOptions = z.output<typeof schema>;

/** Applies defaults and validates; throws a `ConfigError` naming each bad option. */
export function resolveConsumerOptions(options: ConsumerOptions): ResolvedConsumerOptions {
  return parseWith(checked, options, 'consumer options', 'config');
}
