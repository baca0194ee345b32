/**
 * Group commit: take every job waiting (up to a cap of ops), apply them all in one SQLite
 * transaction, acknowledge each.
 *
 * A commit costs an fsync (milliseconds on real disks); one fsync per job caps throughput at a few
 * hundred jobs a second however small the jobs are. Taking what is waiting keeps one fsync per
 * group instead, and costs an idle system nothing: a lone job is a group of one. Jobs are taken
 * with BullMQ's manual API (getNextJob / moveToCompleted) under the consumer's lock token.
 */
import { setTimeout as sleep } from 'node:timers/promises';

import { type Job, UnrecoverableError, type Worker } from 'bullmq';
import type { Logger } from 'pino';

import { coerceError, type JobResults, parseEnvelope, replyIdOf, stringBytesPast } from '../protocol/index.js';
import { UnreadableJobData } from '../unreadable-jobs.js';
import { type Applied, applyJobs } from './apply.js';
import type { ConsumerMetrics } from './metrics.js';
import type { ResolvedConsumerOptions } from './options.js';
import type { Addressed, ReplySender } from './replies.js';
import { isTransientSqliteError, sqliteCode } from './sqlite-errors.js';
import type { Store } from './store.js';

/** Backoff between in-place retries: from 100 ms, doubling, at most 2 s. */
export function backoffMs(attempt: number): number {
  return Math.min(100 * 2 ** attempt, 2000);
}

/** Jobs fetched per round trip while gathering a group. */
const FETCH_ROUND = 16;

type UJob = Job<unknown, JobResults>;
type ValidJob = { job: UJob; ops: unknown[]; reply?: string | undefined; opsJson: string };

/** Ops in validated jobs. */
function countOps(valid: readonly ValidJob[]): number {
  let n = 0;
  for (const v of valid) n += v.ops.length;
  return n;
}

/** Ops in a job's data, for sizing a group before it is validated. */
function opCount(data: unknown): number {
  const ops = (data as { ops?: unknown } | null)?.ops;
  return Array.isArray(ops) ? ops.length : 1;
}

/** Takes, commits and acknowledges groups of jobs for one consumer. */
export class GroupCommitter {
  /**
   * Jobs in the last group taken (0 before the first); sizes the first fetch round of the next.
   * After a group of one the consumer is taken to be idle.
   */
  private lastGroupJobs = 0;
  /** A fetch round run while a lone job commits; its jobs start the next group. */
  private prefetched: Promise<UJob[]> | undefined;
  /**
   * Why commits are failing while a group is retried in place (a full or read-only disk), for
   * readiness; cleared by the next commit that succeeds.
   */
  storageProblem: string | undefined;
  /** Acknowledgements still on their way to Redis. */
  private readonly acking = new Set<Promise<void>>();

  /**
   * @param token - the consumer's lock token, owner of every job taken
   * @param stopping - aborted when the consumer closes: retries stop and hand their jobs back
   * @param isWriter - whether this consumer still holds the writer lease
   * @param metrics - told of every group and job committed or rejected
   * @param replies - sends each job's outcome to the client that sent it
   */
  constructor(
    private readonly store: Store,
    private readonly token: string,
    private readonly options: ResolvedConsumerOptions,
    private readonly log: Logger,
    private readonly stopping: AbortSignal,
    private readonly isWriter: () => boolean,
    private readonly metrics: ConsumerMetrics,
    private readonly replies: ReplySender,
  ) {}

  /** Resolves when every acknowledgement sent so far has settled. */
  acknowledged(): Promise<unknown> {
    return Promise.all(this.acking);
  }

