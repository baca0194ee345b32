/**
 * The single-writer consumer: its lifecycle, the writer role, and one loop that takes jobs from
 * the queue in order and commits them in groups (see group-commit.ts).
 */
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

import type { Queue, Worker } from 'bullmq';
import type { Redis } from 'ioredis';
import { type Logger, pino } from 'pino';

import { coerceError, ConfigError, type JobResults, RedisUnavailableError } from '../protocol/index.js';
import { queueOptions, RedisConnections, redactUrl, settleWithin, userOpsKey, withDeadline } from '../redis.js';
import { TolerantQueue, TolerantWorker } from '../unreadable-jobs.js';
import { BackgroundCheckpointer } from './checkpointer.js';
import { bindDatabase, databaseBinding, earlyRefusal, queueDatabaseId } from './db-identity.js';
import { type ConsumerOptions, type ResolvedConsumerOptions, resolveConsumerOptions } from './options.js';
import { backoffMs, GroupCommitter } from './group-commit.js';
import { checkReadiness, type ConsumerRole, type ConsumerState, type Readiness } from './health.js';
import { DASHBOARD_PATH, HttpServer } from './http-server.js';
import { LedgerPruner } from './ledger-pruner.js';
import { bullmq5PausedKey, QueueSettingsGuard } from './queue-settings.js';
import { ConsumerMetrics } from './metrics.js';
import { RedisWatch } from './redis-watch.js';
import { ReplySender } from './replies.js';
import { isTransientSqliteError, sqliteCode } from './sqlite-errors.js';
import { fileDatabaseId, Store } from './store.js';
import { leaseOwner, WriterLease } from './writer-lease.js';

/** Completed jobs stay readable this long, so a client that missed the event can still look. */
const KEEP_COMPLETED = { age: 3600, count: 10_000 };
/** Failed jobs stay for an operator to inspect and retry. */
const KEEP_FAILED = { age: 7 * 24 * 3600, count: 10_000 };
/** How long `close()` waits for the group in hand; inside the CLI's 9 s shutdown deadline. */
const DRAIN_DEADLINE_MS = 7000;

/** How often a standby checks whether it has become the writer. */
const STANDBY_POLL_MS = 100;

/**
 * Applies the queue's jobs to one SQLite database. `start()` and `close()` are idempotent; signal
 * handling belongs to the program that owns the process (the CLI), not here.
 */
export class UserOpsConsumer {
  private readonly options: ResolvedConsumerOptions;
  private readonly log: Logger;
  private state: ConsumerState = 'new';
  private store?: Store;
  private checkpointer?: BackgroundCheckpointer;
  private redis?: RedisConnections;
  private connection?: Redis;
  /** Reports outages of `connection`, once each, instead of an error per reconnect attempt. */
  private watch?: RedisWatch;
  private worker?: Worker<unknown, JobResults>;
  /** Fail-fast connection for probes, scrapes and the dashboard, which must not queue behind an outage. */
  private commands?: Redis;
  /** The queue as probes, scrapes and the dashboard read it. */
  private queue?: Queue;
  private http?: HttpServer;
  /** Why the database could not be opened, while the consumer waits for it. */
  private storeError?: string | undefined;
  /** Why the database is not created yet, while the consumer asks Redis first. */
  private storePending?: string | undefined;
  /** The lock owner of every job this consumer takes. */
  private readonly token = randomUUID();
  private loopDone?: Promise<void>;
  /** The group being committed, which `close()` lets finish. */
  private inHand?: Promise<void>;
  private lease?: WriterLease;
  private committer?: GroupCommitter;
  private pruner?: LedgerPruner;
  private settingsGuard?: QueueSettingsGuard;
  private starting?: Promise<void>;
  private closing?: Promise<void>;
  /** Aborts in-place retry sleeps when the consumer closes. */
  private readonly stopping = new AbortController();
  /** This consumer's Prometheus metrics, for programs that serve their own `/metrics`. */
  readonly metrics: ConsumerMetrics;

  /** @param options - validated here; throws `ConfigError` naming the bad option */
  constructor(options: ConsumerOptions) {
    this.options = resolveConsumerOptions(options);
    this.log = (this.options.logger ?? pino({ level: 'silent' })).child({ component: 'consumer' });
    this.metrics = new ConsumerMetrics({ role: () => this.role, store: () => this.store, queue: () => this.queue });
  }

