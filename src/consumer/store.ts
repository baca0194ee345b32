/**
 * The SQLite store: the only module that holds SQL. Synchronous by design, like better-sqlite3:
 * a transaction is a plain function with no `await` inside, so nothing can interleave with it.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';

import type BetterSqlite3 from 'better-sqlite3';

import { DEFAULT_LIST_LIMIT, type OpArgs, type OpResult, type User, UserExistsError, UserNotFoundError } from '../protocol/index.js';
import { formatIso, isoTime } from './iso-time.js';
import { assertSupported, migrate } from './migrations.js';
import Database from './sqlite-driver.js';
import { sqliteCode } from './sqlite-errors.js';

/** A row of {@link USER_COLUMNS}, in that order. */
type UserRow = [id: number, nickname: string, fullName: string, email: string, createdAt: number, updatedAt: number];

function toUser([id, nickname, fullName, email, createdAt, updatedAt]: UserRow): User {
  const updated = isoTime(updatedAt);
  return { id, nickname, fullName, email, createdAt: createdAt === updatedAt ? updated : formatIso(createdAt), updatedAt: updated };
}

const USER_COLUMNS = 'id, nickname, full_name, email, created_at, updated_at';

/** Opens (creating if needed) the userops database and applies operations to it. */
export class Store {
  /** The underlying connection; exposed for transactions and for tests. */
  readonly db: BetterSqlite3.Database;
  private readonly stmt;

  /**
   * @param path - the database file; its parent folder is created if missing
   * @param busyTimeoutMs - how long to wait for a lock held by another connection (a backup, an
   *   operator's sqlite3 shell) before SQLITE_BUSY, which the consumer then retries
   */
  constructor(
    readonly path: string,
    private readonly busyTimeoutMs = 5000,
  ) {
    mkdirSync(dirname(path), { recursive: true });
    this.db = new Database(path);
    try {
      // WAL lets readers (backups, an operator's sqlite3 shell) work beside the writer; FULL makes
      // every commit fsync the WAL, so a resolved promise survives a power cut.
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = FULL');
      this.db.pragma('foreign_keys = ON');
      this.db.pragma(`busy_timeout = ${Math.trunc(busyTimeoutMs)}`);
      // Checkpoint every ~40 MB of WAL instead of ~4 MB: random updates on a large table dirty a
      // page each, and every checkpoint copies those pages into the database file and fsyncs it.
      // Fewer, larger checkpoints cost less per op (docs/benchmarks.md); a larger interval would
      // let the WAL outgrow a small table and slow recovery after a crash. In the daemon, a
      // background thread does most of the copying between commits (checkpointer.ts); this is
      // its backstop, and what lets the WAL start again from its beginning.
      this.db.pragma('wal_autocheckpoint = 10000');
      migrate(this.db);
    } catch (err) {
      this.db.close();
      throw err;
    }
    // Prepared once and reused: preparing costs more than running for statements this small.
    // Rows of users come back as arrays (raw): better-sqlite3 builds a row object through V8's
    // slow property path, one column at a time, and toUser builds the User anyway. Measured on
    // the apply path: ~6% fewer instructions per op.
    this.stmt = {
      insert: this.db.prepare<[string, string, string, number, number], UserRow>(
        `INSERT INTO users (nickname, full_name, email, created_at, updated_at) VALUES (?, ?, ?, ?, ?)
         RETURNING ${USER_COLUMNS}`,
      ).raw(),
      get: this.db.prepare<[string], UserRow>(`SELECT ${USER_COLUMNS} FROM users WHERE nickname = ?`).raw(),
      update: this.db.prepare<[string | null, string | null, number, string], UserRow>(
        `UPDATE users SET full_name = coalesce(?, full_name), email = coalesce(?, email), updated_at = ?
         WHERE nickname = ? RETURNING ${USER_COLUMNS}`,
      ).raw(),
      delete: this.db.prepare<[string], UserRow>(`DELETE FROM users WHERE nickname = ? RETURNING ${USER_COLUMNS}`).raw(),
      list: this.db.prepare<[string, number], UserRow>(
        `SELECT ${USER_COLUMNS} FROM users WHERE nickname > ? ORDER BY nickname LIMIT ?`,
      ).raw(),
      count: this.db.prepare<[], { n: number }>('SELECT count(*) AS n FROM users'),
      ledgerGet: this.db.prepare<[string], { results: string; payload_hash: string }>(
        'SELECT results, payload_hash FROM ledger WHERE job_id = ?',
      ),
      // A reused id with another payload is another job, and its row supersedes the old. An
      // upsert, not INSERT OR REPLACE: REPLACE's implicit delete fires no delete trigger, and the
      // ledger's count (migration 4) would drift up by one each time.
      ledgerPut: this.db.prepare<[string, string, string, number]>(
        `INSERT INTO ledger (job_id, payload_hash, results, applied_at) VALUES (?, ?, ?, ?)
         ON CONFLICT (job_id) DO UPDATE SET payload_hash = excluded.payload_hash, results = excluded.results, applied_at = excluded.applied_at`,
      ),
      ledgerCount: this.db.prepare<[], { n: number }>('SELECT n FROM ledger_count'),
      // Oldest first through the applied_at index, a bounded number per call (ledger-pruner.ts).
      ledgerPrune: this.db.prepare<[number, number]>(
        'DELETE FROM ledger WHERE rowid IN (SELECT rowid FROM ledger WHERE applied_at < ? ORDER BY applied_at LIMIT ?)',
      ),
      savepoint: this.db.prepare('SAVEPOINT op'),
      release: this.db.prepare('RELEASE op'),
      rollbackTo: this.db.prepare('ROLLBACK TO op'),
      beginImmediate: this.db.prepare('BEGIN IMMEDIATE'),
      touch: this.db.prepare('UPDATE ledger_count SET n = n'),
      rollback: this.db.prepare('ROLLBACK'),
    };
  }

