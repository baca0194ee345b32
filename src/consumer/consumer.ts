/**
 * The single-writer consumer: one loop takes jobs from the queue in order and applies them to
 * SQLite, committing every job that is waiting at that moment in one transaction (group commit).
 *
 * A commit costs an fsync (milliseconds on real disks); one fsync per job caps throughput at a few
 * hundred jobs a second however small the jobs are. Taking what is waiting, up to a cap of ops,
 * keeps one fsync per group instead, and costs an idle system nothing: a lone job is a group of one.
 * BullMQ's Worker is used in manual mode (getNextJob / moveToCompleted) for this.
 */
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';

import { type Job, UnrecoverableError, Worker } from 'bullmq';
import type { Redis } from 'ioredis';
import { type Logger, pino } from 'pino';

import { coerceError, ConfigError, type JobResults, parseEnvelope, RedisUnavailableError } from '../protocol/index.js';
import { RedisConnections, redactUrl, settleWithin } from '../redis.js';
import { type Applied, applyJobs } from './apply.js';
import { type ConsumerOptions, type ResolvedConsumerOptions, resolveConsumerOptions } from './options.js';
import { isTransientSqliteError, sqliteCode } from './sqlite-errors.js';
import { Store } from './store.js';
import { WriterLease, type WriterRole } from './writer-lease.js';

/** Completed jobs stay readable this long, so a client that missed the event can still look. */
const KEEP_COMPLETED = { age: 3600, count: 10_000 };
/** Failed jobs stay for an operator to inspect and retry. */
const KEEP_FAILED = { age: 7 * 24 * 3600, count: 10_000 };
/** Backoff between in-place retries of a transient storage error. */
const RETRY_MIN_MS = 100;
const RETRY_MAX_MS = 2000;
/** How long `close()` waits for the group in hand; inside the CLI's 9 s shutdown deadline. */
const DRAIN_DEADLINE_MS = 7000;

/** How often a standby checks whether it has become the writer. */
const STANDBY_POLL_MS = 100;

/** Jobs fetched per round trip while gathering a group. */
const FETCH_ROUND = 16;

type ValidJob = { job: Job<unknown, JobResults>; ops: unknown[] };

/** Ops in a job's data, for sizing a group before it is validated. */
function opCount(data: unknown): number {
  const ops = (data as { ops?: unknown } | null)?.ops;
  return Array.isArray(ops) ? ops.length : 1;
}

type State = 'new' | 'starting' | 'running' | 'closing' | 'closed';

/**
 * Applies the queue's jobs to one SQLite database. `start()` and `close()` are idempotent; signal
 * handling belongs to the program that owns the process (the CLI), not here.
 */
export class UserOpsConsumer {
  private readonly options: ResolvedConsumerOptions;
  private readonly log: Logger;
  private state: State = 'new';
  private store?: Store;
  private redis?: RedisConnections;
  private connection?: Redis;
  private worker?: Worker<unknown, JobResults>;
  /** The lock owner of every job this consumer takes. */
  private readonly token = randomUUID();
  private loopDone?: Promise<void>;
  /** The group being committed, which `close()` lets finish. */
  private inHand?: Promise<void>;
  private lease?: WriterLease;
  /** Jobs in the last group taken; sizes the first fetch round of the next. */
  private lastGroupJobs = 1;
  /** Acknowledgements still on their way to Redis; `close()` waits for these too. */
  private readonly acking = new Set<Promise<void>>();
  private pruneTimer?: NodeJS.Timeout;
  private starting?: Promise<void>;
  private closing?: Promise<void>;
  /** Aborts in-place retry sleeps when the consumer closes. */
  private readonly stopping = new AbortController();

  /** @param options - validated here; throws `ConfigError` naming the bad option */
  constructor(options: ConsumerOptions) {
    this.options = resolveConsumerOptions(options);
    this.log = (this.options.logger ?? pino({ level: 'silent' })).child({ component: 'consumer' });
  }

  /** `writer` while this consumer holds the queue's writer lease, else `standby`. */
  get role(): WriterRole {
    return this.lease?.held() ? 'writer' : 'standby';
  }

  /** The store, once started; for admin commands and tests in the same process. */
  get database(): Store | undefined {
    return this.store;
  }

  /** Opens SQLite, connects to Redis and starts taking jobs. Resolves when the worker is ready. */
  start(): Promise<void> {
    this.starting ??= this.doStart();
    return this.starting;
  }

