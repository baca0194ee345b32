/**
 * Checks what callers were told against what the SQLite file holds once the dust has settled.
 *
 * - lost: a call succeeded, yet its effect is not in the database (a create whose row is absent,
 *   an update whose value is gone, a delete whose row is back).
 * - doubled: an op ran twice: a create answered "exists" or a delete/update/get answered "not
 *   found" for a user this caller alone created and had not deleted.
 * - phantom: a call was reported as certainly not applied, yet its effect is there.
 * - stale: a get returned something other than the caller's last write.
 */
import Database from '../src/consumer/sqlite-driver.js';
import type { CallRecord } from './load.js';

/** The verdict on one scenario's calls. */
export interface Verdict {
  sent: number;
  resolved: number;
  /** Rejections by error code (domain refusals included, under their own code). */
  rejected: Record<string, number>;
  lost: number;
  doubled: number;
  phantom: number;
  stale: number;
  /** Calls that never settled; must be 0: every call ends, by result or error. */
  unsettled: number;
  /** Longest time any call took to settle, in ms. */
  maxSettleMs: number;
  /** Rows in the database that no caller of this load could have created. */
  foreignRows: number;
  /** One line per violation, for the report. */
  problems: string[];
}

interface Row {
  nickname: string;
  full_name: string;
}

type Expected = { present: false } | { present: true; fullName: string };

function effectOf(call: CallRecord, before: Expected): Expected {
  switch (call.op) {
    case 'create':
      return { present: true, fullName: call.fullName as string };
    case 'update':
      return { present: true, fullName: call.fullName as string };
    case 'delete':
      return { present: false };
    case 'get':
      return before;
  }
}

const same = (a: Expected, row: Row | undefined) => (a.present ? row !== undefined && row.full_name === a.fullName : row === undefined);

/** Compares `calls` (all with nicknames starting `tag-`) with the database at `dbPath`. */
export function verify(dbPath: string, calls: readonly CallRecord[], tag: string): Verdict {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  let rows: Row[];
  try {
    rows = db.prepare<[], Row>('SELECT nickname, full_name FROM users').all();
  } finally {
    db.close();
  }
  const byNick = new Map(rows.map((r) => [r.nickname, r]));
  const verdict: Verdict = {
    sent: calls.length, resolved: 0, rejected: {}, lost: 0, doubled: 0, phantom: 0, stale: 0,
    unsettled: 0, maxSettleMs: 0, foreignRows: rows.filter((r) => !r.nickname.startsWith(`${tag}-`)).length, problems: [],
  };
  const problem = (kind: 'lost' | 'doubled' | 'phantom' | 'stale', what: string) => {
    verdict[kind]++;
    if (verdict.problems.length < 20) verdict.problems.push(`${kind}: ${what}`);
  };

  const perUser = new Map<string, CallRecord[]>();
  for (const call of calls) {
    const list = perUser.get(call.nickname) ?? [];
    list.push(call);
    perUser.set(call.nickname, list);
    if (call.outcome === undefined || call.settledAt === undefined) {
      verdict.unsettled++;
      continue;
    }
    verdict.maxSettleMs = Math.max(verdict.maxSettleMs, call.settledAt - call.sentAt);
    if (call.outcome.kind === 'ok') verdict.resolved++;
    else verdict.rejected[call.outcome.code] = (verdict.rejected[call.outcome.code] ?? 0) + 1;
  }

  for (const [nickname, list] of perUser) {
    // Walk the user's calls in order; only the last one can be uncertain (see Load).
    let expected: Expected = { present: false };
    let certain = true;
    let alternative: Expected | undefined;
    let phantom = false;
    for (const call of list) {
      const outcome = call.outcome;
      if (outcome === undefined) {
        alternative = effectOf(call, expected);
        certain = false;
        break;
      }
      const what = `${call.op} ${nickname}`;
      switch (outcome.kind) {
        case 'ok':
          if (call.op === 'get' && expected.present && (outcome.value as { fullName?: unknown } | null)?.fullName !== expected.fullName) {
            problem('stale', `${what} returned ${JSON.stringify(outcome.value)}, expected fullName ${expected.fullName}`);
          }
          expected = effectOf(call, expected);
          break;
        case 'refused':
          // The caller created this user once and deleted it at most once, as its last step: a
          // refusal means this op or an earlier one ran twice, so the row may show either.
          problem('doubled', `${what} answered ${outcome.code}: its job ran twice, or an earlier one did`);
          alternative = effectOf(call, expected);
          certain = false;
          break;
        case 'not-applied':
          // Checked against the database below: this call's effect must not be there.
          if (call.op !== 'get' && same(effectOf(call, expected), byNick.get(nickname)) && !same(expected, byNick.get(nickname))) {
            problem('phantom', `${what} was reported not applied (${outcome.code}) but its effect is in the database`);
            phantom = true;
          }
          break;
        case 'unknown':
          alternative = effectOf(call, expected);
          certain = false;
          break;
      }
      if (!certain) break;
    }
    const row = byNick.get(nickname);
    if (phantom || same(expected, row)) continue;
    if (!certain && alternative && same(alternative, row)) continue;
    problem('lost', `${nickname}: expected ${JSON.stringify(expected)}${certain ? '' : ` or ${JSON.stringify(alternative)}`}, database has ${JSON.stringify(row ?? null)}`);
  }
  return verdict;
}

/** True when nothing was lost, doubled, phantom, stale, unsettled or foreign. */
export function isClean(v: Verdict): boolean {
  return v.lost + v.doubled + v.phantom + v.stale + v.unsettled + v.foreignRows === 0;
}
