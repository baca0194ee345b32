/**
 * The error catalogue: every error a caller can see, with its stable string `code`.
 *
 * Both sides of the queue import this module. The consumer turns a domain error into a wire error
 * (`{ code, message, details }`) inside a job's results; the producer turns it back into the same
 * class with {@link fromWireError}, so `instanceof UserNotFoundError` works across processes.
 */

/** Stable error codes. They are part of the wire protocol (docs/protocol.md): never rename one. */
export const ErrorCode = {
  USER_NOT_FOUND: 'USER_NOT_FOUND',
  USER_EXISTS: 'USER_EXISTS',
  INVALID_INPUT: 'INVALID_INPUT',
  INVALID_CONFIG: 'INVALID_CONFIG',
  TIMEOUT: 'TIMEOUT',
  REDIS_UNAVAILABLE: 'REDIS_UNAVAILABLE',
  JOB_FAILED: 'JOB_FAILED',
  JOB_NOT_FOUND: 'JOB_NOT_FOUND',
  JOB_NOT_FAILED: 'JOB_NOT_FAILED',
  CLIENT_CLOSED: 'CLIENT_CLOSED',
  OVERLOADED: 'OVERLOADED',
  INTERNAL: 'INTERNAL',
} as const;

/** One of the {@link ErrorCode} values. */
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** An error as it travels inside a job's return value. */
export interface WireError {
  code: string;
  message: string;
  details?: Record<string, unknown>;
}

/** Base class of every error userops raises; branch on `code` or on the subclass. */
export class UserOpsError extends Error {
  /** Stable machine-readable code, one of {@link ErrorCode} (or a newer consumer's code). */
  readonly code: string;
  /** Structured context (the nickname, the invalid fields, the job id); safe to log. */
  readonly details: Record<string, unknown>;

  constructor(code: string, message: string, details: Record<string, unknown> = {}, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.details = details;
  }

  /** The wire form of this error, as the consumer puts it into a job's results. */
  toWire(): WireError {
    return Object.keys(this.details).length > 0
      ? { code: this.code, message: this.message, details: this.details }
      : { code: this.code, message: this.message };
  }
}

/** No user has the given nickname. */
export class UserNotFoundError extends UserOpsError {
  /** @param nickname - the nickname that was looked up */
  constructor(readonly nickname: string) {
    super(ErrorCode.USER_NOT_FOUND, `User ${nickname} doesn't exist`, { nickname });
  }
}

/** A user with the given nickname already exists. */
export class UserExistsError extends UserOpsError {
  /** @param nickname - the nickname that is taken */
  constructor(readonly nickname: string) {
    super(ErrorCode.USER_EXISTS, `User ${nickname} already exists`, { nickname });
  }
}

/** One problem found by validation: where (a dotted path such as `email`) and why. */
export interface ValidationIssue {
  path: string;
  message: string;
}

/** Formats issues as `field: why; field: why`. */
export function formatIssues(issues: ValidationIssue[]): string {
  return issues.map((i) => (i.path ? `${i.path}: ${i.message}` : i.message)).join('; ');
}

/** Input failed validation; `issues` names each field and what was wrong with it. */
export class ValidationError extends UserOpsError {
  /**
   * @param issues - the problems found, at least one
   * @param message - defaults to `Invalid input: <issues>`
   */
  constructor(
    readonly issues: ValidationIssue[],
    message = `Invalid input: ${formatIssues(issues)}`,
  ) {
    super(ErrorCode.INVALID_INPUT, message, { issues });
  }
}

/** An option, environment variable or flag is invalid; the message names it and the value got. */
export class ConfigError extends UserOpsError {
  /**
   * @param issues - the problems found
   * @param message - the whole message, naming the setting
   */
  constructor(
    readonly issues: ValidationIssue[],
    message = `Invalid configuration: ${formatIssues(issues)}`,
  ) {
    super(ErrorCode.INVALID_CONFIG, message, { issues });
  }
}

/** What is known about an operation whose call timed out. */
export type AppliedState = false | 'unknown';

/** The call did not settle within its timeout. */
export class OpTimeoutError extends UserOpsError {
  /**
   * @param timeoutMs - the timeout that expired
   * @param jobId - the job that carried the call, or `undefined` if it was never sent
   * @param applied - `false` when the op is known not to have run, otherwise `'unknown'`
   */
  constructor(
    readonly timeoutMs: number,
    readonly jobId: string | undefined,
    readonly applied: AppliedState = 'unknown',
  ) {
    const where = jobId === undefined ? 'never sent' : `job ${jobId}`;
    super(
      ErrorCode.TIMEOUT,
      `Operation timed out after ${timeoutMs} ms (${where}; applied: ${String(applied)}). ` +
        'Is the userops consumer running?',
      jobId === undefined ? { timeoutMs, applied } : { timeoutMs, jobId, applied },
    );
  }
}

