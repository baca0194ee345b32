/**
 * Replies: how a job's outcome reaches the client that sent it.
 *
 * Each client reads its own reply stream, named in its jobs' `reply` field. Broadcasting outcomes on
 * BullMQ's events stream, one per queue, made every client read and parse every other client's
 * results, several wake-ups per job: client CPU grew with the square of the number of clients.
 * BullMQ's events and the job's return value are still written, for other readers and for a
 * client that missed its reply. docs/protocol.md is the prose version of this file.
 */
import { replyIdSchema } from './envelope.js';

/** The reply id a job's data names, if it names a valid one; for answering a job that is otherwise malformed. */
export function replyIdOf(data: unknown): string | undefined {
  const reply = (data as { reply?: unknown } | null)?.reply;
  return replyIdSchema.safeParse(reply).success ? (reply as string) : undefined;
}

/**
 * A reply stream holds at most about this many entries: a cap for a client that stopped reading.
 * A reading client trims its stream itself, to the last entry it read.
 */
export const REPLY_STREAM_MAXLEN = 1000;

/** A reply stream nobody has written to for this long is deleted: its client is gone. */
export const REPLY_STREAM_TTL_MS = 10 * 60_000;

/** One job's outcome on a reply stream: its return value as JSON (as BullMQ stores it), or why it failed. */
export type Reply = { jobId: string; returnvalue: string } | { jobId: string; failed: string };

/** The fields of a reply stream entry. */
export function replyFields(reply: Reply): string[] {
  return 'returnvalue' in reply ? ['job', reply.jobId, 'returnvalue', reply.returnvalue] : ['job', reply.jobId, 'failed', reply.failed];
}

/** Reads a reply stream entry's fields back; undefined for an entry that is not a reply. */
export function parseReplyFields(fields: string[]): Reply | undefined {
  const [jobKey, jobId, kind, value] = fields;
  if (jobKey !== 'job' || jobId === undefined || value === undefined) return undefined;
  if (kind === 'returnvalue') return { jobId, returnvalue: value };
  if (kind === 'failed') return { jobId, failed: value };
  return undefined;
}
