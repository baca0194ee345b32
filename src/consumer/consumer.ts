/**
 * The single-writer consumer: one BullMQ Worker, concurrency 1, applying jobs to SQLite in order.
 */
import { setTimeout as sleep } from 'node:timers/promises';

import { type Job, UnrecoverableError, WaitingError, Worker } from 'bullmq';
import type { Redis } from 'ioredis';
import { type Logger, pino } from 'pino';

import { type JobResults, RedisUnavailableError, ValidationError } from '../protocol/index.js';
import { RedisConnections, redactUrl, settleWithin } from '../redis.js';
import { applyJob } from './apply.js';
import { type ConsumerOptions, type ResolvedConsumerOptions, resolveConsumerOptions } from './options.js';
import { isTransientSqliteError, sqliteCode } from './sqlite-errors.js';
import { Store } from './store.js';

/** Completed jobs stay readable this long, so a client that missed the event can still look. */
const KEEP_COMPLETED = { age: 3600, count: 10_000 };
/** Failed jobs stay for an operator to inspect and retry. */
const KEEP_FAILED = { age: 7 * 24 * 3600, count: 10_000 };
/** Backoff between in-place retries of a transient storage error. */
const RETRY_MIN_MS = 100;
const RETRY_MAX_MS = 5000;
/** How long `close()` waits for the job in hand; inside the CLI's 9 s shutdown deadline. */
const DRAIN_DEADLINE_MS = 7000;

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
        lockDurationMs: o.lockDurationMs,
        ledgerRetentionMs: o.ledgerRetentionMs,
      },
      'consumer starting',
    );
    this.redis = new RedisConnections(o.redisUrl, this.log);
    this.connection = this.redis.open('blocking');
    const worker = new Worker<unknown, JobResults>(o.queue, (job, token) => this.process(job, token), {
      connection: this.connection,
      concurrency: 1,
      autorun: false,
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
    worker.on('failed', (job, err) => this.log.warn({ jobId: job?.id, reason: err.message }, 'job failed'));
    worker.on('stalled', (jobId) => this.log.warn({ jobId }, 'job stalled; it will be re-delivered'));
    await this.waitForRedis(worker);
    if (this.state !== 'starting') return; // closed while starting
    worker.run().catch((err: unknown) => this.log.error({ err }, 'worker stopped with an error'));
    this.pruneTimer = setInterval(() => this.pruneLedger(), o.ledgerPruneIntervalMs);
    this.pruneTimer.unref();
    this.pruneLedger();
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

  private async process(job: Job<unknown, JobResults>, token?: string): Promise<JobResults> {
    const store = this.store as Store;
    const jobId = job.id as string;
    const log = this.log.child({ jobId });
    const started = performance.now();
    for (let attempt = 0; ; attempt++) {
      try {
        const { results, replayed } = applyJob(store, jobId, job.data, this.options.maxOpsPerJob);
        const failed = results.filter((r) => !r.ok).length;
        log.debug(
          { ops: results.length, failed, replayed, ms: Number((performance.now() - started).toFixed(3)) },
          replayed ? 'job replayed from ledger' : 'job applied',
        );
        return { results };
      } catch (err) {
        if (err instanceof ValidationError) {
          // Not a batch at all: retrying cannot help. Fail it now, with the reason, and move on.
          log.warn({ reason: err.message }, 'malformed job rejected');
          throw new UnrecoverableError(err.message);
        }
        if (!isTransientSqliteError(err)) throw err;
        if (this.stopping.signal.aborted && token) {
          // Shutting down mid-retry: hand the job back to the head of the queue, keeping its turn.
          log.warn({ code: sqliteCode(err) }, 'shutting down during a storage error; job returned to the queue');
          await job.moveToWait(token);
          throw new WaitingError();
        }
        const delay = Math.min(RETRY_MIN_MS * 2 ** attempt, RETRY_MAX_MS);
        log.warn({ err, code: sqliteCode(err), attempt, retryInMs: delay }, 'storage error; retrying the job in place');
        await sleep(delay, undefined, { signal: this.stopping.signal }).catch(() => undefined);
      }
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
    // With Redis up, let the job in hand finish and be acknowledged (reconnecting through a blip
    // if need be). With Redis down it cannot be acknowledged: stop at once; the job is committed
    // with its ledger row, so its re-delivery after restart is answered without applying twice.
    const redisUp = this.connection?.status === 'ready';
    if (!redisUp) this.redis?.stopReconnecting();
    const drained = await settleWithin(this.worker?.close(), redisUp ? DRAIN_DEADLINE_MS : 1000);
    if (!drained) this.log.warn('worker did not close in time; the job in hand will be re-delivered');
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
