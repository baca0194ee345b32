/**
 * How the consumer treats each SQLite error: the one table that says which failures are worth
 * retrying. Anything transient is retried in place (the job keeps its turn in the queue); anything
 * else is a bug or a broken database and is not retried blindly.
 */

/** Primary result codes (better-sqlite3 reports extended codes such as SQLITE_IOERR_WRITE). */
const TRANSIENT_PRIMARY = new Set([
  'SQLITE_BUSY', // another connection holds a lock: a backup, an operator's sqlite3 shell
  'SQLITE_LOCKED',
  'SQLITE_IOERR', // the disk hiccuped; a retry may succeed
  'SQLITE_FULL', // disk full: retry until someone frees space, never drop the job
  'SQLITE_READONLY', // file or mount made read-only: same
  'SQLITE_CANTOPEN',
  'SQLITE_PROTOCOL',
  'SQLITE_NOMEM',
  'SQLITE_INTERRUPT',
]);

/** The primary code of an SQLite error code: `SQLITE_IOERR_WRITE` -> `SQLITE_IOERR`. */
function primaryCode(code: string): string {
  const match = /^SQLITE_[A-Z]+/.exec(code);
  return match ? match[0] : code;
}

/** The SQLite error code carried by `err`, if it is an SQLite error. */
export function sqliteCode(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err) {
    const code = err.code;
    if (typeof code === 'string' && code.startsWith('SQLITE_')) return code;
  }
  return undefined;
}

/** True when `err` is an SQLite error that may succeed if the same transaction is tried again. */
export function isTransientSqliteError(err: unknown): boolean {
  const code = sqliteCode(err);
  return code !== undefined && TRANSIENT_PRIMARY.has(primaryCode(code));
}
