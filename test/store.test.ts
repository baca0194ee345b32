import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';

import { applyJob, payloadHash } from '../src/consumer/apply.js';
import { formatIso } from '../src/consumer/iso-time.js';
import { SCHEMA_VERSION } from '../src/consumer/migrations.js';
import Database, { SQLITE_ENTRY } from '../src/consumer/sqlite-driver.js';
import { sqliteCode } from '../src/consumer/sqlite-errors.js';
import { ReadOnlyStore, Store } from '../src/consumer/store.js';
import { ConfigError, UserExistsError, UserNotFoundError, ValidationError } from '../src/protocol/index.js';
import { tempDb } from './helpers/fixtures.js';

const bob = { nickname: 'bob', fullName: 'Bob B', email: 'bob@example.com' };
const create = (nickname: string) => ({ op: 'user.create', args: { ...bob, nickname } });

let db: ReturnType<typeof tempDb>;
let store: Store;

beforeEach(() => {
  db = tempDb();
  store = new Store(db.dbPath);
});

afterEach(() => {
  store.close();
  db.cleanup();
});

/** Turns the database at `path` into one written by schema 1, with one ledger row. */
function writeSchema1(path: string): void {
  const v1 = new Database(path);
  v1.exec(`DROP TABLE users; DROP TABLE ledger; DROP TABLE meta; DROP TABLE ledger_count;
    CREATE TABLE users (id INTEGER PRIMARY KEY, nickname TEXT NOT NULL UNIQUE, full_name TEXT NOT NULL,
      email TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL) STRICT;
    CREATE TABLE ledger (job_id TEXT PRIMARY KEY, results TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT;
    CREATE INDEX ledger_applied_at ON ledger (applied_at);
    INSERT INTO ledger VALUES ('old-job', '[{"ok":true,"value":42}]', 1);
    PRAGMA user_version = 1;`);
  v1.close();
}