  private async doStart(): Promise<void> {
    const o = this.options;
    this.state = 'starting';
    this.store = new Store(o.dbPath, o.busyTimeoutMs);
    this.log.info(
      {
        redis: redactUrl(o.redisUrl),
        queue: o.queue,
        db: o.dbPath,
        maxOpsPerJob: o.maxOpsPerJob,
        maxJobBytes: o.maxJobBytes,
        lockDurationMs: o.lockDurationMs,
        ledgerRetentionMs: o.ledgerRetentionMs,
      },
      'consumer starting',
    );
    this.redis = new RedisConnections(o.redisUrl, this.log);
    this.connection = this.redis.open('blocking');
    // No processor: jobs are taken by `loop()` below, a group at a time.
    const worker = new Worker<unknown, JobResults>(o.queue, null, {
      connection: this.connection,
      concurrency: 1,
      autorun: false,
      // Seconds a blocking fetch waits for a job; bounds how long an idle consumer takes to stop.
      drainDelay: 1,
      lockDuration: o.lockDurationMs,
      stalledInterval: Math.max(1000, Math.floor(o.lockDurationMs / 2)),
      // A job re-delivered after a crash is answered from the ledger, so letting it stall more than
      // once is safe; failing it instead would lose an op that may be half-way to its caller.
      maxStalledCount: 10,
      removeOnComplete: KEEP_COMPLETED,
      removeOnFail: KEEP_FAILED,
    });
    this.worker = worker;
    worker.on('error', (err) => this.log.error({ err }, 'worker error'));
    worker.on('stalled', (jobId) => this.log.warn({ jobId }, 'job stalled; it will be re-delivered'));
    await this.waitForRedis(worker);
    if (this.state !== 'starting') return; // closed while starting
    await this.checkDatabaseIdentity(this.connection, this.store);
    this.lease = new WriterLease(this.connection, `bull:${o.queue}:userops:writer`, this.token, o.writerLeaseMs, this.log, (role) =>
      role === 'writer'
        ? this.log.info('writer role taken: applying jobs')
        : this.log.warn('another consumer is the writer: standing by, ready to take over'),
    );
    await this.lease.start();
    void worker.startStalledCheckTimer().catch((err: unknown) => this.log.error({ err }, 'stalled-job checker stopped'));
    this.loopDone = this.loop(worker);
    this.pruneTimer = setInterval(() => this.pruneLedger(), o.ledgerPruneIntervalMs);
    // Not at start: a job left active by a crash is re-delivered in the first seconds, and its
    // ledger row must still be there however long the consumer was down.
    this.pruneTimer.unref();
    this.state = 'running';
    this.log.info('consumer ready');
  }