  /**
   * Runs `fn` in a savepoint of the current transaction: if it throws, its changes alone are
   * rolled back. Prepared SAVEPOINT statements cost about a seventh of a nested
   * `db.transaction()`, which matters at one per op.
   */
  inSavepoint<T>(fn: () => T): T {
    this.stmt.savepoint.run();
    try {
      const value = fn();
      this.stmt.release.run();
      return value;
    } catch (err) {
      // Some errors (SQLITE_FULL, SQLITE_IOERR...) end the whole transaction, savepoint and all.
      if (this.db.inTransaction) {
        this.stmt.rollbackTo.run();
        this.stmt.release.run();
      }
      throw err;
    }
  }

  /** Creates a user; throws {@link UserExistsError} if the nickname is taken. */
  createUser(args: OpArgs['user.create'], now: number): User {
    try {
      const row = this.stmt.insert.get(args.nickname, args.fullName, args.email, now, now);
      return toUser(row as UserRow);
    } catch (err) {
      if (sqliteCode(err) === 'SQLITE_CONSTRAINT_UNIQUE') throw new UserExistsError(args.nickname);
      throw err;
    }
  }

  /** Returns a user; throws {@link UserNotFoundError}. */
  getUser(args: OpArgs['user.get']): User {
    const row = this.stmt.get.get(args.nickname);
    if (!row) throw new UserNotFoundError(args.nickname);
    return toUser(row);
  }

  /** Changes the given fields of a user; throws {@link UserNotFoundError}. */
  updateUser(args: OpArgs['user.update'], now: number): User {
    const row = this.stmt.update.get(args.fullName ?? null, args.email ?? null, now, args.nickname);
    if (!row) throw new UserNotFoundError(args.nickname);
    return toUser(row);
  }

  /** Deletes a user and returns it as it was; throws {@link UserNotFoundError}. */
  deleteUser(args: OpArgs['user.delete']): User {
    const row = this.stmt.delete.get(args.nickname);
    if (!row) throw new UserNotFoundError(args.nickname);
    return toUser(row);
  }

  /** Users in nickname order, starting after `after`: keyset pagination, flat cost per page. */
  listUsers(args: OpArgs['user.list']): User[] {
    return this.stmt.list.all(args.after ?? '', args.limit ?? DEFAULT_LIST_LIMIT).map(toUser);
  }

  /** This database's identity, created with it and kept by backups and copies of the file. */
  get dbId(): string {
    return databaseId(this.db) as string; // migration 3 made it
  }

  /** Number of users. */
  countUsers(): number {
    return (this.stmt.count.get() as { n: number }).n;
  }

