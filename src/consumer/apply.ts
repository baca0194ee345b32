/**
 * Applies one job to the store: the heart of the single writer.
 *
 * A job's ops and its ledger row commit in one SQLite transaction (one fsync), shared with the
 * other jobs of its group when the consumer commits several at once. Each op runs
 * in its own savepoint, so a domain failure (not found, exists, invalid) rolls back that op alone
 * and becomes its result, while its neighbours commit. Any other error rolls back the whole job
 * and propagates: the caller decides whether to retry.
 */
import { createHash } from 'node:crypto';

import { ErrorCode, type Op, type OpResult, parseEnvelope, parseOp, UserOpsError } from '../protocol/index.js';
import { isTransientSqliteError } from './sqlite-errors.js';
import type { Store } from './store.js';

/** What applying a job produced. */
export interface Applied {
  results: OpResult[];
  /** `results` as JSON, made once for the ledger and reused for the reply. */
  resultsJson: string;
  /** True when the job had been applied before and its recorded results were returned. */
  replayed: boolean;
  /** True when the ledger held another payload under this job id (Redis lost its data?). */
  reusedId?: boolean;
  /**
   * The errors behind the job's `INTERNAL` results, by op index, for the log: the caller gets
   * only the message, the operator needs the stack.
   */
  internalErrors?: { op: number; err: unknown }[];
}

function run(store: Store, op: Op, now: number): unknown {
  switch (op.op) {
    case 'user.create':
      return store.createUser(op.args, now);
    case 'user.get':
      return store.getUser(op.args);
    case 'user.update':
      return store.updateUser(op.args, now);
    case 'user.delete':
      return store.deleteUser(op.args);
    case 'user.list':
      return store.listUsers(op.args);
  }
}

/** A job whose envelope has been validated, ready to apply. */
export interface ValidJob {
  id: string;
  ops: unknown[];
  /** `ops` as JSON, when {@link parseEnvelope} has made it already. */
  opsJson?: string;
}

/**
 * Identifies what a job carried, so a re-used job id is not mistaken for a re-delivery.
 * @param opsJson - `ops` as JSON, if already made
 */
export function payloadHash(ops: unknown[], opsJson = JSON.stringify(ops)): string {
  return createHash('sha256').update(opsJson).digest('base64url');
}

/**
 * Applies several jobs in one transaction (group commit: one fsync for all of them), in order.
 * Each job is answered from the ledger if it was applied before, otherwise applied op by op and
 * recorded. Rethrows storage errors after rolling everything back.
 */
export function applyJobs(store: Store, jobs: readonly ValidJob[], now = Date.now()): Applied[] {
  return store.db
    .transaction((): Applied[] =>
      jobs.map((job) => {
        const hash = payloadHash(job.ops, job.opsJson);
        const recorded = store.ledgerGet(job.id, hash);
        if (recorded && 'results' in recorded) return { ...recorded, replayed: true };
        let internalErrors: Applied['internalErrors'];
        const internal = (op: number, err: unknown) => (internalErrors ??= []).push({ op, err });
        const results = job.ops.map((raw, op) => applyOne(store, raw, now, op, internal));
        const resultsJson = JSON.stringify(results);
        store.ledgerPut(job.id, hash, resultsJson, now);
        return { results, resultsJson, replayed: false, reusedId: recorded !== undefined, ...(internalErrors ? { internalErrors } : {}) };
      }),
    )
    .immediate();
}

/**
 * Applies one job's data: validates the envelope (throwing a `ValidationError`, with nothing
 * applied, if it is malformed), then {@link applyJobs}.
 */
export function applyJob(store: Store, jobId: string, data: unknown, maxOps: number, now = Date.now()): Applied {
  const { ops, opsJson } = parseEnvelope(data, maxOps);
  return applyJobs(store, [{ id: jobId, ops, opsJson }], now)[0] as Applied;
}

/** @param internal - told of an error that becomes op `index`'s `INTERNAL` result */
function applyOne(store: Store, raw: unknown, now: number, index: number, internal: (op: number, err: unknown) => void): OpResult {
  try {
    const op = parseOp(raw);
    const value = store.inSavepoint(() => run(store, op, now));
    return { ok: true, value };
  } catch (err) {
    if (err instanceof UserOpsError) return { ok: false, error: err.toWire() };
    if (isTransientSqliteError(err)) throw err;
    // Deterministic and not the caller's fault (a bug, a corrupt row): report it on this op rather
    // than retrying a job that would fail the same way forever.
    internal(index, err);
    const message = err instanceof Error ? err.message : String(err);
    return { ok: false, error: { code: ErrorCode.INTERNAL, message: `Internal error: ${message}` } };
  }
}
