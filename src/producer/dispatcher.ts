/**
 * Turns calls into jobs and job outcomes back into settled promises.
 *
 * Calls wait in an outbox. A job is sent at once when the client has room in its window of jobs
 * in flight, so an idle client adds no latency; while earlier jobs are in flight, calls that
 * arrive meanwhile are coalesced into the next job (up to the op and byte caps). Jobs are added
 * one after another on one connection, so the queue holds them, and the single consumer applies
 * them, in the order the calls were made.
 *
 * Every job id is generated here and the job is registered in `inFlight` before it is added, so a
 * reply can never arrive for a job nobody is waiting on.
 */
import { randomUUID } from 'node:crypto';

import type { Logger } from 'pino';

import {
  ClientClosedError,
  ConfigError,
  fromWireError,
  JobFailedError,
  type JobPayload,
  listRows,
  MAX_LIST_ROWS_PER_JOB,
  OpTimeoutError,
  OverloadedError,
  parseResults,
  PROTOCOL_VERSION,
  RedisUnavailableError,
  type UserOpsError,
  type WireOp,
} from '../protocol/index.js';
import { settleWithin } from '../redis.js';

/** One call waiting for its result. */
interface PendingCall {
  wire: WireOp;
  bytes: number;
  /** Rows it may return (list ops), budgeted per job. */
  rows: number;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
  jobId?: string;
  settled: boolean;
}

/** A job added (or being added) to the queue, and the calls it carries. */
interface InFlightJob {
  calls: PendingCall[];
  /** When it was sent, for reconciling jobs whose replies may have been missed. */
  since: number;
  /** Its add failed after it may have reached Redis. */
  uncertain: boolean;
  /** The newest job of this client whose outcome had arrived when this one was sent. */
  after: string | undefined;
}

/** A job in flight for a while, as reconciling needs it. */
export interface StaleJob {
  id: string;
  /** Its add failed after it may have reached Redis. */
  uncertain: boolean;
  /** When it was sent (epoch ms, this process's clock). */
  since: number;
  /**
   * The newest job of this client whose outcome had arrived when this one was sent: it finished
   * before this one was even added, so the consumer would finish this one after it.
   */
  after: string | undefined;
}

/**
 * Sends one job. Rejects with `RedisUnavailableError` when the job certainly was not enqueued;
 * any other rejection means it may have been, and its calls stay in flight.
 */
export type SendJob = (jobId: string, payload: JobPayload) => Promise<void>;

/** Limits of the dispatcher; see `ClientOptions`. */
export interface DispatchLimits {
  timeoutMs: number;
  maxBatchOps: number;
  maxBatchBytes: number;
  maxInFlightJobs: number;
  maxPendingCalls: number;
}

/** The outbox, the in-flight job map and the rules that connect them. */
export class Dispatcher {
  private readonly outbox: PendingCall[] = [];
  private readonly inFlight = new Map<string, InFlightJob>();
  private readonly withdrawals = new Map<string, Promise<boolean>>();
  /** Calls submitted and not yet settled; bounded by `maxPendingCalls`. */
  private pending = 0;
  private sending = false;
  private pumpScheduled = false;
  private closed = false;
  /** The job whose outcome arrived last; see `StaleJob.after`. */
  private lastFinished: string | undefined;

  /**
   * @param send - adds a job to the queue
   * @param withdraw - takes a job back if it has not started; resolves true if it will never run
   */
  constructor(
    private readonly limits: DispatchLimits,
    private readonly send: SendJob,
    private readonly withdraw: (jobId: string) => Promise<boolean>,
    private readonly log: Logger,
  ) {}

  /** Calls not yet settled, queued or in flight. */
  get pendingCount(): number {
    return this.pending;
  }