  /**
   * Blocks for one job, then takes whatever else is waiting, up to the per-commit op cap. A job
   * that arrives at an idle consumer is returned alone at once: the round trip that looks for more
   * runs while it commits (its fsync), and what it finds starts the next group.
   */
  async take(worker: Worker<unknown, JobResults>): Promise<UJob[]> {
    const group = await this.takePrefetched();
    if (group.length === 0) {
      let first: UJob | undefined;
      try {
        first = await worker.getNextJob(this.token, { block: true });
      } catch (err) {
        if (!(err instanceof SyntaxError)) throw err;
        this.skippedUnreadable(err);
      }
      if (!first) return [];
      group.push(first);
      if (this.oversized(first)) return this.taken(group);
      if (this.lastGroupJobs === 1) {
        this.prefetched = this.fetchRound(worker, 1);
        // Awaited only at the next take, or after a retry's backoff: a failure before then must not
        // count as an unhandled rejection, which would end the daemon. prefetchedJobs() reports it.
        this.prefetched.catch(() => undefined);
        return group;
      }
    }
    let ops = 0;
    for (const job of group) ops += opCount(job.data);
    // Several fetches at once, one round trip for all: they run in order in Redis and resolve in
    // that order, so the group keeps queue order. A round that comes back short means drained.
    // Each empty fetch costs ~0.15 ms, so rounds start at the size of the last group and double
    // while they come back full.
    for (let round = Math.min(Math.max(this.lastGroupJobs, 1), FETCH_ROUND); ops < this.options.maxOpsPerCommit; round = Math.min(round * 2, FETCH_ROUND)) {
      const jobs = await this.fetchRound(worker, round);
      let oversized = false;
      for (const job of jobs) {
        group.push(job);
        ops += opCount(job.data);
        oversized ||= this.oversized(job);
      }
      if (jobs.length < round || oversized) break;
    }
    return this.taken(group);
  }

  private taken(group: UJob[]): UJob[] {
    this.lastGroupJobs = group.length;
    return group;
  }

  /**
   * Whether a job is past the byte limit, so the group stops growing: BullMQ reads each job whole
   * before it can be refused, and doubling rounds of jobs of hundreds of megabytes filled the heap.
   * Such a group is committed (the big job refused) and the next starts from its small size.
   */
  private oversized(job: UJob): boolean {
    return stringBytesPast(job.data, this.options.maxJobBytes) !== undefined;
  }

  /** Up to `n` waiting jobs, in queue order, in one round trip. */
  private async fetchRound(worker: Worker<unknown, JobResults>, n: number): Promise<UJob[]> {
    const fetched = await Promise.allSettled(Array.from({ length: n }, () => worker.getNextJob(this.token, { block: false })));
    const jobs: UJob[] = [];
    for (const f of fetched) {
      if (f.status === 'fulfilled') {
        if (f.value) jobs.push(f.value);
      } else if (f.reason instanceof SyntaxError) {
        // The jobs fetched beside an unreadable one must not be lost with it.
        this.skippedUnreadable(f.reason);
      } else {
        // Redis failed mid-round: the jobs it did hand over are locked to this consumer and are applied.
        this.log.warn({ err: coerceError(f.reason) }, 'a fetch failed');
      }
    }
    return jobs;
  }

  /**
   * A job whose stored options BullMQ cannot parse (written into Redis by hand, not through a
   * Queue) has no id to fail it by: it is left active, stalls, and comes back, each time with this
   * warning. (Data that is not JSON is read as an UnreadableJobData and failed.)
   */
  private skippedUnreadable(err: SyntaxError): void {
    this.log.warn({ err }, 'skipped a job whose stored options are not JSON; BullMQ cannot read it');
  }

  /** Jobs a prefetch took (they are locked to this consumer), or none; they are the caller's now. */
  private async takePrefetched(): Promise<UJob[]> {
    const jobs = await this.prefetchedJobs();
    this.prefetched = undefined;
    return jobs;
  }

  /** Jobs a prefetch took, left in place. */
  private async prefetchedJobs(): Promise<UJob[]> {
    try {
      return (await this.prefetched) ?? [];
    } catch (err) {
      // Any job it took stays locked to this consumer until its lock expires, then is re-delivered.
      this.log.warn({ err: coerceError(err) }, 'looking for more jobs failed');
      this.prefetched = undefined;
      return [];
    }
  }

  /** Hands back jobs a prefetch took: for a consumer that closes or stands by. */
  async release(): Promise<void> {
    await this.handBack([], undefined);
  }

