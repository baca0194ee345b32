/**
 * Logging: pino JSON, one logger per process, created by the entry point and injected downwards.
 */
import { type DestinationStream, type Logger, pino } from 'pino';
import { z } from 'zod';

/** pino's level names, plus `silent`. */
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/** A level name. */
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Accepts anything that behaves like a pino logger (has `child`), as an option value. */
export const loggerSchema = z.custom<Logger>(
  (v) => typeof v === 'object' && v !== null && typeof (v as { child?: unknown }).child === 'function',
  'must be a pino logger',
);

/**
 * Creates the process logger. Values are logged as given, so callers pass Redis URLs through
 * `redactUrl`; the redact paths below are a second line of defence for option objects.
 */
export function createLogger(level: LogLevel, destination?: DestinationStream): Logger {
  const options = {
    name: 'userops',
    level,
    // ioredis' reply errors carry the command they answer: AUTH's args are the password.
    redact: { paths: ['password', '*.password', 'redisOptions.password', 'err.command.args', 'err.cause.command.args'], censor: '***' },
  };
  return destination ? pino(options, destination) : pino(options);
}
