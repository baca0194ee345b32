/**
 * Load for the chaos scenarios: callers that each walk users through create, update, get and
 * delete, recording every call and how it ended, so the database can be checked against what the
 * callers were told.
 *
 * Each caller works on one user at a time and moves to a new user after any call that did not
 * succeed, so an uncertain outcome is always the last thing that happened to its user. That makes
 * the expected final state of every user exact, except for that last uncertain step.
 */
import { type UserOpsClient, UserOpsError } from '../src/index.js';

/** How one call ended, as the caller saw it. */
export type Outcome =
  | { kind: 'ok'; value: unknown }
  /** Certainly not applied: timed out before it ran, or never reached Redis. */
  | { kind: 'not-applied'; code: string }
  /** A domain answer (exists, not found): the call ran and said no. */
  | { kind: 'refused'; code: string }
  /** Might have run: timed out while running, or the client could not tell. */
  | { kind: 'unknown'; code: string };

/** One call and its outcome. */
export interface CallRecord {
  op: 'create' | 'update' | 'get' | 'delete';
  nickname: string;
  /** The fullName a create or update set. */
  fullName?: string;
  sentAt: number;
  settledAt?: number;
  outcome?: Outcome;
}

/** Codes that mean the op certainly did not run (see the README's "Guarantees"). */
// JOB_FAILED is not here: a job failed for stalling too often may have committed on an earlier try.
const NOT_APPLIED = new Set(['REDIS_UNAVAILABLE', 'OVERLOADED', 'INVALID_INPUT']);
const REFUSED = new Set(['USER_EXISTS', 'USER_NOT_FOUND']);

function classify(err: unknown): Outcome {
  if (!(err instanceof UserOpsError)) return { kind: 'unknown', code: 'NOT_A_USEROPS_ERROR' };
  if (REFUSED.has(err.code)) return { kind: 'refused', code: err.code };
  if (NOT_APPLIED.has(err.code)) return { kind: 'not-applied', code: err.code };
  if (err.code === 'TIMEOUT' && (err.details as { applied?: unknown } | undefined)?.applied === false) {
    return { kind: 'not-applied', code: err.code };
  }
  return { kind: 'unknown', code: err.code };
}

/** Callers driving load through one or more clients until stopped. */
export class Load {
  readonly calls: CallRecord[] = [];
  private running = true;
  private readonly loops: Promise<void>[] = [];
  private seq = 0;

  /**
   * @param clients - calls are spread over these, one client per caller in turn
   * @param callers - concurrent callers
   * @param tag - prefix of every nickname this load creates
   * @param pauseMs - pause between a caller's calls (0: back to back)
   */
  constructor(
    private readonly clients: UserOpsClient[],
    callers: number,
    private readonly tag: string,
    private readonly pauseMs = 0,
  ) {
    for (let c = 0; c < callers; c++) this.loops.push(this.caller(this.clients[c % this.clients.length] as UserOpsClient, c));
  }

  /** Stops making new calls and resolves once every call made has settled. */
  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.loops);
  }

  /** Calls sent and not yet settled. */
  get unsettled(): number {
    return this.calls.filter((c) => c.outcome === undefined).length;
  }

  /** When the first call that succeeded after `t` (epoch ms) settled, if one has. */
  firstOkAfter(t: number): number | undefined {
    let first: number | undefined;
    for (const c of this.calls) {
      if (c.outcome?.kind === 'ok' && c.settledAt !== undefined && c.settledAt >= t && (first === undefined || c.settledAt < first)) first = c.settledAt;
    }
    return first;
  }

  /** Resolves once `n` more calls have succeeded. */
  async waitForOk(n: number, timeoutMs = 60_000): Promise<void> {
    const target = this.okCount() + n;
    const deadline = Date.now() + timeoutMs;
    while (this.okCount() < target) {
      if (Date.now() > deadline) throw new Error(`load: ${n} calls did not succeed within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  private okCount(): number {
    let n = 0;
    for (const c of this.calls) if (c.outcome?.kind === 'ok') n++;
    return n;
  }

  private async caller(client: UserOpsClient, id: number): Promise<void> {
    while (this.running) {
      const nickname = `${this.tag}-${id}-${this.seq++}`;
      // create, update, get, then delete one user in four: stop at the first call that fails.
      const steps: (() => Promise<boolean>)[] = [
        () => this.call({ op: 'create', nickname, fullName: 'Chaos One' }, () => client.createUser({ nickname, fullName: 'Chaos One', email: `${nickname}@example.com` })),
        () => this.call({ op: 'update', nickname, fullName: 'Chaos Two' }, () => client.updateUser(nickname, { fullName: 'Chaos Two' })),
        () => this.call({ op: 'get', nickname }, () => client.getUser(nickname)),
      ];
      if (this.seq % 4 === 0) steps.push(() => this.call({ op: 'delete', nickname }, () => client.deleteUser(nickname)));
      for (const step of steps) {
        if (!this.running || !(await step())) break;
        if (this.pauseMs > 0) await new Promise((r) => setTimeout(r, this.pauseMs));
      }
    }
  }

  private async call(record: Omit<CallRecord, 'sentAt'>, run: () => Promise<unknown>): Promise<boolean> {
    const call: CallRecord = { ...record, sentAt: Date.now() };
    this.calls.push(call);
    try {
      call.outcome = { kind: 'ok', value: await run() };
    } catch (err) {
      call.outcome = classify(err);
    }
    call.settledAt = Date.now();
    return call.outcome.kind === 'ok';
  }
}