  /**
   * `writer` while this consumer holds the queue's writer lease, `standby` while it does not, and
   * `starting` until its first request for the lease has been answered.
   */
  get role(): ConsumerRole {
    if (!this.lease?.answered) return 'starting';
    return this.isWriter() ? 'writer' : 'standby';
  }

  /** Whether this consumer holds the writer lease now: asked before every commit and prune. */
  private readonly isWriter = (): boolean => this.lease?.held() ?? false;

  /** The store, once started; for admin commands and tests in the same process. */
  get database(): Store | undefined {
    return this.store;
  }

  /** Where the HTTP server listens, once started with the `http` option. */
  get httpAddress(): { host: string; port: number } | undefined {
    return this.http?.address;
  }

  /** Whether this consumer can serve now, part by part; what `/readyz` answers. Never throws. */
  readiness(): Promise<Readiness> {
    const redisError = this.commands && this.redis?.lastError(this.commands);
    return checkReadiness({
      state: this.state,
      role: this.role,
      redis: this.commands,
      redisError,
      redisWriteProblem: this.watch?.writeProblem,
      store: this.store,
      storageProblem: this.storeError ?? this.committer?.storageProblem,
      storagePending: this.storePending,
      leaseProblem: this.lease?.problem,
    });
  }

  /** Opens SQLite, connects to Redis and starts taking jobs. Resolves when the worker is ready. */
  start(): Promise<void> {
    this.starting ??= this.doStart();
    return this.starting;
  }