  async commit(group: UJob[], takeMs: number): Promise<void> {
    if (!this.isWriter()) {
      // The lease lapsed while the group was gathered (a frozen process, a slow Redis): another
      // consumer may be the writer now. Commit nothing; hand the jobs back in their order.
      await this.handBack(group, undefined);
      return;
    }
    const started = performance.now();
    const acks: Promise<unknown>[] = [];
    const replies: Addressed[] = [];
    const valid: ValidJob[] = [];
    for (const job of group) {
      if (job.deferredFailure) {
        // BullMQ has failed it and asks the worker to record that: a flow child that had to
        // succeed failed, or it stalled more often than allowed. It must not be applied now.
        this.log.warn({ jobId: job.id, reason: job.deferredFailure }, 'job failed by BullMQ before it was applied; failing it');
        this.metrics.jobRejected('failed');
        this.fail(job, new UnrecoverableError(job.deferredFailure), replyIdOf(job.data), acks, replies);
        continue;
      }
      try {
        if (job.data instanceof UnreadableJobData) throw new Error(job.data.reason);
        valid.push({ job, ...parseEnvelope(job.data, this.options.maxOpsPerJob, this.options.maxJobBytes) });
      } catch (err) {
        // Not a batch at all: retrying cannot help. Fail it now, with the reason, and move on.
        const reason = coerceError(err).message;
        this.log.warn({ jobId: job.id, reason }, 'malformed job rejected');
        this.metrics.jobRejected('malformed');
        // Its sender, if it named a valid reply id, hears at once rather than when it looks the job up.
        this.fail(job, new UnrecoverableError(reason), replyIdOf(job.data), acks, replies);
      }
    }
    const applyStarted = performance.now();
    const applied = valid.length > 0 ? await this.applyGroup(valid) : [];
    const committedAt = Date.now();
    const applyMs = performance.now() - applyStarted;
    const ms = Number((performance.now() - started).toFixed(3));
    if (applied.length > 0) this.metrics.groupCommitted(group.length, countOps(valid), applyMs / 1000);
    // Per-job fields cost a pass over every result; build them only when someone reads them.
    const debug = this.log.isLevelEnabled('debug');
    const completions: (() => Promise<unknown>)[] = [];
    applied.forEach(({ job, ops, reply, outcome }) => {
      if (outcome instanceof Error) {
        this.log.error({ jobId: job.id, err: outcome }, 'job failed to apply');
        this.metrics.jobRejected('failed');
        this.fail(job, outcome, reply, acks, replies);
        return;
      }
      const { results, resultsJson, replayed, reusedId, internalErrors } = outcome;
      this.metrics.jobCommitted(ops, results, replayed, job.timestamp, committedAt);
      if (reusedId) this.log.warn({ jobId: job.id }, 'job id seen before with another payload (did Redis lose data?); applied as a new job');
      for (const { op, err } of internalErrors ?? []) this.log.error({ jobId: job.id, op, err: coerceError(err) }, 'op failed with an internal error; answered INTERNAL, its neighbours applied');
      if (debug) this.log.debug({ jobId: job.id, ops: results.length, failed: results.filter((r) => !r.ok).length, replayed, groupJobs: group.length, ms }, replayed ? 'job replayed from ledger' : 'job applied');
      completions.push(() => this.acked(job, job.moveToCompleted({ results }, this.token, false)));
      // The return value as BullMQ would write it, from the JSON already made for the ledger.
      if (reply) replies.push({ replyId: reply, reply: { jobId: job.id as string, returnvalue: `{"results":${resultsJson}}` } });
    });
    // Replies go first, ahead of the acknowledgements: the group is durable, so its callers may hear now.
    if (replies.length > 0) {
      acks.push(
        this.replies.send(replies).catch((err: unknown) => {
          this.log.warn({ err: coerceError(err), replies: replies.length }, 'could not send replies; their clients will read the outcomes from the jobs');
        }),
      );
    }
    for (const complete of completions) acks.push(complete());
    if (debug) this.log.debug({ jobs: group.length, takeMs: Number(takeMs.toFixed(3)), applyMs: ms }, 'group committed');
    // The group is durable: the next one can be taken while these acknowledgements travel.
    const acking = Promise.allSettled(acks).then(() => {
      this.acking.delete(acking);
    });
    this.acking.add(acking);
  }