  private async waitForRedis(worker: Worker): Promise<void> {
    const { startTimeoutMs, redisUrl } = this.options;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new RedisUnavailableError(redactUrl(redisUrl))), startTimeoutMs);
    });
    try {
      await Promise.race([worker.waitUntilReady(), timeout]);
    } catch (err) {
      await this.close();
      throw err instanceof RedisUnavailableError ? err : new RedisUnavailableError(redactUrl(redisUrl), err);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Refuses to serve a queue that was served from another database file: two files written from
   * one queue would each hold half of the users.
   */
  private async checkDatabaseIdentity(redis: Redis, store: Store): Promise<void> {
    const key = `bull:${this.options.queue}:userops:db`;
    const mine = store.dbId;
    if ((await redis.set(key, mine, 'NX')) === 'OK') return;
    const theirs = await redis.get(key);
    if (theirs === mine) return;
    await this.close();
    throw new ConfigError(
      [{ path: 'USEROPS_DB', message: `database ${mine} is not the queue's database ${String(theirs)}` }],
      `Queue ${this.options.queue} is served from database ${String(theirs)}, but ${this.options.dbPath} is database ${mine}. ` +
        `Point USEROPS_DB at that database (or a backup of it), or use another queue. If the old database is gone for good, ` +
        `delete the Redis key ${key} to serve the queue from this one.`,
    );
  }

  /** The single writer: take a group, commit it, acknowledge it; until closed. */
  private async loop(worker: Worker<unknown, JobResults>): Promise<void> {
    for (let failures = 0; !this.stopping.signal.aborted; ) {
      if (!this.lease?.held()) {
        // Standing by: take nothing while another consumer is the writer.
        await sleep(STANDBY_POLL_MS, undefined, { signal: this.stopping.signal }).catch(() => undefined);
        continue;
      }
      try {
        const waitStarted = performance.now();
        const group = await this.takeGroup(worker);
        // A group taken is committed even if close() began meanwhile: its jobs are locked to us.
        if (group.length > 0) {
          this.inHand = this.commitGroup(group, performance.now() - waitStarted);
          await this.inHand;
        }
        failures = 0;
      } catch (err) {
        if (this.stopping.signal.aborted) break;
        const delay = Math.min(RETRY_MIN_MS * 2 ** failures++, RETRY_MAX_MS);
        this.log.error({ err, retryInMs: delay }, 'consumer loop error; carrying on');
        await sleep(delay, undefined, { signal: this.stopping.signal }).catch(() => undefined);
      }
    }
  }

  /** Blocks for one job, then takes whatever else is waiting, up to the per-commit op cap. */
  private async takeGroup(worker: Worker<unknown, JobResults>): Promise<Job<unknown, JobResults>[]> {
    const first = await worker.getNextJob(this.token, { block: true });
    if (!first) return [];
    const group = [first];
    let ops = opCount(first.data);
    // Several fetches at once, one round trip for all: they run in order in Redis and resolve in
    // that order, so the group keeps queue order. A round that comes back short means drained.
    // Each empty fetch costs ~0.15 ms, so rounds start at the size of the last group (one job when
    // idle, keeping a lone call fast) and double while they come back full.
    for (let round = Math.min(this.lastGroupJobs, FETCH_ROUND); ops < this.options.maxOpsPerCommit; round = Math.min(round * 2, FETCH_ROUND)) {
      const fetched = await Promise.all(Array.from({ length: round }, () => worker.getNextJob(this.token, { block: false })));
      const jobs = fetched.filter((job) => job !== undefined);
      for (const job of jobs) {
        group.push(job);
        ops += opCount(job.data);
      }
      if (jobs.length < round) break;
    }
    this.lastGroupJobs = group.length;
    return group;
  }

  private async commitGroup(group: Job<unknown, JobResults>[], takeMs: number): Promise<void> {
    if (!this.lease?.held()) {
      // The lease lapsed while the group was gathered (a frozen process, a slow Redis): another
      // consumer may be the writer now. Commit nothing; hand the jobs back in their order.
      await this.handBack(group, undefined);
      return;
    }
    const started = performance.now();
    const acks: Promise<unknown>[] = [];
    const valid: ValidJob[] = [];
    for (const job of group) {
      try {
        valid.push({ job, ops: parseEnvelope(job.data, this.options.maxOpsPerJob, this.options.maxJobBytes).ops });
      } catch (err) {
        // Not a batch at all: retrying cannot help. Fail it now, with the reason, and move on.
        const reason = coerceError(err).message;
        this.log.warn({ jobId: job.id, reason }, 'malformed job rejected');
        acks.push(job.moveToFailed(new UnrecoverableError(reason), this.token, false));
      }
    }
    const applied = valid.length > 0 ? await this.applyGroup(valid) : [];
    const ms = Number((performance.now() - started).toFixed(3));
    applied.forEach(({ job, outcome }) => {
      if (outcome instanceof Error) {
        this.log.error({ jobId: job.id, err: outcome }, 'job failed to apply');
        acks.push(job.moveToFailed(outcome, this.token, false));
        return;
      }
      const { results, replayed, reusedId } = outcome;
      if (reusedId) this.log.warn({ jobId: job.id }, 'job id seen before with another payload (did Redis lose data?); applied as a new job');
      this.log.debug({ jobId: job.id, ops: results.length, failed: results.filter((r) => !r.ok).length, replayed, groupJobs: group.length, ms }, replayed ? 'job replayed from ledger' : 'job applied');
      acks.push(job.moveToCompleted({ results }, this.token, false));
    });
    this.log.debug({ jobs: group.length, takeMs: Number(takeMs.toFixed(3)), applyMs: ms }, 'group committed');
    // The group is durable: the next one can be taken while these acknowledgements travel.
    const acking = Promise.allSettled(acks).then((acked) => {
      this.acking.delete(acking);
      for (const ack of acked) {
        if (ack.status === 'rejected') {
          // Committed but not acknowledged: the job will be re-delivered and answered from the ledger.
          this.log.warn({ err: coerceError(ack.reason) }, 'could not acknowledge a job; it will be re-delivered');
        }
      }
    });
    this.acking.add(acking);
  }

  /**
   * Commits the group in one transaction, retrying in place while storage errors are transient
   * (the jobs keep their place and their locks). If the group cannot commit for any other reason,
   * each job is tried alone so one bad job cannot hold up the rest.
   */
  private async applyGroup(valid: ValidJob[]): Promise<{ job: ValidJob['job']; outcome: Applied | Error }[]> {
    const jobs = valid.map(({ job, ops }) => ({ id: job.id as string, ops }));
    for (let attempt = 0; ; attempt++) {
      try {
        return applyJobs(this.store as Store, jobs).map((outcome, i) => ({ job: (valid[i] as ValidJob).job, outcome }));
      } catch (err) {
        if (!isTransientSqliteError(err)) {
          if (valid.length === 1) return [{ job: (valid[0] as ValidJob).job, outcome: coerceError(err) }];
          this.log.warn({ err }, 'group failed to commit; applying its jobs one by one');
          // One after another: a job retrying in place must not be overtaken by the next.
          const outcomes = [];
          for (const v of valid) outcomes.push(...(await this.applyGroup([v])));
          return outcomes;
        }
        if (this.stopping.signal.aborted) {
          await this.handBack(valid.map((v) => v.job), sqliteCode(err));
          return [];
        }
        const delay = Math.min(RETRY_MIN_MS * 2 ** attempt, RETRY_MAX_MS);
        this.log.warn({ err, code: sqliteCode(err), attempt, jobs: valid.length, retryInMs: delay }, 'storage error; retrying in place');
        await sleep(delay, undefined, { signal: this.stopping.signal }).catch(() => undefined);
        // Manually taken jobs get no automatic lock renewal: renew before every attempt, so a long
        // outage does not make them look stalled (busyTimeoutMs + RETRY_MAX_MS < lockDurationMs).
        await Promise.allSettled(valid.map((v) => v.job.extendLock(this.token, this.options.lockDurationMs)));
      }
    }
  }

  /** Returns uncommitted jobs to the head of the queue in their order, for the next consumer. */
  private async handBack(jobs: Job<unknown, JobResults>[], code: string | undefined): Promise<void> {
    this.log.warn({ code, jobs: jobs.length }, 'jobs returned to the head of the queue, uncommitted');
    // Each moveToWait pushes to the head, so the last job goes first to keep the first in front.
    for (const job of [...jobs].reverse()) {
      await job.moveToWait(this.token).catch((err: unknown) => this.log.warn({ err, jobId: job.id }, 'could not return job; it will be re-delivered when its lock expires'));
    }
  }

  private pruneLedger(): void {
    if (!this.store?.db.open) return;
    try {
      const removed = this.store.pruneLedger(Date.now() - this.options.ledgerRetentionMs);
      if (removed > 0) this.log.info({ removed }, 'pruned old ledger rows');
    } catch (err) {
      this.log.warn({ err }, 'ledger prune failed; will try again');
    }
  }

  /**
   * Finishes the job in hand, stops the worker, closes SQLite and Redis. Safe to call twice and
   * while `start()` is still running; every step runs even if an earlier one throws.
   */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    this.state = 'closing';
    this.stopping.abort();
    clearInterval(this.pruneTimer);
    // With Redis up, let the group in hand commit and be acknowledged (reconnecting through a
    // blip if need be). With Redis down it cannot be acknowledged: stop at once; a committed job
    // has its ledger row, so its re-delivery after restart is answered without applying twice.
    const redisUp = this.connection?.status === 'ready';
    if (!redisUp) this.redis?.stopReconnecting();
    const inHand = this.inHand?.then(() => Promise.all(this.acking));
    const drained = await settleWithin(inHand, redisUp ? DRAIN_DEADLINE_MS : 1000);
    if (!drained) this.log.warn('the group in hand did not finish in time; it will be re-delivered');
    // Forced: the group in hand is done, and BullMQ runs no jobs of its own in manual mode. A
    // polite close would QUIT behind the blocking fetch and wait out its drainDelay.
    await settleWithin(this.worker?.close(true), redisUp ? 2000 : 1000);
    await settleWithin(this.loopDone, 1000);
    // Released at once so a standby takes over without waiting for the lease to expire.
    await settleWithin(this.lease?.stop(), 1000);
    this.redis?.stopReconnecting();
    for (const [name, step] of [
      ['sqlite', () => this.store?.close()],
      ['redis', () => this.redis?.close()],
    ] as const) {
      try {
        await step();
      } catch (err) {
        this.log.warn({ err, step: name }, 'error while closing');
      }
    }
    this.state = 'closed';
    this.log.info('consumer closed');
  }
}
