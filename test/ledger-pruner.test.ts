import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it } from 'node:test';

import { LedgerPruner } from '../src/consumer/ledger-pruner.js';
import Database from '../src/consumer/sqlite-driver.js';
import { Store } from '../src/consumer/store.js';
import { capturedLog, recordJobs, tempDb } from './helpers/fixtures.js';

const HOUR = 3_600_000;

describe('LedgerPruner', () => {
  let db: ReturnType<typeof tempDb>;
  let store: Store;
  beforeEach(() => {
    db = tempDb();
    store = new Store(db.dbPath, 50);
    recordJobs(store, 'older', 300, Date.now() - 5 * HOUR);
    recordJobs(store, 'old', 700, Date.now() - 3 * HOUR);
    recordJobs(store, 'new', 10, Date.now());
  });
  afterEach(() => {
    store.close();
    db.cleanup();
  });

  it('deletes rows older than the retention, oldest first, a bounded chunk per call', () => {
    const has = (jobId: string) => store.ledgerGet(jobId, '') !== undefined;
    assert.equal(store.pruneLedger(Date.now() - HOUR, 300), 300);
    assert.equal(store.ledgerSize(), 710);
    assert.ok(!has('older0') && !has('older299') && has('old0') && has('old699'), 'the oldest went first');
    assert.equal(store.pruneLedger(Date.now() - HOUR, 10_000), 700);
    assert.ok(!has('old699') && has('new0'));
    assert.equal(store.ledgerSize(), 10);
    assert.equal(store.countUsers(), 1010, 'users untouched');
  });

  it('lets the event loop run between chunks, and removes every old row', async () => {
    const { log, lines } = capturedLog();
    const pruner = new LedgerPruner(store, HOUR, HOUR, log, () => true, 100);
    const seen: number[] = [];
    // Runs at the first turn of the event loop after the prune begins: with a single DELETE,
    // the prune would be over by then.
    setImmediate(() => seen.push(store.ledgerSize()));
    const removed = await pruner.prune();
    assert.equal(removed, 1000);
    assert.equal(store.ledgerSize(), 10);
    assert.equal(seen.length, 1);
    assert.ok((seen[0] as number) < 1010 && (seen[0] as number) > 10, `ledger held ${seen[0]} rows mid-prune`);
    assert.ok(lines.some((l) => l.msg === 'pruned old ledger rows' && l.removed === 1000));
    await pruner.close();
  });

  it('prunes at start only rows past the retention when the database was last written', async () => {
    const other = tempDb();
    const downtime = new Store(other.dbPath);
    try {
      // The consumer last committed ten days ago: its last hour must survive the downtime.
      const last = Date.now() - 10 * 24 * HOUR;
      recordJobs(downtime, 'gone', 250, last - 2 * HOUR);
      recordJobs(downtime, 'kept', 10, last - HOUR / 2);
      recordJobs(downtime, 'last', 10, last);
      const pruner = new LedgerPruner(downtime, HOUR, HOUR, capturedLog().log, () => true, 100);
      pruner.start();
      assert.equal(await pruner.prune(), 250, 'the run start() began, joined');
      assert.equal(downtime.ledgerSize(), 20);
      assert.ok(downtime.ledgerGet('kept0', '') !== undefined && downtime.ledgerGet('last0', '') !== undefined);
      await pruner.close();
    } finally {
      downtime.close();
      other.cleanup();
    }
  });

  it('stops after the chunk in progress when closed, and prunes nothing after', async () => {
    const pruner = new LedgerPruner(store, HOUR, HOUR, capturedLog().log, () => true, 100);
    const running = pruner.prune();
    await pruner.close();
    await pruner.close(); // twice is fine
    const removed = await running;
    assert.ok(removed > 0 && removed < 1000, `removed ${removed}`);
    assert.equal(store.ledgerSize(), 1010 - removed);
    assert.equal(await pruner.prune(), 0);
  });

  it('prunes nothing while this consumer is not the writer, and stops when it stops being one', async () => {
    const standby = new LedgerPruner(store, HOUR, HOUR, capturedLog().log, () => false, 100);
    assert.equal(await standby.prune(), 0);
    assert.equal(store.ledgerSize(), 1010);
    let asked = 0;
    const deposed = new LedgerPruner(store, HOUR, HOUR, capturedLog().log, () => asked++ < 2, 100);
    assert.equal(await deposed.prune(), 200, 'two chunks, then the lease was gone');
    assert.equal(store.ledgerSize(), 810);
  });

  it('logs a failure and carries on instead of rejecting', async () => {
    const { log, lines } = capturedLog();
    const pruner = new LedgerPruner(store, HOUR, HOUR, log, () => true, 100);
    const other = new Database(db.dbPath);
    other.exec('BEGIN IMMEDIATE');
    try {
      assert.equal(await pruner.prune(), 0);
      const warning = lines.find((l) => l.msg === 'ledger prune failed; will try again');
      assert.equal((warning?.err as { code?: string } | undefined)?.code, 'SQLITE_BUSY');
    } finally {
      other.exec('ROLLBACK');
      other.close();
    }
    assert.equal(await pruner.prune(), 1000, 'the next run prunes');
  });
});