  /**
   * What the ledger knows of `jobId`: nothing, the same job (its recorded results), or another
   * job that had the same id (`{ reused: true }`).
   */
  ledgerGet(jobId: string, payloadHash: string): { results: OpResult[]; resultsJson: string } | { reused: true } | undefined {
    const row = this.stmt.ledgerGet.get(jobId);
    if (!row) return undefined;
    // Rows from schema 1 have no hash: trust the id, as schema 1 did.
    if (row.payload_hash !== '' && row.payload_hash !== payloadHash) return { reused: true };
    return { results: JSON.parse(row.results) as OpResult[], resultsJson: row.results };
  }

  /** Records that `jobId` was applied with these results (`OpResult[]` as JSON). Call inside the job's transaction. */
  ledgerPut(jobId: string, payloadHash: string, resultsJson: string, now: number): void {
    this.stmt.ledgerPut.run(jobId, payloadHash, resultsJson, now);
  }

  /** When the newest ledger row was applied (epoch ms), or `undefined` while the ledger is empty. */
  lastLedgerAt(): number | undefined {
    return (this.db.prepare('SELECT max(applied_at) AS t FROM ledger').get() as { t: number | null }).t ?? undefined;
  }

  /** Deletes up to `limit` of the oldest ledger rows applied before `before` (epoch ms); returns how many. */
  pruneLedger(before: number, limit: number): number {
    return this.stmt.ledgerPrune.run(before, limit).changes;
  }

  /** Number of ledger rows, as its triggers keep count: no scan, however large the ledger. */
  ledgerSize(): number {
    return (this.stmt.ledgerCount.get() as { n: number }).n;
  }

  /**
   * Checks that this connection can take the write lock and write, keeping nothing: `ok`, or `busy` while
   * another connection (a backup, an operator's shell) holds it. Throws when the database cannot
   * be written at all (read-only, closed): SQLite quietly opens a file it may not write as
   * read-only and would only say so at the first commit. Never waits for the lock: a health probe
   * must not stall the event loop, which the commit path shares, for the whole busy timeout.
   */
  checkWritable(): 'ok' | 'busy' {
    this.db.pragma('busy_timeout = 0');
    try {
      this.stmt.beginImmediate.run();
      try {
        // The write lock alone proves little: in WAL mode it needs only the -wal and -shm files,
        // and SQLite opens a database file it may not write (restored as root, say) read-only.
        // A write, rolled back, fails then with SQLITE_READONLY instead of at the first job.
        this.stmt.touch.run();
      } finally {
        this.stmt.rollback.run();
      }
      return 'ok';
    } catch (err) {
      if (sqliteCode(err) === 'SQLITE_BUSY') return 'busy';
      throw err;
    } finally {
      this.db.pragma(`busy_timeout = ${Math.trunc(this.busyTimeoutMs)}`);
    }
  }

  /** Closes the database; safe to call twice. */
  close(): void {
    if (this.db.open) this.db.close();
  }
}

/** What a userops database holds, read in one transaction so the numbers describe one moment. */
export interface DatabaseSummary {
  /** `PRAGMA user_version`: the migrations applied (see migrations.ts). */
  schemaVersion: number;
  /** `meta.db_id`; absent before schema 3. */
  dbId?: string;
  users: number;
  ledgerRows: number;
  pages: number;
  pageSize: number;
}

/** Pages copied per backup step: 4 MB at the default page size, a step a progress bar can show. */
const BACKUP_PAGES_PER_STEP = 1024;

/** Whether the database has table `name`: admin commands read databases of older schemas too. */
function hasTable(db: BetterSqlite3.Database, name: string): boolean {
  return db.prepare("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?").get(name) !== undefined;
}

/** The database's identity (`meta.db_id`), or `undefined` in a schema from before identities (< 3). */
function databaseId(db: BetterSqlite3.Database): string | undefined {
  if (!hasTable(db, 'meta')) return undefined;
  return (db.prepare("SELECT value FROM meta WHERE key = 'db_id'").get() as { value: string } | undefined)?.value;
}

/**
 * The identity of the database file at `path`, read without creating, migrating or writing it:
 * `null` when it has none (no such file, or a schema from before identities), `undefined` when it
 * cannot be read now (missing volume, no permission...).
 */
export function fileDatabaseId(path: string): string | null | undefined {
  if (!existsSync(path)) return null;
  try {
    const db = new Database(path, { readonly: true, fileMustExist: true });
    try {
      return databaseId(db) ?? null;
    } finally {
      db.close();
    }
  } catch {
    return undefined;
  }
}

