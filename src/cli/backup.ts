/**
 * `userops backup <file>`: a consistent copy of the live database, taken beside the running
 * consumer with SQLite's online backup API from a read-only connection, checked with
 * `PRAGMA integrity_check` before it takes the file's name.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, linkSync, openSync, realpathSync, renameSync, rmSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';

import { SingleBar } from 'cli-progress';

import { checkDatabase, type DatabaseSummary, ReadOnlyStore } from '../consumer/store.js';
import { ConfigError } from '../protocol/errors.js';

/** Below this a backup takes moments, and a bar would only flicker. */
const PROGRESS_MIN_BYTES = 64 * 1024 * 1024;

/** What `userops backup` prints. */
export interface BackupSummary {
  path: string;
  bytes: number;
  pages: number;
  users: number;
  ledgerRows: number;
  schemaVersion: number;
  dbId: string | null;
  integrity: 'ok';
  ms: number;
}

/** How the backup reports progress: a bar on a terminal for large files, nothing otherwise. */
export interface BackupOptions {
  force: boolean;
  /** Where a progress bar may go; it is drawn only if this is a TTY. */
  progressTo?: NodeJS.WriteStream;
}

function fileArgumentError(message: string): ConfigError {
  return new ConfigError([{ path: '<file>', message }], `Invalid <file>: ${message}`);
}

function sameFile(a: string, b: string): boolean {
  try {
    return realpathSync(a) === realpathSync(b);
  } catch {
    return a === b;
  }
}

function openSource(dbPath: string): ReadOnlyStore {
  try {
    return new ReadOnlyStore(dbPath);
  } catch (err) {
    const why = existsSync(dbPath) ? (err instanceof Error ? err.message : String(err)) : 'no database file there';
    throw new ConfigError([{ path: 'USEROPS_DB', message: why }], `Invalid USEROPS_DB: cannot back up ${dbPath}: ${why}`);
  }
}

function progressBar(out: NodeJS.WriteStream | undefined): ((done: number, total: number) => void) & { stop(): void } {
  let bar: SingleBar | undefined;
  const update = (done: number, total: number): void => {
    bar ??= new SingleBar({ stream: out, format: 'backup [{bar}] {percentage}% {value}/{total} pages', hideCursor: true });
    if (!bar.isActive) bar.start(total, done);
    else bar.update(done);
  };
  return Object.assign(update, { stop: () => bar?.stop() });
}

/** Removes a database file with its side files, ignoring any that are absent. */
function removeDatabaseFiles(path: string): void {
  for (const suffix of ['', '-wal', '-shm', '-journal']) rmSync(`${path}${suffix}`, { force: true });
}

/** Gives the checked copy its final name; without `force`, never over an existing file. */
function publish(partial: string, dest: string, force: boolean): void {
  // Stale -wal/-shm beside the file being replaced would be read as part of the new one.
  if (force) {
    rmSync(`${dest}-wal`, { force: true });
    rmSync(`${dest}-shm`, { force: true });
    renameSync(partial, dest);
    return;
  }
  try {
    // A hard link fails if the name is taken, atomically: no overwrite by a file created meanwhile.
    linkSync(partial, dest);
    rmSync(partial);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw fileArgumentError(`${dest} exists; pass --force to replace it`);
    // A filesystem without hard links: the check at the start is the guard.
    renameSync(partial, dest);
  }
}

/** Backs `dbPath` up to `file`; see the module comment. */
export async function backupDatabase(dbPath: string, file: string, options: BackupOptions): Promise<BackupSummary> {
  const started = performance.now();
  const dest = resolve(file);
  // Checked before --force is: a folder cannot be replaced by a file (rename fails with EISDIR).
  if (statSync(dest, { throwIfNoEntry: false })?.isDirectory()) {
    throw fileArgumentError(`${dest} is a directory; give the path of a file to write, e.g. ${join(dest, 'userops-backup.db')}`);
  }
  if (sameFile(dest, dbPath)) throw fileArgumentError(`${dest} is the live database (USEROPS_DB); choose another file`);
  if (existsSync(dest) && !options.force) throw fileArgumentError(`${dest} exists; pass --force to replace it`);
  if (!existsSync(dirname(dest))) throw fileArgumentError(`folder ${dirname(dest)} does not exist`);

  const source = openSource(dbPath);
  // Written beside the target, so the final rename stays on one filesystem. Under a name nobody
  // can guess, created here, new (O_EXCL: never through a link someone planted) and readable by
  // its owner only: it holds every user. With the pid as its name, another user who could write
  // the folder had root's backup follow a symlink of theirs to any file.
  const partial = `${dest}.partial-${randomBytes(8).toString('hex')}`;
  try {
    closeSync(openSync(partial, 'wx', 0o600));
  } catch (err) {
    source.close();
    throw err;
  }
  const bar = progressBar(options.progressTo);
  try {
    const large = statSync(dbPath).size >= PROGRESS_MIN_BYTES && options.progressTo?.isTTY === true;
    let snapshot: DatabaseSummary;
    try {
      snapshot = await source.backupTo(partial, large ? bar : undefined);
    } finally {
      bar.stop();
      source.close();
    }
    const check = checkDatabase(partial);
    if (check.problems.length > 0) {
      throw new Error(`the copy failed its integrity check: ${check.problems.slice(0, 5).join('; ')}`);
    }
    if (check.users !== snapshot.users) {
      throw new Error(`the copy holds ${check.users} users where the snapshot held ${snapshot.users}`);
    }
    publish(partial, dest, options.force);
    return {
      path: dest,
      bytes: statSync(dest).size,
      pages: check.pages,
      users: check.users,
      ledgerRows: check.ledgerRows,
      schemaVersion: check.schemaVersion,
      dbId: check.dbId ?? null,
      integrity: 'ok',
      ms: Math.round(performance.now() - started),
    };
  } finally {
    removeDatabaseFiles(partial);
  }
}
