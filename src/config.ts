/**
 * Environment parsing for the entry points (the CLI): every variable userops reads, its default,
 * and the check that names it when it is wrong. Libraries take options, never `process.env`.
 */
import { isIP } from 'node:net';
import { resolve } from 'node:path';

import { z } from 'zod';

import { DEFAULT_HTTP_HOST, isLoopback } from './consumer/options.js';
import { LOG_LEVELS, type LogLevel } from './logger.js';
import { ConfigError, DEFAULT_MAX_JOB_BYTES, DEFAULT_MAX_OPS_PER_JOB, DEFAULT_QUEUE, parseWith, queueNameSchema } from './protocol/index.js';
import { DEFAULT_REDIS_URL, redactUrl, redisUrlSchema } from './redis.js';

/** Default SQLite file, relative to the working directory. */
export const DEFAULT_DB_PATH = './data/userops.db';

/** Port of the consumer's HTTP server (probes, metrics, dashboard); Prometheus' range for exporters. */
export const DEFAULT_HTTP_PORT = 9464;

/** Environment variables and what they mean; `userops --help` and the README list these. */
export const ENV_HELP: Record<string, string> = {
  REDIS_URL:
    'Redis URL (default redis://127.0.0.1:6379): redis:// or rediss:// (TLS) with optional user:password, ' +
    'redis+cluster://host:port,host:port,... for a Cluster, redis+sentinel://host:port,.../<master> for Sentinel',
  USEROPS_QUEUE: `queue name (default ${DEFAULT_QUEUE})`,
  USEROPS_DB: `consumer, stats, backup: SQLite file (default ${DEFAULT_DB_PATH})`,
  USEROPS_TIMEOUT_MS: 'client commands: how long a call may take (default 30000)',
  USEROPS_MAX_OPS_PER_JOB: `consumer: most ops one job may carry (default ${DEFAULT_MAX_OPS_PER_JOB})`,
  USEROPS_MAX_JOB_BYTES: 'consumer: most bytes of JSON one job may carry (default 1048576)',
  USEROPS_LEDGER_RETENTION_HOURS: 'consumer: how long applied job ids are remembered (default 168)',
  USEROPS_HTTP_PORT: `consumer: port of /healthz, /readyz, /metrics (default ${DEFAULT_HTTP_PORT}; 0 turns the server off)`,
  USEROPS_HTTP_HOST: `consumer: address the HTTP server listens on (default ${DEFAULT_HTTP_HOST})`,
  USEROPS_DASHBOARD: 'consumer: 1 serves the bull-board dashboard at /dashboard (default 0)',
  USEROPS_DASHBOARD_USER: 'consumer: dashboard basic-auth user (set with USEROPS_DASHBOARD_PASSWORD)',
  USEROPS_DASHBOARD_PASSWORD: 'consumer: dashboard basic-auth password (never logged)',
  LOG_LEVEL: `one of ${LOG_LEVELS.join(', ')} (default info for the consumer, error for commands)`,
};

// Unset and empty mean the same: `FOO= userops ...` should not be an error.
const unsetIfEmpty = (v: unknown) => (v === '' ? undefined : v);
const optional = <T extends z.ZodType>(schema: T) => z.preprocess(unsetIfEmpty, schema.optional());
// Decimal digits only: Number() would read " " as 0 (USEROPS_HTTP_PORT=" " turned the server
// off), and 0x2328 or 1e3 are not what anyone means in a port or a timeout.
const integer = (min: number, max: number) =>
  z
    .string()
    .regex(/^-?\d+$/, 'must be a whole number in decimal digits')
    .transform(Number)
    .pipe(z.number().min(min, `must be at least ${min}`).max(max, `must be at most ${max}`));

const flag = z
  .enum(['1', 'true', 'yes', 'on', '0', 'false', 'no', 'off'], { error: 'must be 1 or 0 (or true/false, yes/no, on/off)' })
  .transform((v) => ['1', 'true', 'yes', 'on'].includes(v));

const hostSchema = z
  .string()
  .refine((h) => isIP(h) !== 0 || /^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$/.test(h), 'must be an IP address or host name, such as 0.0.0.0, :: or localhost');

const envSchema = z.object({
  REDIS_URL: optional(redisUrlSchema),
  USEROPS_QUEUE: optional(queueNameSchema),
  USEROPS_DB: optional(z.string()),
  USEROPS_TIMEOUT_MS: optional(integer(1, 24 * 3_600_000)),
  USEROPS_MAX_OPS_PER_JOB: optional(integer(1, 100_000)),
  USEROPS_MAX_JOB_BYTES: optional(integer(1024, 512 * 1024 * 1024)),
  USEROPS_LEDGER_RETENTION_HOURS: optional(integer(1, 24 * 365)),
  USEROPS_HTTP_PORT: optional(integer(0, 65_535)),
  USEROPS_HTTP_HOST: optional(hostSchema),
  USEROPS_DASHBOARD: optional(flag),
  USEROPS_DASHBOARD_USER: optional(z.string()),
  USEROPS_DASHBOARD_PASSWORD: optional(z.string()),
  LOG_LEVEL: optional(z.enum(LOG_LEVELS, { error: `must be one of ${LOG_LEVELS.join(', ')}` })),
});

type Env = z.output<typeof envSchema>;

/**
 * Parses and checks every variable, for every command: a value that stops the consumer stops a
 * client command too, so a shared environment file is found wrong by whichever runs first.
 */
function readEnv(env: NodeJS.ProcessEnv): Env {
  const subset = Object.fromEntries(Object.keys(envSchema.shape).map((k) => [k, env[k]]));
  const e = parseWith(envSchema, subset, 'environment', 'config');
  checkCombinations(e);
  return e;
}