describe('Store', () => {
  it('opens in WAL mode with synchronous=FULL at the current schema version', () => {
    assert.equal(store.db.pragma('journal_mode', { simple: true }), 'wal');
    assert.equal(store.db.pragma('synchronous', { simple: true }), 2); // FULL
    assert.equal(store.db.pragma('user_version', { simple: true }), SCHEMA_VERSION);
  });

  it('creates, reads, updates, lists and deletes users', () => {
    const created = store.createUser(bob, Date.parse('2026-01-01T00:00:00Z'));
    assert.equal(created.nickname, 'bob');
    assert.equal(created.createdAt, '2026-01-01T00:00:00.000Z');
    assert.deepEqual(store.getUser({ nickname: 'bob' }), created);
    const updated = store.updateUser({ nickname: 'bob', email: 'b@example.org' }, Date.parse('2026-01-02T00:00:00Z'));
    assert.equal(updated.email, 'b@example.org');
    assert.equal(updated.fullName, 'Bob B');
    assert.equal(updated.updatedAt, '2026-01-02T00:00:00.000Z');
    assert.equal(updated.createdAt, '2026-01-01T00:00:00.000Z');
    // Times are formatted through a one-entry memo: each user must still get its own.
    const alice = store.createUser({ ...bob, nickname: 'alice' }, 0);
    assert.deepEqual([alice.createdAt, alice.updatedAt], ['1970-01-01T00:00:00.000Z', '1970-01-01T00:00:00.000Z']);
    assert.deepEqual([store.getUser({ nickname: 'bob' }).createdAt, store.getUser({ nickname: 'bob' }).updatedAt], ['2026-01-01T00:00:00.000Z', '2026-01-02T00:00:00.000Z']);
    assert.deepEqual(store.listUsers({}).map((u) => u.nickname), ['alice', 'bob']);
    assert.deepEqual(store.listUsers({ after: 'alice' }).map((u) => u.nickname), ['bob']);
    assert.deepEqual(store.listUsers({ limit: 1 }).map((u) => u.nickname), ['alice']);
    assert.deepEqual(store.deleteUser({ nickname: 'bob' }), updated);
    assert.equal(store.countUsers(), 1);
  });

  it('runs on the better-sqlite3 major that works on this Node (sqlite-driver.ts)', () => {
    const pkg = JSON.parse(readFileSync(join(SQLITE_ENTRY, '../../package.json'), 'utf8')) as { name: string; version: string };
    assert.equal(pkg.name, 'better-sqlite3');
    const nodeMajor = Number(process.versions.node.split('.')[0]);
    assert.equal(pkg.version.split('.')[0], nodeMajor >= 22 ? '13' : '12', `Node ${process.version} loads better-sqlite3 ${pkg.version}`);
  });

  it('formats times exactly as Date#toISOString does', () => {
    const check = (ms: number) => assert.equal(formatIso(ms), new Date(ms).toISOString(), `at ${ms}`);
    // Every day from 1970 to 2300, each at another time of day: leap years, month ends, centuries.
    for (let day = 0; day < 120_000; day++) check(day * 86_400_000 + ((day * 7_919_993) % 86_400_000));
    for (const iso of ['2000-02-29T23:59:59.999Z', '2100-03-01T00:00:00.000Z', '9999-12-31T23:59:59.999Z']) check(Date.parse(iso));
    // Outside four-digit years, or not a whole ms: what V8 says, whatever it says.
    for (const ms of [-1, 253_402_300_800_000, 1.5]) check(ms);
  });

  it('raises typed errors for missing and duplicate users', () => {
    store.createUser(bob, 0);
    assert.throws(() => store.createUser(bob, 0), UserExistsError);
    assert.throws(() => store.getUser({ nickname: 'nobody' }), { message: "User nobody doesn't exist" });
    assert.throws(() => store.updateUser({ nickname: 'nobody', email: 'x@y.z' }, 0), UserNotFoundError);
    assert.throws(() => store.deleteUser({ nickname: 'nobody' }), UserNotFoundError);
  });

  it('upgrades a schema 1 database, keeping its ledger rows replayable', () => {
    store.close();
    writeSchema1(db.dbPath);
    store = new Store(db.dbPath);
    assert.equal(store.db.pragma('user_version', { simple: true }), SCHEMA_VERSION);
    const replay = applyJob(store, 'old-job', { v: 1, ops: [create('x')] }, 1000);
    assert.equal(replay.replayed, true);
    assert.deepEqual(replay.results, [{ ok: true, value: 42 }]);
    assert.match(store.dbId, /^[0-9a-f]{32}$/, 'migration 3 gave the database an identity');
    assert.equal(store.ledgerSize(), 1, 'migration 4 counted the rows already there');
  });

  it('summarizes a database of an older schema for the admin commands without migrating it', () => {
    store.close();
    writeSchema1(db.dbPath);
    const old = new ReadOnlyStore(db.dbPath);
    try {
      assert.deepEqual({ ...old.summary(), pages: 0 }, { schemaVersion: 1, users: 0, ledgerRows: 1, pages: 0, pageSize: 4096 });
    } finally {
      old.close();
    }
    store = new Store(db.dbPath);
  });

  it('keeps data and schema version across reopen, and refuses a newer schema', () => {
    store.createUser(bob, 0);
    store.close();
    store = new Store(db.dbPath);
    assert.equal(store.getUser({ nickname: 'bob' }).email, bob.email);
    store.db.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
    store.close();
    // The wrong build for this file: a configuration error (exit 2), not an outage to retry.
    assert.throws(() => new Store(db.dbPath), (err: unknown) => err instanceof ConfigError && /newer than this build supports/.test(err.message));
    store = new Store(':memory:');
  });

  it('finds a database file it may not write when asked, not at the first commit', () => {
    store.close();
    // Immutable, so that even root may not write it, while its folder (for -wal and -shm) stays
    // writable: as a file restored by root, under a daemon that runs as another user, would be.
    execFileSync('chattr', ['+i', db.dbPath]);
    try {
      store = new Store(db.dbPath);
      assert.throws(() => store.checkWritable(), (err: unknown) => sqliteCode(err) === 'SQLITE_READONLY');
    } finally {
      store.close();
      execFileSync('chattr', ['-i', db.dbPath]);
    }
    store = new Store(db.dbPath);
    assert.equal(store.checkWritable(), 'ok');
  });
});