  /** Queues one validated op; the promise settles with its result or a typed error. */
  submit(wire: WireOp): Promise<unknown> {
    if (this.closed) return Promise.reject(new ClientClosedError());
    // Memory stays bounded however fast callers submit: past the limit, fail fast and say so.
    if (this.pending >= this.limits.maxPendingCalls) return Promise.reject(new OverloadedError(this.limits.maxPendingCalls));
    this.pending++;
    return new Promise((resolve, reject) => {
      const call: PendingCall = {
        wire,
        bytes: Buffer.byteLength(JSON.stringify(wire)),
        rows: listRows(wire),
        resolve,
        reject,
        settled: false,
        timer: setTimeout(() => this.timeOut(call), this.limits.timeoutMs),
      };
      this.outbox.push(call);
      this.schedulePump();
    });
  }

  /**
   * Pumps once the calls made in this turn of the event loop are all in: a reply
   * resolves many callers at once, and their next calls then travel as one job. setImmediate is
   * no timer: it runs as soon as the current I/O callbacks are done, microseconds later.
   */
  private schedulePump(): void {
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  private pump(): void {
    if (this.sending || this.closed || this.inFlight.size >= this.limits.maxInFlightJobs) return;
    const calls = this.takeBatch();
    if (calls.length === 0) return;
    const jobId = randomUUID();
    for (const call of calls) call.jobId = jobId;
    const job: InFlightJob = { calls, since: Date.now(), uncertain: false, after: this.lastFinished };
    this.inFlight.set(jobId, job);
    this.sending = true;
    const payload: JobPayload = { v: PROTOCOL_VERSION, ops: calls.map((c) => c.wire) };
    this.send(jobId, payload)
      .catch((err: unknown) => {
        if (!(err instanceof RedisUnavailableError || err instanceof ConfigError)) {
          // Maybe enqueued: its outcome may still arrive (event or reconcile), and reconciling
          // finds out if it never arrived. Failing it now could make a caller retry an applied op.
          this.log.warn({ jobId, err }, 'adding a job failed after it may have reached Redis');
          job.uncertain = true;
          return;
        }
        // Not enqueued, and Redis is unreachable (or refuses the URL's database): every call
        // waiting to be sent fails with it now, instead of each waiting its turn to learn the same.
        this.finish(jobId);
        for (const call of [...calls, ...this.outbox.splice(0)]) this.settle(call, err);
      })
      .finally(() => {
        this.sending = false;
        this.pump();
      });
  }

  private takeBatch(): PendingCall[] {
    const batch: PendingCall[] = [];
    let bytes = 0;
    let rows = 0;
    while (this.outbox.length > 0 && batch.length < this.limits.maxBatchOps) {
      const next = this.outbox[0] as PendingCall;
      if (next.settled) {
        this.outbox.shift();
        continue;
      }
      if (batch.length > 0 && bytes + next.bytes > this.limits.maxBatchBytes) break;
      // The consumer refuses a job whose list ops ask for too many rows together.
      if (batch.length > 0 && rows + next.rows > MAX_LIST_ROWS_PER_JOB) break;
      batch.push(next);
      bytes += next.bytes;
      rows += next.rows;
      this.outbox.shift();
    }
    return batch;
  }

  /** A job completed: hand each call its own result. (`Outcomes` for the link.) */
  completed(jobId: string, returnValue: unknown): void {
    const calls = this.finish(jobId);
    if (!calls) return;
    this.lastFinished = jobId;
    const results = parseResults(returnValue, calls.length);
    if (!results) {
      const err = new JobFailedError(jobId, 'the consumer returned a value that is not a userops result list');
      for (const call of calls) this.settle(call, err);
      return;
    }
    calls.forEach((call, i) => {
      const result = results[i];
      if (result?.ok) this.settle(call, undefined, result.value);
      else if (result) this.settle(call, fromWireError(result.error));
    });
  }

  /** A job failed for good (malformed, or attempts exhausted): every call in it fails. */
  failed(jobId: string, reason: string): void {
    const calls = this.finish(jobId);
    if (!calls) return;
    this.lastFinished = jobId;
    const err = new JobFailedError(jobId, reason);
    for (const call of calls) this.settle(call, err);
  }

  /** A job that was being added when the connection failed never reached Redis: nothing ran. */
  lost(jobId: string, err: RedisUnavailableError | ConfigError): void {
    for (const call of this.finish(jobId) ?? []) this.settle(call, err);
  }

  /** Jobs in flight for longer than `ms`: candidates for reconciling after missed replies. */
  jobsOlderThan(ms: number): StaleJob[] {
    const before = Date.now() - ms;
    return [...this.inFlight].filter(([, job]) => job.since < before).map(([id, { uncertain, since, after }]) => ({ id, uncertain, since, after }));
  }

  private finish(jobId: string): PendingCall[] | undefined {
    const job = this.inFlight.get(jobId);
    if (!job) return undefined;
    this.inFlight.delete(jobId);
    queueMicrotask(() => this.pump());
    return job.calls;
  }

  private timeOut(call: PendingCall): void {
    if (call.settled) return;
    const { jobId } = call;
    const timeout = (applied: false | 'unknown') => new OpTimeoutError(this.limits.timeoutMs, jobId, applied);
    // Still in the outbox: never sent, so certainly not applied.
    if (jobId === undefined) return this.settle(call, timeout(false));
    // Sent: take the job back if no consumer has started it. Its other calls were made within
    // moments of this one, so they end with it, all certain their ops were never applied.
    // Meanwhile a result that arrives still settles the call with it.
    this.withdrawOnce(jobId).then(
      (withdrawn) => {
        if (withdrawn) {
          for (const c of this.finish(jobId) ?? []) this.settle(c, timeout(false));
          return;
        }
        this.settle(call, timeout('unknown'));
        // Stop counting a job against the window once nobody waits on it.
        if (this.inFlight.get(jobId)?.calls.every((c) => c.settled)) this.finish(jobId);
      },
      () => this.settle(call, timeout('unknown')),
    );
  }

  /** Withdraws a job, one attempt per job shared by all who ask: a second LREM would find it gone and say "unknown". */
  private withdrawOnce(jobId: string): Promise<boolean> {
    let withdrawal = this.withdrawals.get(jobId);
    if (!withdrawal) {
      withdrawal = this.withdraw(jobId);
      this.withdrawals.set(jobId, withdrawal);
      void withdrawal.finally(() => this.withdrawals.delete(jobId)).catch(() => undefined);
    }
    return withdrawal;
  }

  private settle(call: PendingCall, err: UserOpsError | Error | undefined, value?: unknown): void {
    if (call.settled) return;
    call.settled = true;
    this.pending--;
    clearTimeout(call.timer);
    if (err) call.reject(err);
    else call.resolve(value);
  }

  /**
   * Refuses new calls and ends every unsettled one with `ClientClosedError`, saying whether its op
   * can still run. Calls never sent end at once, `applied: false`. Jobs already sent are withdrawn
   * where no consumer has taken them (`applied: false`: they will never run); the others end with
   * `applied: 'unknown'`, since a consumer may still apply them. A result that arrives meanwhile
   * settles its calls as usual.
   * @param withinMs - how long the withdrawals may take (Redis may be slow or gone)
   */
  async close(withinMs: number): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const unsent = this.outbox.splice(0);
    for (const call of unsent) this.settle(call, new ClientClosedError());
    const sent = [...this.inFlight.keys()];
    const withdrawn = new Set<string>();
    const withdrawing = sent.map((jobId) => this.withdrawOnce(jobId).then((ok) => ok && withdrawn.add(jobId), () => undefined));
    await settleWithin(Promise.all(withdrawing), withinMs);
    let stranded = unsent.length;
    for (const jobId of sent) {
      const calls = this.finish(jobId) ?? [];
      stranded += calls.length;
      for (const call of calls) this.settle(call, new ClientClosedError(jobId, withdrawn.has(jobId) ? false : 'unknown'));
    }
    if (stranded > 0) this.log.debug({ calls: stranded }, 'client closed with calls pending');
  }
}
