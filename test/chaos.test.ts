/**
 * The chaos scenarios at short scale: every fault, real processes, and a verdict that every call
 * was answered truthfully. `npm run chaos` runs the same scenarios longer and prints a table.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { CallRecord } from '../chaos/load.js';
import { SCENARIOS, SHORT } from '../chaos/scenarios.js';
import { isClean, verify } from '../chaos/verify.js';
import { Store } from '../src/consumer/store.js';
import { tempDb } from './helpers/fixtures.js';

describe('chaos verdict', () => {
  it('catches lost, doubled, phantom and stale answers, and accepts either state after an uncertain one', () => {
    const { dbPath, cleanup } = tempDb();
    try {
      const store = new Store(dbPath);
      const user = (nickname: string, fullName: string) => store.createUser({ nickname, fullName, email: `${nickname}@example.com` }, 0);
      user('c-ok', 'Chaos Two');
      user('c-doubled', 'Chaos One');
      user('c-phantom', 'Chaos One');
      user('c-unknown', 'Chaos One');
      user('c-stale', 'Chaos Two');
      store.close();
      const at = { sentAt: 1, settledAt: 2 };
      const ok = (value: unknown = null) => ({ kind: 'ok' as const, value });
      const calls: CallRecord[] = [
        { op: 'create', nickname: 'c-ok', fullName: 'Chaos One', ...at, outcome: ok() },
        { op: 'update', nickname: 'c-ok', fullName: 'Chaos Two', ...at, outcome: ok() },
        { op: 'create', nickname: 'c-lost', fullName: 'Chaos One', ...at, outcome: ok() },
        { op: 'create', nickname: 'c-doubled', fullName: 'Chaos One', ...at, outcome: { kind: 'refused', code: 'USER_EXISTS' } },
        { op: 'create', nickname: 'c-phantom', fullName: 'Chaos One', ...at, outcome: { kind: 'not-applied', code: 'TIMEOUT' } },
        { op: 'create', nickname: 'c-unknown', fullName: 'Chaos One', ...at, outcome: { kind: 'unknown', code: 'TIMEOUT' } },
        { op: 'create', nickname: 'c-stale', fullName: 'Chaos One', ...at, outcome: ok() },
        { op: 'update', nickname: 'c-stale', fullName: 'Chaos Two', ...at, outcome: ok() },
        { op: 'get', nickname: 'c-stale', ...at, outcome: ok({ fullName: 'Chaos One' }) },
        { op: 'create', nickname: 'c-hanging', fullName: 'Chaos One', sentAt: 1 },
      ];
      const v = verify(dbPath, calls, 'c');
      assert.deepEqual(
        { lost: v.lost, doubled: v.doubled, phantom: v.phantom, stale: v.stale, unsettled: v.unsettled },
        { lost: 1, doubled: 1, phantom: 1, stale: 1, unsettled: 1 },
        v.problems.join('\n'),
      );
      assert.equal(isClean(v), false);
      assert.deepEqual(v.rejected, { USER_EXISTS: 1, TIMEOUT: 2 });
    } finally {
      cleanup();
    }
  });
});

describe('chaos (short)', () => {
  for (const scenario of SCENARIOS) {
    it(`${scenario.name}: ${scenario.what}`, async () => {
      const { verdict, failures } = await scenario.run(SHORT);
      assert.deepEqual(failures, []);
      assert.deepEqual(verdict.problems, []);
      assert.equal(verdict.unsettled, 0, 'every call settles');
      assert.equal(verdict.foreignRows, 0, 'only rows the callers created');
      assert.ok(verdict.resolved > SHORT.okBetween, `calls resolved (${verdict.resolved})`);
    });
  }
});