describe('applyJob', () => {
  it('applies a batch in order, each op in its own savepoint', () => {
    const { results, replayed } = applyJob(store, 'job-1', {
      v: 1,
      ops: [create('a'), create('a'), { op: 'user.get', args: { nickname: 'a' } }, { op: 'user.get', args: { nickname: 'zz' } }, create('b')],
    }, 1000);
    assert.equal(replayed, false);
    assert.deepEqual(results.map((r) => (r.ok ? 'ok' : r.error.code)), ['ok', 'USER_EXISTS', 'ok', 'USER_NOT_FOUND', 'ok']);
    // The failed ops rolled back alone: both successful creates committed.
    assert.deepEqual(store.listUsers({}).map((u) => u.nickname), ['a', 'b']);
  });

  it('turns bad ops into per-op INVALID_INPUT without touching their neighbours', () => {
    const { results } = applyJob(store, 'job-2', {
      v: 1,
      ops: [create('ok1'), { op: 'user.nuke', args: {} }, { op: 'user.create', args: { nickname: 'x' } }, 'junk', create('ok2')],
    }, 1000);
    assert.deepEqual(results.map((r) => (r.ok ? 'ok' : r.error.code)), ['ok', 'INVALID_INPUT', 'INVALID_INPUT', 'INVALID_INPUT', 'ok']);
    const second = results[1];
    assert.ok(second && !second.ok);
    assert.match(second.error.message, /unknown op 'user\.nuke'/);
    assert.equal(store.countUsers(), 2);
  });

  it('records the job in the ledger: the same job delivered twice changes nothing', () => {
    const payload = { v: 1, ops: [create('once')] };
    const first = applyJob(store, 'job-3', payload, 1000);
    const again = applyJob(store, 'job-3', payload, 1000);
    assert.equal(again.replayed, true);
    assert.deepEqual(again.results, first.results);
    assert.equal(first.results[0]?.ok, true, 'the replay returns the original success, not "exists"');
    assert.equal(store.countUsers(), 1);
    assert.equal(store.ledgerSize(), 1);
  });

  it('applies a reused job id with another payload as a new job', () => {
    // BullMQ's default ids are a counter that restarts if Redis loses its data.
    applyJob(store, '1', { v: 1, ops: [create('alice')] }, 1000);
    const second = applyJob(store, '1', { v: 1, ops: [{ op: 'user.delete', args: { nickname: 'alice' } }] }, 1000);
    assert.equal(second.replayed, false);
    assert.equal(second.reusedId, true);
    assert.equal(second.results[0]?.ok, true);
    assert.equal(store.countUsers(), 0, 'the delete was applied, not answered with the create');
    // And that second job is now the one a re-delivery replays.
    assert.equal(applyJob(store, '1', { v: 1, ops: [{ op: 'user.delete', args: { nickname: 'alice' } }] }, 1000).replayed, true);
  });

  it('rejects a malformed envelope before touching the database', () => {
    assert.throws(() => applyJob(store, 'bad', { v: 1, ops: 'x' }, 1000), ValidationError);
    assert.throws(() => applyJob(store, 'bad', { v: 1, ops: [create('a'), create('b')] }, 1), /at most 1 ops/);
    assert.equal(store.ledgerSize(), 0);
  });

  it('rolls the whole job back on a storage error, and applies it once when retried', () => {
    // Another connection holds the write lock: the job cannot commit and must leave no trace.
    store.close();
    store = new Store(db.dbPath, 0);
    const other = new Database(db.dbPath);
    other.exec('BEGIN IMMEDIATE');
    assert.throws(() => applyJob(store, 'busy', { v: 1, ops: [create('x')] }, 1000), { code: 'SQLITE_BUSY' });
    other.exec('ROLLBACK');
    other.close();
    assert.equal(store.countUsers(), 0);
    assert.equal(applyJob(store, 'busy', { v: 1, ops: [create('x')] }, 1000).results[0]?.ok, true);
    assert.equal(store.countUsers(), 1);
  });

  it('keeps the ledger count exact through new jobs, replays, reused ids, rollbacks and prunes', () => {
    const counted = () => (store.db.prepare('SELECT count(*) AS n FROM ledger').get() as { n: number }).n;
    const check = (expected: number, step: string) => {
      assert.equal(counted(), expected, step);
      assert.equal(store.ledgerSize(), expected, step);
    };
    applyJob(store, 'a', { v: 1, ops: [create('a')] }, 1000, 1_000);
    applyJob(store, 'b', { v: 1, ops: [create('b')] }, 1000, 2_000);
    check(2, 'two jobs');
    applyJob(store, 'a', { v: 1, ops: [create('a')] }, 1000, 3_000);
    check(2, 'a replay');
    applyJob(store, 'b', { v: 1, ops: [create('c')] }, 1000, 3_000);
    check(2, 'a reused id replaces its row');
    assert.throws(() =>
      store.db.transaction(() => {
        store.ledgerPut('rolled-back', 'h', '[]', 4_000);
        throw new Error('rolled back');
      })(),
    );
    check(2, 'a rolled-back transaction');
    assert.equal(store.pruneLedger(2_500, 10), 1);
    check(1, 'a prune');
  });

  it('prunes old ledger rows only', () => {
    applyJob(store, 'old', { v: 1, ops: [create('o')] }, 1000, 1_000);
    applyJob(store, 'new', { v: 1, ops: [create('n')] }, 1000, 5_000);
    assert.equal(store.pruneLedger(2_000, 10), 1);
    assert.equal(store.ledgerGet('old', payloadHash([create('o')])), undefined);
    assert.ok(store.ledgerGet('new', payloadHash([create('n')])));
  });
});