  /** Moves a job to the failed set for `err`, and tells its sender, if it named a reply stream. */
  private fail(job: UJob, err: Error, replyId: string | undefined, acks: Promise<unknown>[], replies: Addressed[]): void {
    acks.push(this.acked(job, job.moveToFailed(err, this.token, false)));
    if (replyId) replies.push({ replyId, reply: { jobId: job.id as string, failed: err.message } });
  }

  /** An acknowledgement that, if Redis refuses it, says so naming the job; it never rejects. */
  private acked(job: UJob, ack: Promise<unknown>): Promise<void> {
    return ack.then(
      () => undefined,
      (err: unknown) => {
        const e = coerceError(err);
        if (e.message.startsWith('Missing key for job')) {
          // Nothing to re-deliver, and the stack says nothing more: Redis no longer holds the job.
          this.log.warn({ jobId: job.id, reason: e.message }, 'a job was gone from Redis before its outcome could be recorded there (did Redis restart without its data?)');
          return;
        }
        // Usually the job stays active and is re-delivered, then answered from the ledger; BullMQ
        // may also have moved it and failed only in its clean-up (a bad removeOnComplete option).
        this.log.warn({ err: e, jobId: job.id }, 'could not acknowledge a job; unless Redis recorded it anyway, it will be re-delivered');
      },
    );
  }

  /**
   * Commits the group in one transaction, retrying in place while storage errors are transient
   * (the jobs keep their place and their locks). If the group cannot commit for any other reason,
   * each job is tried alone so one bad job cannot hold up the rest.
   */
  private async applyGroup(valid: ValidJob[]): Promise<(ValidJob & { outcome: Applied | Error })[]> {
    const jobs = valid.map(({ job, ops, opsJson }) => ({ id: job.id as string, ops, opsJson }));
    for (let attempt = 0; ; attempt++) {
      try {
        const outcomes = applyJobs(this.store, jobs).map((outcome, i) => ({ ...(valid[i] as ValidJob), outcome }));
        this.storageProblem = undefined;
        return outcomes;
      } catch (err) {
        if (!isTransientSqliteError(err)) {
          if (valid.length === 1) return [{ ...(valid[0] as ValidJob), outcome: coerceError(err) }];
          this.log.warn({ err }, 'group failed to commit; applying its jobs one by one');
          // One after another: a job retrying in place must not be overtaken by the next.
          const outcomes = [];
          for (const v of valid) outcomes.push(...(await this.applyGroup([v])));
          return outcomes;
        }
        if (this.stopping.aborted) {
          await this.handBack(valid.map((v) => v.job), sqliteCode(err));
          return [];
        }
        const delay = backoffMs(attempt);
        this.storageProblem = `commits failing, retrying in place: ${coerceError(err).message} (${sqliteCode(err)})`;
        this.log.warn({ err, code: sqliteCode(err), attempt, jobs: valid.length, retryInMs: delay }, 'storage error; retrying in place');
        await sleep(delay, undefined, { signal: this.stopping }).catch(() => undefined);
        // Manually taken jobs get no automatic lock renewal: renew before every attempt, so a long
        // outage does not make them look stalled (busyTimeoutMs + the 2 s backoff cap < lockDurationMs).
        // Jobs a prefetch took wait behind this group, so theirs too.
        const held = [...valid.map((v) => v.job), ...(await this.prefetchedJobs())];
        await Promise.allSettled(held.map((job) => job.extendLock(this.token, this.options.lockDurationMs)));
      }
    }
  }

  /** Returns uncommitted jobs to the head of the queue in their order, for the next consumer. */
  private async handBack(uncommitted: UJob[], code: string | undefined): Promise<void> {
    // Jobs a prefetch took come after these in the queue: they go back behind them, in one pass.
    const jobs = [...uncommitted, ...(await this.takePrefetched())];
    if (jobs.length === 0) return;
    this.log.warn({ code, jobs: jobs.length }, 'jobs returned to the head of the queue, uncommitted');
    // Each moveToWait pushes to the head, so the last job goes first to keep the first in front.
    for (const job of [...jobs].reverse()) {
      await job.moveToWait(this.token).catch((err: unknown) => this.log.warn({ err, jobId: job.id }, 'could not return job; it will be re-delivered when its lock expires'));
    }
  }
}