/** Redis could not be reached, or refused the call for want of memory; the call was not enqueued. */
export class RedisUnavailableError extends UserOpsError {
  /**
   * Always `false`: the op was never enqueued and will never run. Here so that callers deciding
   * whether a retry is safe can check `err.applied === false` on every error that carries it.
   */
  readonly applied = false as const;

  /**
   * @param target - the Redis URL with credentials redacted
   * @param cause - the underlying connection error, if any
   * @param outOfMemory - Redis answered, refusing the call for want of memory (`cause` is its
   *   "OOM command not allowed ..." reply): it runs, and REDIS_URL is right, so say what is wrong
   */
  constructor(target: string, cause?: unknown, outOfMemory = false) {
    const why = cause instanceof Error ? `: ${cause.message.replace(/\.+$/, '')}` : '';
    super(
      ErrorCode.REDIS_UNAVAILABLE,
      outOfMemory
        ? `Redis at ${target} is out of memory (over its maxmemory) and refused the call; nothing was enqueued. Free memory in Redis or raise its maxmemory.`
        : `Redis at ${target} is unavailable${why}. Check REDIS_URL and that Redis is running.`,
      { target, applied: false },
      cause === undefined ? undefined : { cause },
    );
  }
}

/** The consumer rejected the whole job (a malformed batch, or attempts exhausted). */
export class JobFailedError extends UserOpsError {
  /**
   * @param jobId - the failed job
   * @param reason - BullMQ's failedReason
   */
  constructor(
    readonly jobId: string,
    reason: string,
  ) {
    super(ErrorCode.JOB_FAILED, `Job ${jobId} failed: ${reason}`, { jobId, reason });
  }
}

/** No job has the given id in the queue (an admin command named it). */
export class JobNotFoundError extends UserOpsError {
  /** @param jobId - the id that was looked up */
  constructor(readonly jobId: string) {
    super(ErrorCode.JOB_NOT_FOUND, `Job ${jobId} doesn't exist (finished jobs are kept for a while, then removed)`, { jobId });
  }
}

/** An admin command expected a failed job, and the job is in another state. */
export class JobNotFailedError extends UserOpsError {
  /**
   * @param jobId - the job
   * @param state - its BullMQ state (`waiting`, `active`, `completed`, ...)
   */
  constructor(
    readonly jobId: string,
    readonly state: string,
  ) {
    super(ErrorCode.JOB_NOT_FAILED, `Job ${jobId} is ${state}, not failed; only failed jobs can be retried`, { jobId, state });
  }
}

/** The client already has its maximum of calls pending; nothing was sent. */
export class OverloadedError extends UserOpsError {
  /** @param limit - the client's `maxPendingCalls` */
  constructor(readonly limit: number) {
    super(
      ErrorCode.OVERLOADED,
      `Too many calls pending (${limit}); nothing was sent. Await some calls before making more, or raise maxPendingCalls.`,
      { limit },
    );
  }
}

/** The client was closed before the call settled, or a call was made after `close()`. */
export class ClientClosedError extends UserOpsError {
  /**
   * @param jobId - the job that carried the call, or `undefined` if it was never sent
   * @param applied - `false` when the op will never run (never sent, or withdrawn from the queue
   *   before a consumer took it), otherwise `'unknown'`: a consumer may apply it after the close
   */
  constructor(
    readonly jobId: string | undefined = undefined,
    readonly applied: AppliedState = false,
  ) {
    const where = jobId === undefined ? 'never sent' : `job ${jobId}`;
    super(
      ErrorCode.CLIENT_CLOSED,
      `The userops client is closed (${where}; applied: ${String(applied)})`,
      jobId === undefined ? { applied } : { jobId, applied },
    );
  }
}

function stringDetail(details: Record<string, unknown> | undefined, key: string): string | undefined {
  const value = details?.[key];
  return typeof value === 'string' ? value : undefined;
}

/**
 * Rebuilds a typed error from its wire form. Unknown codes (a newer consumer) stay a plain
 * {@link UserOpsError} with the code and message the consumer sent.
 */
export function fromWireError(wire: WireError): UserOpsError {
  const nickname = stringDetail(wire.details, 'nickname');
  switch (wire.code) {
    case ErrorCode.USER_NOT_FOUND:
      if (nickname !== undefined) return new UserNotFoundError(nickname);
      break;
    case ErrorCode.USER_EXISTS:
      if (nickname !== undefined) return new UserExistsError(nickname);
      break;
    case ErrorCode.INVALID_INPUT: {
      const issues = wire.details?.issues;
      return new ValidationError(Array.isArray(issues) ? (issues as ValidationIssue[]) : [], wire.message);
    }
  }
  return new UserOpsError(wire.code, wire.message, wire.details ?? {});
}

/** Turns anything thrown into an `Error`, so catch blocks can log `{ err }` and read `.message`. */
export function coerceError(thrown: unknown): Error {
  if (thrown instanceof Error) return thrown;
  return new Error(typeof thrown === 'string' ? thrown : JSON.stringify(thrown));
}
