/**
 * Applies one job to the store: the heart of the single writer.
 *
 * All of a job's ops and its ledger row commit in one SQLite transaction (one fsync). Each op runs
 * in its own savepoint, so a domain failure (not found, exists, invalid) rolls back that op alone
 * and becomes its result, while its neighbours commit. Any other error rolls back the whole job
 * and propagates: the caller decides whether to retry.
 */
import { ErrorCode, type Op, type OpResult, parseEnvelope, parseOp, UserOpsError } from '../protocol/index.js';
import { isTransientSqliteError } from './sqlite-errors.js';
import type { Store } from './store.js';

/** What applying a job produced. */
export interface Applied {
  results: OpResult[];
  /** True when the job had been applied before and its recorded results were returned. */
  replayed: boolean;
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

/**
 * Applies `data` (a job's payload) as job `jobId`, or returns the results recorded when that job
 * was applied before. Throws a `ValidationError` if the envelope is malformed (nothing is applied)
 * and rethrows storage errors after rolling back.
 */
export function applyJob(store: Store, jobId: string, data: unknown, maxOps: number, now = Date.now()): Applied {
  const { ops } = parseEnvelope(data, maxOps);
  return store.db.transaction((): Applied => {
    const recorded = store.ledgerGet(jobId);
    if (recorded) return { results: recorded, replayed: true };
    const results = ops.map((raw) => applyOne(store, raw, now));
    store.ledgerPut(jobId, results, now);
    return { results, replayed: false };
  }).immediate();
}

function applyOne(store: Store, raw: unknown, now: number): OpResult {
  try {
    const op = parseOp(raw);
    // A nested better-sqlite3 transaction is a SAVEPOINT: rolled back alone if the op throws.
    const value = store.db.transaction(() => run(store, op, now))();
    return { ok: true, value };
  } catch (err) {
    if (err instanceof UserOpsError) return { ok: false, error: err.toWire() };
    if (isTransientSqliteError(err)) throw err;
    // Deterministic and not the caller's fault (a bug, a corrupt row): report it on this op rather
    // than retrying a job that would fail the same way forever.
    const message = err instanceof Error ? err.message : String(err);
    return { ok: false, error: { code: ErrorCode.INTERNAL, message: `Internal error: ${message}` } };
  }
}