/** The checks that span variables, which a schema of one variable at a time cannot make. */
function checkCombinations(e: Env): void {
  const { USEROPS_DASHBOARD_USER: user, USEROPS_DASHBOARD_PASSWORD: password } = e;
  const fail = (path: string, message: string): never => {
    throw new ConfigError([{ path, message }], `Invalid environment: ${path}: ${message}`);
  };
  if (e.USEROPS_DASHBOARD && e.USEROPS_HTTP_PORT === 0) fail('USEROPS_DASHBOARD', 'needs the HTTP server, but USEROPS_HTTP_PORT is 0 (off)');
  // Half a pair of credentials is a mistake, not a wish for an open dashboard.
  if (user !== undefined && password === undefined) fail('USEROPS_DASHBOARD_PASSWORD', 'must be set when USEROPS_DASHBOARD_USER is');
  if (password !== undefined && user === undefined) fail('USEROPS_DASHBOARD_USER', 'must be set when USEROPS_DASHBOARD_PASSWORD is');
  // The consumer refuses it too (options.ts); said here, in the variables' names, for every command.
  const host = e.USEROPS_HTTP_HOST ?? DEFAULT_HTTP_HOST;
  if (e.USEROPS_DASHBOARD && user === undefined && !isLoopback(host)) {
    fail(
      'USEROPS_DASHBOARD_USER',
      `must be set, with USEROPS_DASHBOARD_PASSWORD, when USEROPS_DASHBOARD is 1 and USEROPS_HTTP_HOST is not a loopback address (got ${host}): ` +
        'without credentials, anyone who reaches the port could read job data and add or remove jobs',
    );
  }
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
  /** `undefined` when USEROPS_HTTP_PORT is 0. */
  http: HttpConfig | undefined;
}

/** The consumer's HTTP server, as `UserOpsConsumer`'s `http` option takes it. */
export interface HttpConfig {
  port: number;
  host: string;
  dashboard?: { auth?: { user: string; password: string } };
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
    http: httpConfig(e),
  };
}

function httpConfig(e: Env): HttpConfig | undefined {
  const port = e.USEROPS_HTTP_PORT ?? DEFAULT_HTTP_PORT;
  const { USEROPS_DASHBOARD_USER: user, USEROPS_DASHBOARD_PASSWORD: password } = e;
  if (port === 0) return undefined;
  const http: HttpConfig = { port, host: e.USEROPS_HTTP_HOST ?? DEFAULT_HTTP_HOST };
  if (e.USEROPS_DASHBOARD) http.dashboard = user !== undefined && password !== undefined ? { auth: { user, password } } : {};
  return http;
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

/** What the admin commands (`stats`, `failed`, `retry`, `backup`) run with. */
export interface AdminConfig {
  redisUrl: string | undefined;
  queue: string;
  /** The database as the consumer would open it; admin commands only ever read it. */
  dbPath: string;
  logLevel: LogLevel;
}

/** Reads the admin commands' configuration; throws `ConfigError` naming the bad variable. */
export function adminConfig(env: NodeJS.ProcessEnv = process.env): AdminConfig {
  const { redisUrl, queue, dbPath } = consumerConfig(env);
  return { redisUrl, queue, dbPath, logLevel: clientConfig(env).logLevel };
}

/** One variable of the effective configuration, as `userops config` shows it. */
export interface ConfigEntry {
  variable: string;
  /** The value in effect, with secrets redacted and defaults resolved (USEROPS_DB made absolute). */
  value: string;
  /** `env` when the variable is set (and not empty), else `default`. */
  source: 'env' | 'default';
  description: string;
}

// Any variable added later whose name says it holds a secret is hidden whole.
const SECRET_NAME = /PASS|SECRET|TOKEN|CREDENTIAL|PRIVATE|_KEY$/i;

/** The effective value of every variable, where it came from, secrets redacted; validates like the others. */
export function describeConfig(env: NodeJS.ProcessEnv = process.env): ConfigEntry[] {
  const given = readEnv(env);
  const consumer = consumerConfig(env);
  const client = clientConfig(env);
  const effective: Record<keyof Env, string> = {
    REDIS_URL: redactUrl(client.redisUrl ?? DEFAULT_REDIS_URL),
    USEROPS_QUEUE: client.queue,
    USEROPS_DB: consumer.dbPath,
    USEROPS_TIMEOUT_MS: String(client.timeoutMs),
    USEROPS_MAX_OPS_PER_JOB: String(consumer.maxOpsPerJob),
    USEROPS_MAX_JOB_BYTES: String(consumer.maxJobBytes),
    USEROPS_LEDGER_RETENTION_HOURS: String(consumer.ledgerRetentionMs / 3_600_000),
    USEROPS_HTTP_PORT: consumer.http ? String(consumer.http.port) : '0 (off)',
    USEROPS_HTTP_HOST: given.USEROPS_HTTP_HOST ?? consumer.http?.host ?? DEFAULT_HTTP_HOST,
    USEROPS_DASHBOARD: consumer.http?.dashboard ? 'on' : 'off',
    USEROPS_DASHBOARD_USER: given.USEROPS_DASHBOARD_USER ?? '(unset)',
    USEROPS_DASHBOARD_PASSWORD: given.USEROPS_DASHBOARD_PASSWORD ?? '(unset)',
    LOG_LEVEL: given.LOG_LEVEL ?? `${consumerConfig({}).logLevel} (consumer), ${clientConfig({}).logLevel} (commands)`,
  };
  return (Object.keys(effective) as (keyof Env)[]).map((variable) => ({
    variable,
    value: SECRET_NAME.test(variable) && given[variable] !== undefined ? '***' : effective[variable],
    source: given[variable] === undefined ? 'default' : 'env',
    description: ENV_HELP[variable] ?? '',
  }));
}