/**
 * Rows in the ledger: as its triggers keep count from schema 4, or counted (~10 ms per million
 * rows) before that or when `count` asks for the rows themselves.
 */
function ledgerRows(db: BetterSqlite3.Database, count: boolean): number {
  return (db.prepare(!count && hasTable(db, 'ledger_count') ? 'SELECT n FROM ledger_count' : 'SELECT count(*) AS n FROM ledger').get() as { n: number }).n;
}

/** @param countLedger - count the ledger's rows rather than read the kept count */
function summarize(db: BetterSqlite3.Database, countLedger = false): DatabaseSummary {
  const schemaVersion = db.pragma('user_version', { simple: true }) as number;
  const dbId = databaseId(db);
  return {
    schemaVersion,
    ...(dbId === undefined ? {} : { dbId }),
    users: (db.prepare('SELECT count(*) AS n FROM users').get() as { n: number }).n,
    ledgerRows: ledgerRows(db, countLedger),
    pages: db.pragma('page_count', { simple: true }) as number,
    pageSize: db.pragma('page_size', { simple: true }) as number,
  };
}

/**
 * An existing userops database opened read-only, for admin commands running beside the consumer.
 * Never creates the file or migrates it; WAL lets it read while the consumer writes.
 */
export class ReadOnlyStore {
  private readonly db: BetterSqlite3.Database;

  /**
   * @param path - the database file; throws SQLITE_CANTOPEN if there is none, and an `Error`
   *   if the file is not a userops database this build can read
   */
  constructor(readonly path: string) {
    this.db = new Database(path, { readonly: true, fileMustExist: true });
    try {
      this.db.pragma('busy_timeout = 5000');
      const version = this.db.pragma('user_version', { simple: true }) as number;
      if (version === 0) throw new Error(`${path} is not a userops database (schema version 0)`);
      assertSupported(version);
    } catch (err) {
      this.db.close();
      throw err;
    }
  }

  /** Counts and identity of the database now. */
  summary(): DatabaseSummary {
    return this.db.transaction(() => summarize(this.db))();
  }

  /**
   * Copies the database to `dest` with SQLite's online backup API, from one snapshot: a read
   * transaction is held across every step, so the consumer's commits meanwhile neither restart the
   * copy (as they would between steps otherwise, possibly forever under steady writes) nor appear
   * in it. The WAL grows a little meanwhile: a checkpoint cannot pass a reader's snapshot.
   * Returns the summary of the snapshot copied.
   */
  async backupTo(dest: string, onProgress?: (done: number, total: number) => void): Promise<DatabaseSummary> {
    this.db.exec('BEGIN');
    try {
      // The first read fixes the snapshot.
      const snapshot = summarize(this.db);
      await this.db.backup(dest, {
        progress: ({ totalPages, remainingPages }) => {
          onProgress?.(totalPages - remainingPages, totalPages);
          return BACKUP_PAGES_PER_STEP;
        },
      });
      onProgress?.(snapshot.pages, snapshot.pages);
      return snapshot;
    } finally {
      if (this.db.inTransaction) this.db.exec('COMMIT');
    }
  }

  /** Closes the database; safe to call twice. */
  close(): void {
    if (this.db.open) this.db.close();
  }
}

/** What checking a database file found. */
export interface DatabaseCheck extends DatabaseSummary {
  /** `PRAGMA integrity_check`'s findings; empty when the file is sound. */
  problems: string[];
}

/**
 * Runs `PRAGMA integrity_check` on a database file that no one else is using (a fresh backup) and
 * summarizes it. Opened read-write so that closing it removes the -wal and -shm files it makes.
 */
export function checkDatabase(path: string): DatabaseCheck {
  const db = new Database(path, { fileMustExist: true });
  try {
    const findings = (db.pragma('integrity_check') as { integrity_check: string }[]).map((r) => r.integrity_check);
    const problems = findings.length === 1 && findings[0] === 'ok' ? [] : findings;
    // The rows themselves, not the kept count: this reads every page anyway, and a backup's
    // figure is then checked against the count the copy carries (test/admin.test.ts).
    return { ...summarize(db, true), problems };
  } finally {
    db.close();
  }
}
