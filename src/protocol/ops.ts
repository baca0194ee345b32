/**
 * The operations: their names, their argument schemas and what each returns.
 *
 * The producer validates a call's arguments with these schemas before it enqueues anything, and the
 * consumer validates every op again with the same schemas, because any BullMQ client can add jobs.
 */
import { z } from 'zod';

import { formatIssues, ValidationError } from './errors.js';
import { describeValue, parseWith } from './validate.js';

/** A user as stored and returned. Timestamps are ISO-8601 strings in UTC. */
export interface User {
  id: number;
  nickname: string;
  fullName: string;
  email: string;
  createdAt: string;
  updatedAt: string;
}

/** Nicknames are identifiers people type: short, no spaces, no control characters. */
export const nicknameSchema = z
  .string({ error: 'must be a string' })
  // An empty nickname also fails the pattern; saying so twice reads like two mistakes.
  .min(1, { error: 'must not be empty', abort: true })
  .max(64, 'must be at most 64 characters')
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/, 'must start with a letter or digit and contain only letters, digits, _ . -');

const fullNameSchema = z
  .string({ error: 'must be a string' })
  .trim()
  .min(1, 'must not be empty')
  .max(200, 'must be at most 200 characters')
  // Control characters in a name are always a mistake or an attack on whatever renders it.
  .refine((s) => !/\p{Cc}/u.test(s), 'must not contain control characters')
  // Half of a UTF-16 pair cannot be stored as UTF-8: SQLite would keep U+FFFD in its place.
  .refine((s) => !/\p{Cs}/u.test(s), 'must be valid Unicode (it holds half of a surrogate pair)');

const emailSchema = z
  .string({ error: 'must be a string' })
  .trim()
  .max(254, 'must be at most 254 characters')
  .pipe(z.email({ error: 'must be an email address like name@example.com' }));

/** Most rows one `user.list` returns; bounds the size of a job's return value. */
export const MAX_LIST_LIMIT = 1000;
/** Rows `user.list` returns when no limit is given. */
export const DEFAULT_LIST_LIMIT = 100;

/**
 * Most rows the `user.list` ops of one job may ask for, together. Results travel whole, in the
 * job's return value (kept in Redis, carried by the reply and the events stream) and in
 * the ledger: without this bound a job of 1,000 list ops could ask for a million rows at once.
 */
export const MAX_LIST_ROWS_PER_JOB = 10_000;

/**
 * The rows an op may return, as far as its raw form tells: a list op's limit (or the default),
 * else 0. For budgeting a job before its ops are validated one by one.
 */
export function listRows(raw: unknown): number {
  if ((raw as { op?: unknown } | null)?.op !== 'user.list') return 0;
  const limit = ((raw as { args?: unknown }).args as { limit?: unknown } | null | undefined)?.limit;
  if (limit === undefined) return DEFAULT_LIST_LIMIT;
  // An invalid limit fails that op's own validation; counted as the most it could be meant as.
  return typeof limit === 'number' && Number.isInteger(limit) && limit >= 1 && limit <= MAX_LIST_LIMIT ? limit : MAX_LIST_LIMIT;
}

/** Argument schemas, one per op name. Strict: an unknown key is an error, not silently dropped. */
export const opArgsSchemas = {
  'user.create': z.strictObject({ nickname: nicknameSchema, fullName: fullNameSchema, email: emailSchema }),
  'user.get': z.strictObject({ nickname: nicknameSchema }),
  'user.update': z
    .strictObject({ nickname: nicknameSchema, fullName: fullNameSchema.optional(), email: emailSchema.optional() })
    .refine((a) => a.fullName !== undefined || a.email !== undefined, {
      message: 'give at least one of fullName, email',
    }),
  'user.delete': z.strictObject({ nickname: nicknameSchema }),
  'user.list': z.strictObject({
    limit: z
      .number({ error: 'must be a number' })
      .int('must be a whole number')
      .min(1, 'must be at least 1')
      .max(MAX_LIST_LIMIT, `must be at most ${MAX_LIST_LIMIT}`)
      .optional(),
    after: nicknameSchema.optional(),
  }),
} as const;

/** The name of an operation, e.g. `user.create`. */
export type OpName = keyof typeof opArgsSchemas;

/** All op names, in the order they are documented. */
export const OP_NAMES = Object.keys(opArgsSchemas) as OpName[];

/** The parsed (trimmed, defaulted) arguments of each op. */
export type OpArgs = { [K in OpName]: z.output<(typeof opArgsSchemas)[K]> };

/** What each op resolves with. */
export interface OpValues {
  'user.create': User;
  'user.get': User;
  'user.update': User;
  'user.delete': User;
  'user.list': User[];
}

/** One validated op, ready to apply. */
export type Op = { [K in OpName]: { op: K; args: OpArgs[K] } }[OpName];

function isOpName(name: unknown): name is OpName {
  return typeof name === 'string' && Object.hasOwn(opArgsSchemas, name);
}

/**
 * Validates one op element of a batch (`{ op, args }`) as it arrives from the wire.
 * Throws {@link ValidationError} naming the field and the reason.
 */
export function parseOp(raw: unknown): Op {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new ValidationError([{ path: '', message: 'an op must be an object like { op, args }' }]);
  }
  const keys = Object.keys(raw);
  const extra = keys.filter((k) => k !== 'op' && k !== 'args');
  if (extra.length > 0) {
    const shown = extra.slice(0, 5).join(', ').slice(0, 200) + (extra.length > 5 ? ` and ${extra.length - 5} more` : '');
    throw new ValidationError([{ path: '', message: `unknown key(s) ${shown} (an op is { op, args })` }]);
  }
  const { op, args } = raw as { op?: unknown; args?: unknown };
  if (!isOpName(op)) {
    const got = typeof op === 'string' ? `'${op.slice(0, 64)}'` : typeof op;
    throw new ValidationError([{ path: 'op', message: `unknown op ${got}; expected one of ${OP_NAMES.join(', ')}` }]);
  }
  return { op, args: parseArgs(op, args) } as Op;
}

/** Validates the arguments of op `op`. Throws {@link ValidationError} naming each bad field. */
export function parseArgs<K extends OpName>(op: K, args: unknown): OpArgs[K] {
  const schema = opArgsSchemas[op];
  // Missing args are empty ones (`user.list` needs none).
  if (args == null) {
    const empty = schema.safeParse({});
    if (empty.success) return empty.data as OpArgs[K];
  }
  // Where an object is needed and missing or of another kind, one issue saying so beats one per
  // required field ("nickname: must be a string (got nothing); fullName: ...") for a caller who
  // passed null.
  if (args == null || typeof args !== 'object' || Array.isArray(args)) {
    const issues = [{ path: '', message: `expected an object like { ${Object.keys(schema.shape).join(', ')} } (got ${describeValue(args)})` }];
    throw new ValidationError(issues, `Invalid ${op} arguments: ${formatIssues(issues)}`);
  }
  return parseWith(schema, args, `${op} arguments`) as OpArgs[K];
}
