/**
 * The job envelope: what a job carries (`{ v: 1, ops, reply? }`) and what it returns (`{ results }`).
 * docs/protocol.md is the prose version of this file; change both together.
 */
import { z } from 'zod';

import { ValidationError, type WireError } from './errors.js';
import { listRows, MAX_LIST_ROWS_PER_JOB } from './ops.js';
import { parseWith } from './validate.js';

/** Protocol version written by this producer and accepted by this consumer. */
export const PROTOCOL_VERSION = 1;

/** Default queue name; BullMQ's default key prefix (`bull`) is used with it. */
export const DEFAULT_QUEUE = 'userops';

/** Name given to every job this producer adds. The consumer does not look at job names. */
export const JOB_NAME = 'batch';

/** Most ops one job may carry unless the consumer is configured otherwise. */
export const DEFAULT_MAX_OPS_PER_JOB = 1000;

/** Most bytes of JSON one job's data may take unless the consumer is configured otherwise. */
export const DEFAULT_MAX_JOB_BYTES = 1024 * 1024;

/** A Redis key segment: characters that need no escaping. */
const keySegmentSchema = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'must be 1-64 characters of letters, digits, _ or -');

/** Queue names become Redis key segments. */
export const queueNameSchema = keySegmentSchema;

/** A client's reply id names its reply stream's key (see reply.ts). */
export const replyIdSchema = keySegmentSchema;

/** An op as it travels: the op name and its arguments. */
export interface WireOp {
  op: string;
  args: unknown;
}

/** The data of a userops job. */
export interface JobPayload {
  v: typeof PROTOCOL_VERSION;
  ops: WireOp[];
  /** The sending client's reply id: the consumer writes the outcome to that client's reply stream. */
  reply?: string;
}

/** The outcome of one op. */
export type OpResult = { ok: true; value: unknown } | { ok: false; error: WireError };

/** The return value of a userops job: one result per op, in the order of the ops. */
export interface JobResults {
  results: OpResult[];
}

/** Built once per limit: building a zod schema costs more than parsing with it. */
const envelopeSchemas = new Map<number, ReturnType<typeof buildEnvelopeSchema>>();

function envelopeSchema(maxOps: number) {
  let schema = envelopeSchemas.get(maxOps);
  if (!schema) {
    schema = buildEnvelopeSchema(maxOps);
    // A process uses one or two limits; the bound only guards against a caller that varies it.
    if (envelopeSchemas.size >= 16) envelopeSchemas.clear();
    envelopeSchemas.set(maxOps, schema);
  }
  return schema;
}

function buildEnvelopeSchema(maxOps: number) {
  return z.strictObject(
    {
    v: z.literal(PROTOCOL_VERSION, { error: `must be ${PROTOCOL_VERSION} (the protocol version)` }),
    ops: z
      .array(z.unknown(), { error: 'must be an array of { op, args }' })
      .min(1, 'must hold at least one op')
      .max(maxOps, `must hold at most ${maxOps} ops`),
    reply: replyIdSchema.optional(),
    },
    { error: 'job data must be an object like { v: 1, ops: [...] }' },
  );
}

/**
 * Validates a job's data as a batch envelope, within the op-count and byte limits. The ops
 * themselves are checked one by one later, so that one bad op becomes that op's error instead of
 * failing its neighbours. Throws {@link ValidationError} saying what is wrong with the envelope.
 */
export function parseEnvelope(
  data: unknown,
  maxOps = DEFAULT_MAX_OPS_PER_JOB,
  maxBytes = DEFAULT_MAX_JOB_BYTES,
): { ops: unknown[]; reply?: string | undefined; opsJson: string } {
  const envelope = parseWith(envelopeSchema(maxOps), data, 'job');
  // A job of hundreds of megabytes is refused before anything copies it: stringifying a group of
  // them outlasted the jobs' locks, so they stalled, came back, and filled the heap.
  const atLeast = stringBytesPast(envelope.ops, maxBytes);
  if (atLeast !== undefined) {
    const message = `data is at least ${atLeast} bytes of JSON, more than the limit of ${maxBytes}`;
    throw new ValidationError([{ path: '', message }], `Invalid job: ${message}`);
  }
  let rows = 0;
  for (const op of envelope.ops) rows += listRows(op);
  if (rows > MAX_LIST_ROWS_PER_JOB) {
    const message = `ops: its user.list ops ask for up to ${rows} rows, more than the limit of ${MAX_LIST_ROWS_PER_JOB} per job; split them over several jobs`;
    throw new ValidationError([{ path: 'ops', message }], `Invalid job: ${message}`);
  }
  // Measured after the shape check, which already refused anything too long in ops. The ops'
  // JSON is made once, here, and reused for the ledger's payload hash: it is nearly all of the
  // data, and stringifying a job of a thousand ops costs more than applying a few of them. The
  // rest of the data (`v` and `reply`) adds the same bytes whatever the order of its keys.
  let opsJson: string;
  try {
    opsJson = JSON.stringify(envelope.ops);
  } catch (err) {
    if (!(err instanceof RangeError)) throw err;
    const message = 'ops: nested too deeply to serialize (thousands of levels of arrays or objects)';
    throw new ValidationError([{ path: 'ops', message }], `Invalid job: ${message}`);
  }
  const bytes = Buffer.byteLength(opsJson) + Buffer.byteLength(JSON.stringify({ ...envelope, ops: [] })) - '[]'.length;
  if (bytes > maxBytes) {
    const message = `data is ${bytes} bytes of JSON, more than the limit of ${maxBytes}`;
    throw new ValidationError([{ path: '', message }], `Invalid job: ${message}`);
  }
  return { ...envelope, opsJson };
}

/**
 * The length of the strings and keys in `value` once it passes `max`, else `undefined`. A lower
 * bound of its JSON's size in bytes (a UTF-16 unit is at least one byte of UTF-8), found in time
 * proportional to `max`, not to the value. Iterative: job data may nest arbitrarily deep.
 */
export function stringBytesPast(value: unknown, max: number): number | undefined {
  let total = 0;
  const stack: unknown[] = [value];
  while (stack.length > 0) {
    const v = stack.pop();
    if (typeof v === 'string') total += v.length;
    else if (Array.isArray(v)) for (const item of v) stack.push(item);
    else if (typeof v === 'object' && v !== null) {
      // for-in allocates nothing per key; parsed JSON has no inherited enumerable keys.
      for (const key in v) {
        total += key.length;
        stack.push((v as Record<string, unknown>)[key]);
      }
    }
    if (total > max) return total;
  }
  return undefined;
}

const wireErrorSchema = z.object({
  code: z.string(),
  message: z.string(),
  details: z.record(z.string(), z.unknown()).optional(),
});

const resultsSchema = z.object({
  results: z.array(
    z.union([
      z.object({ ok: z.literal(true), value: z.unknown() }),
      z.object({ ok: z.literal(false), error: wireErrorSchema }),
    ]),
  ),
});

/**
 * Validates a job's return value on the producer side. Returns `undefined` when it is not a
 * well-formed result list of `count` entries (a consumer of another version, or a foreign worker).
 */
export function parseResults(value: unknown, count: number): OpResult[] | undefined {
  const result = resultsSchema.safeParse(value);
  if (!result.success || result.data.results.length !== count) return undefined;
  return result.data.results;
}
