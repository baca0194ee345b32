import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';

import { BackgroundCheckpointer } from '../src/consumer/checkpointer.js';
import { Store } from '../src/consumer/store.js';
import { capturedLog, tempDb, until } from './helpers/fixtures.js';

/** Commits `n` users in one transaction: well under the writer's own checkpoint threshold. */
function addUsers(store: Store, from: number, n: number): void {
  store.db.transaction(() => {
    for (let i = from; i < from + n; i++) store.createUser({ nickname: `u${i}`, fullName: 'Checkpoint User', email: `u${i}@example.com` }, i);
  })();
}

describe('BackgroundCheckpointer', () => {
  it('copies committed pages into the database file between commits, and stops when closed', async () => {
    const db = tempDb();
    const store = new Store(db.dbPath);
    const { log, lines } = capturedLog();
    const checkpointer = new BackgroundCheckpointer(db.dbPath, log, 20);
    try {
      const size = () => statSync(db.dbPath).size;
      const empty = size();
      // ~180 pages: the writer alone would leave them in the WAL until it held 10,000.
      addUsers(store, 0, 10_000);
      await until('the database file holds the new pages', () => size() > empty + 150 * 4096);

      await checkpointer.close();
      await checkpointer.close(); // twice is fine
      const stopped = size();
      addUsers(store, 10_000, 10_000);
      await sleep(200);
      assert.equal(size(), stopped, 'checkpointed after close()');
      assert.equal(store.countUsers(), 20_000);
      assert.deepEqual(lines.filter((l) => l.level === 40), [], 'warned');
    } finally {
      await checkpointer.close();
      store.close();
      db.cleanup();
    }
  });

  it('says so and leaves the process running when it cannot open the database', async () => {
    const db = tempDb();
    const { log, lines } = capturedLog();
    const checkpointer = new BackgroundCheckpointer(`${db.dir}/missing/userops.db`, log, 20);
    try {
      await until('a warning', () => lines.some((l) => l.level === 40));
      const warning = lines.find((l) => l.level === 40) ?? {};
      assert.match(String(warning.msg), /background checkpointer stopped; commits checkpoint the WAL themselves/);
      assert.match(JSON.stringify(warning.err), /unable to open database file|directory does not exist/);
    } finally {
      await checkpointer.close();
      db.cleanup();
    }
  });
});