  private async doStart(): Promise<void> {
    const o = this.options;
    this.state = 'starting';
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
    this.redis = new RedisConnections(o.redisUrl, this.log, { reportOutages: false });
    this.connection = this.redis.open('blocking');
    this.watch = new RedisWatch(this.connection, o.redisUrl, this.log);
    const commands = this.redis.open('command');
    this.commands = commands;
    const queueOpts = queueOptions(o.redisUrl, o.queue, commands);
    this.queue = new TolerantQueue(o.queue, queueOpts);
    this.queue.on('error', (err) => this.log.debug({ err }, 'queue reader error'));
    // Up before the database and Redis are waited for, so a consumer stuck waiting says so on /readyz.
    if (o.http) await this.startHttp(o.http, this.queue);
    // Asked before the file is created or migrated, so that a refusal leaves it as it was (db-identity.ts).
    const mine = fileDatabaseId(o.dbPath);
    if (mine !== undefined) {
      this.storePending = `${existsSync(o.dbPath) ? 'not opened' : 'not created'} yet: waiting for Redis to tell which database the queue is served from`;
      const theirs = await this.waitForRedis(this.queue.waitUntilReady().then(() => queueDatabaseId(commands, o)));
      this.storePending = undefined;
      if (this.state !== 'starting') return; // closed while starting
      const refusal = earlyRefusal(o, mine, theirs);
      if (refusal) await this.refuse(refusal);
    }
    this.store = await this.openStore();
    if (!this.store) return; // closed while waiting for the database
    this.checkpointer = new BackgroundCheckpointer(o.dbPath, this.log);
    // No processor: jobs are taken by `loop()` below, a group at a time.
    const worker = new TolerantWorker<unknown, JobResults>(o.queue, null, {
      connection: this.connection,
      prefix: queueOpts.prefix,
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
    // BullMQ forwards every connection error of every connection it holds, at each reconnect
    // attempt: those are the watch's to report, once per outage. Anything else is a real problem.
    worker.on('error', (err) =>
      this.watch?.refusedWrite(err) || this.watch?.isOutageNoise(err)
        ? this.log.debug({ err }, 'worker error while Redis is unreachable or refusing writes')
        : this.log.error({ err }, 'worker error'),
    );
    worker.on('stalled', (jobId) => this.log.warn({ jobId }, 'job stalled; it will be re-delivered'));
    await this.waitForRedis(Promise.all([worker.waitUntilReady(), this.queue.waitUntilReady()]));
    if (this.state !== 'starting') return; // closed while starting
    const { store, connection } = this;
    const refusal = await this.whileOutOfMemory(() => bindDatabase(connection, o, store.dbId));
    if (this.state !== 'starting') return; // closed while Redis refused writes
    if (refusal) await this.refuse(refusal);
    const key = userOpsKey(o.redisUrl, o.queue, 'writer');
    const binding = databaseBinding(o, store.dbId);
    this.lease = new WriterLease(this.connection, key, leaseOwner(this.token), o.writerLeaseMs, binding, this.log, (role, why, detail) => {
      // Taking a free lease is a write: it proves Redis takes writes again. A holder's answer
      // proves nothing, but a standby with a writer to wait behind has no refusal to report.
      if (role === 'writer' || why === 'held') this.watch?.writesAccepted(role === 'writer');
      if (role === 'writer') this.log.info('writer role taken: applying jobs');
      else if (why === 'refused' && this.watch?.refusedWrite(detail?.err)) this.log.debug('cannot take the free writer lease while Redis refuses writes');
      else if (why === 'unanswered') this.log.warn('writer lease lapsed while Redis did not answer: standing by until it does');
      else if (why === 'unbound') this.log.error({ key: binding.key }, `${String(detail?.problem)} Standing by, applying nothing`);
      else if (detail?.problem) this.log.error({ err: detail.err, holder: detail.holder, key }, `no consumer can be the writer: ${detail.problem}; standing by, applying nothing`);
      else this.log.warn({ holder: detail?.holder, leaseTtlMs: detail?.leaseTtlMs }, 'another consumer is the writer: standing by, ready to take over');
    });
    await this.lease.start();
    if (this.state !== 'starting') return; // closed while the lease was asked for: start nothing more
    const replies = new ReplySender(this.connection, (replyId) => userOpsKey(o.redisUrl, o.queue, `reply:${replyId}`));
    this.committer = new GroupCommitter(this.store, this.token, o, this.log, this.stopping.signal, this.isWriter, this.metrics, replies);
    // Before the loop commits anything: its first run goes by the ledger as the last run left it.
    this.pruner = new LedgerPruner(this.store, o.ledgerRetentionMs, o.ledgerPruneIntervalMs, this.log, this.isWriter);
    this.pruner.start();
    const keys = { meta: this.queue.toKey('meta'), paused: bullmq5PausedKey(this.queue) };
    this.settingsGuard = new QueueSettingsGuard(commands, keys, o.queueCheckIntervalMs, this.log, this.isWriter);
    this.settingsGuard.start();
    void worker.startStalledCheckTimer().catch((err: unknown) => this.log.error({ err }, 'stalled-job checker stopped'));
    this.loopDone = this.loop(worker);
    this.state = 'running';
    this.log.info('consumer ready');
  }

  /**
   * Opens the database, waiting while it cannot be opened for writing (a read-only or full disk, a
   * volume not mounted yet). Jobs wait in Redis meanwhile, so nothing is lost, and the log says
   * why every few seconds. Other errors (a newer schema, not a database) fail the start at once.
   */
  private async openStore(): Promise<Store | undefined> {
    const { dbPath, busyTimeoutMs } = this.options;
    for (let attempt = 0; !this.stopping.signal.aborted; attempt++) {
      try {
        const store = new Store(dbPath, busyTimeoutMs);
        try {
          store.checkWritable();
        } catch (err) {
          store.close();
          throw err;
        }
        this.storeError = undefined;
        if (attempt > 0) this.log.info({ db: dbPath }, 'database writable again');
        return store;
      } catch (err) {
        if (!isTransientSqliteError(err)) throw err;
        this.storeError = `cannot be written: ${coerceError(err).message}`;
        const retryInMs = backoffMs(attempt);
        this.log.warn({ err, code: sqliteCode(err), db: dbPath, retryInMs }, 'database cannot be written; waiting for it (jobs stay queued)');
        await sleep(retryInMs, undefined, { signal: this.stopping.signal }).catch(() => undefined);
      }
    }
    return undefined;
  }

  private async startHttp(options: NonNullable<ResolvedConsumerOptions['http']>, queue: Queue): Promise<void> {
    try {
      this.http = await HttpServer.start(options, { readiness: () => this.readiness(), registry: this.metrics.registry, queue, log: this.log });
      const { dashboard } = options;
      this.log.info({ ...this.http.address, dashboard: dashboard ? DASHBOARD_PATH : false, dashboardAuth: Boolean(dashboard?.auth) }, 'http server listening');
      // close() may have begun while the server was starting, and passed its turn to close it.
      if (this.state !== 'starting') await this.http.close();
    } catch (err) {
      await this.close();
      throw err;
    }
  }

  /**
   * Runs `write`, again every second while Redis refuses it for want of memory, as an outage is
   * waited out at start: a consumer that exited instead would be restarted into the same refusal
   * by its supervisor, and crash-loop back-off can keep it down long after memory is freed.
   * Resolves `undefined` if the consumer closes meanwhile.
   */
  private async whileOutOfMemory<T>(write: () => Promise<T>): Promise<T | undefined> {
    for (;;) {
      try {
        return await write();
      } catch (err) {
        if (!this.watch?.refusedWrite(err)) throw err;
        await sleep(1000, undefined, { signal: this.stopping.signal }).catch(() => undefined);
        if (this.stopping.signal.aborted) return undefined;
      }
    }
  }

  /** Waits for `ready` at most `startTimeoutMs`; else closes and throws `RedisUnavailableError`. */
  private async waitForRedis<T>(ready: Promise<T>): Promise<T> {
    const { startTimeoutMs, redisUrl } = this.options;
    try {
      const refused = this.redis?.refused;
      return await withDeadline(refused ? Promise.race([ready, refused]) : ready, startTimeoutMs, () => new RedisUnavailableError(redactUrl(redisUrl)));
    } catch (err) {
      await this.close();
      throw err instanceof RedisUnavailableError || err instanceof ConfigError ? err : new RedisUnavailableError(redactUrl(redisUrl), err);
    }
  }

  /** Refuses to serve the queue (see db-identity.ts): closes, then throws `refusal`. */
  private async refuse(refusal: Error): Promise<never> {
    await this.close();
    throw refusal;
  }

  /** The single writer: take a group, commit it, acknowledge it; until closed. */
  private async loop(worker: Worker<unknown, JobResults>): Promise<void> {
    for (let failures = 0; !this.stopping.signal.aborted; ) {
      if (!this.isWriter()) {
        // Standing by: take nothing while another consumer is the writer, and hold nothing either.
        await this.committer?.release();
        await sleep(STANDBY_POLL_MS, undefined, { signal: this.stopping.signal }).catch(() => undefined);
        continue;
      }
      try {
        const waitStarted = performance.now();
        const committer = this.committer as GroupCommitter;
        const group = await committer.take(worker);
        this.watch?.writesAccepted();
        // A group taken is committed even if close() began meanwhile: its jobs are locked to us.
        if (group.length > 0) {
          this.inHand = committer.commit(group, performance.now() - waitStarted);
          await this.inHand;
        }
        failures = 0;
      } catch (err) {
        if (this.stopping.signal.aborted) break;
        const delay = backoffMs(failures++);
        if (this.watch?.refusedWrite(err)) this.log.debug({ err, retryInMs: delay }, 'Redis refused to hand out jobs: out of memory');
        else this.log.error({ err, retryInMs: delay }, 'consumer loop error; carrying on');
        await sleep(delay, undefined, { signal: this.stopping.signal }).catch(() => undefined);
      }
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
    // From here a connection that drops is being closed, not waited for.
    this.watch?.stop();
    // No new prune from here on; one in progress stops after its chunk.
    const pruned = this.pruner?.close();
    const guarded = this.settingsGuard?.stop();
    // With Redis up, let the group in hand commit and be acknowledged (reconnecting through a
    // blip if need be). With Redis down it cannot be acknowledged: stop at once; a committed job
    // has its ledger row, so its re-delivery after restart is answered without applying twice.
    const redisUp = this.connection?.status === 'ready';
    if (!redisUp) this.redis?.stopReconnecting();
    const inHand = this.inHand?.then(() => this.committer?.acknowledged());
    const drained = await settleWithin(inHand, redisUp ? DRAIN_DEADLINE_MS : 1000);
    if (!drained) this.log.warn('the group in hand did not finish in time; it will be re-delivered');
    // Jobs a prefetch took go back to the head of the queue now, not when their locks expire.
    if (redisUp) await settleWithin(this.committer?.release(), 1000);
    // Forced: the group in hand is done, and BullMQ runs no jobs of its own in manual mode. A
    // polite close would QUIT behind the blocking fetch and wait out its drainDelay.
    await settleWithin(this.worker?.close(true), redisUp ? 2000 : 1000);
    await settleWithin(this.loopDone, 1000);
    // Released at once so a standby takes over without waiting for the lease to expire.
    await settleWithin(this.lease?.stop(), 1000);
    this.redis?.stopReconnecting();
    for (const [name, step] of [
      // Last but one: until here probes hear "closing" rather than nothing.
      ['http', () => this.http?.close()],
      ['queue', () => settleWithin(this.queue?.close(), 1000)],
      // Before the writer's connection: closing last, it checkpoints the WAL and removes it.
      ['checkpointer', () => this.checkpointer?.close()],
      ['ledger pruner', () => pruned],
      ['queue settings guard', () => settleWithin(guarded, 1000)],
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
