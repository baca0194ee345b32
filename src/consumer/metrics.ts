/**
 * The consumer's Prometheus metrics: one registry per consumer (two consumers in one process keep
 * their numbers apart), the counters the commit path bumps, and the gauges read at scrape time.
 *
 * The commit path is hot (tens of thousands of ops a second). prom-client hashes the labels on
 * every `inc()` (about half a microsecond), so ops are tallied in plain numbers instead and handed
 * to the counter when it is scraped: per op, two map lookups and an addition, no allocation.
 */
import type { Queue } from 'bullmq';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

import { ErrorCode, OP_NAMES, type OpResult } from '../protocol/index.js';
import { withDeadline } from '../redis.js';
import type { ConsumerRole } from './health.js';
import { countBullmq5Paused } from './queue-settings.js';
import type { Store } from './store.js';

/**
 * Queue states reported by `userops_queue_jobs`. BullMQ keeps jobs added with a priority apart from
 * `waiting`, in `prioritized`, until they are taken: a backlog is the two together.
 */
export const QUEUE_STATES = ['waiting', 'prioritized', 'active', 'delayed', 'failed'] as const;

/**
 * The `userops_queue_jobs` state of jobs in BullMQ 5's paused list (see queue-settings.ts): BullMQ
 * 6's counts leave them out, and nothing takes them until someone resumes the queue.
 */
const BULLMQ5_PAUSED = 'bullmq5_paused';

/** A scrape must not hang on a dead Redis: queue counts are given up after this long. */
const QUEUE_COUNT_DEADLINE_MS = 1000;

/** The `op` label of an op whose name is not one of ours: keeps label values a closed set. */
const UNKNOWN_OP = 'invalid';

/**
 * The `outcome` label values of `userops_ops_applied_total`: `ok`, or the code of the error an op
 * answered with. These are the codes an op can answer with: the store's domain errors, the
 * validation of `parseOp`, and INTERNAL for anything else that is not transient (apply.ts).
 * Each op name has a series for each of them from the start, at 0: `increase()` and `rate()` see
 * nothing of a series that appears already at 1, so an alert on the first INTERNAL after a restart
 * would never fire. A code not listed here is still counted, its series appearing on first use.
 */
const OP_OUTCOMES = ['ok', ErrorCode.USER_NOT_FOUND, ErrorCode.USER_EXISTS, ErrorCode.INVALID_INPUT, ErrorCode.INTERNAL] as const;

/** How a job left the consumer, the `outcome` label of `userops_jobs_total`. */
export type JobOutcome = 'applied' | 'replayed' | 'failed' | 'malformed';

/** What the scrape-time gauges read from the consumer. */
export interface MetricsSources {
  role(): ConsumerRole;
  store(): Store | undefined;
  queue(): Queue | undefined;
}

/** Ops of one op name and outcome not yet handed to the counter. */
interface Tally {
  labels: { op: string; outcome: string };
  pending: number;
}

/** Metrics of one consumer; read them from `registry` (the HTTP server's `/metrics` does). */
export class ConsumerMetrics {
  /** This consumer's registry, never prom-client's global one. */
  readonly registry = new Registry();
  /** Tallies by op name, then outcome: each known pair from the start, any other on first use. */
  private readonly tallies = new Map<string, Map<string, Tally>>();
  /** Jobs by outcome not yet handed to the counter. */
  private readonly jobTallies: Record<JobOutcome, number> = { applied: 0, replayed: 0, failed: 0, malformed: 0 };
  private readonly groupJobs: Histogram;
  private readonly groupOps: Histogram;
  private readonly commitSeconds: Histogram;
  private readonly jobLatency: Histogram;

  constructor(sources: MetricsSources) {
    const registers = [this.registry];
    const tallies = this.tallies;
    new Counter({
      name: 'userops_ops_applied_total',
      help: 'Ops applied, by op name and outcome (ok, or the error code the caller got).',
      labelNames: ['op', 'outcome'],
      registers,
      collect() {
        for (const byOutcome of tallies.values()) {
          for (const tally of byOutcome.values()) {
            // Adding 0 too: it makes the series of a tally not yet used exist, at 0.
            this.inc(tally.labels, tally.pending);
            tally.pending = 0;
          }
        }
      },
    });
    for (const op of OP_NAMES) for (const outcome of OP_OUTCOMES) this.tally(op, outcome);
    // An op with a name not ours is always refused by parseOp: one outcome only.
    this.tally(UNKNOWN_OP, ErrorCode.INVALID_INPUT);
    const jobTallies = this.jobTallies;
    new Counter({
      name: 'userops_jobs_total',
      help: 'Jobs finished by this consumer: applied, replayed from the ledger, failed, or rejected as malformed.',
      labelNames: ['outcome'],
      registers,
      collect() {
        for (const outcome of Object.keys(jobTallies) as JobOutcome[]) {
          // Every outcome shown from the start, 0 included: rate() needs the series to exist.
          this.inc({ outcome }, jobTallies[outcome]);
          jobTallies[outcome] = 0;
        }
      },
    });
    this.groupJobs = new Histogram({
      name: 'userops_group_jobs',
      help: 'Jobs per group commit.',
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
      registers,
    });
    this.groupOps = new Histogram({
      name: 'userops_group_ops',
      help: 'Ops per group commit.',
      buckets: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000],
      registers,
    });
    this.commitSeconds = new Histogram({
      name: 'userops_commit_duration_seconds',
      help: 'Time to apply and commit one group, fsync and in-place retries included.',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
    this.jobLatency = new Histogram({
      name: 'userops_job_latency_seconds',
      help: "From a job's creation (the producer's clock) to its commit.",
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    });
    new Gauge({
      name: 'userops_writer',
      help: '1 while this consumer holds the writer role, else 0 (standing by, or starting).',
      registers,
      collect() {
        this.set(sources.role() === 'writer' ? 1 : 0);
      },
    });
    new Gauge({
      name: 'userops_ledger_rows',
      help: 'Rows in the ledger of applied jobs, as triggers in the database count them.',
      registers,
      collect() {
        const store = sources.store();
        if (store?.db.open) this.set(store.ledgerSize());
      },
    });
    // The gauges below come from one count per scrape: prom-client collects them side by side.
    let counting: Promise<QueueCount | undefined> | undefined;
    const countQueue = () => (counting ??= countJobs(sources.queue()).finally(() => (counting = undefined)));
    new Gauge({
      name: 'userops_redis_up',
      help: '1 if this scrape could count the queue in Redis, else 0.',
      registers,
      async collect() {
        this.set((await countQueue()) ? 1 : 0);
      },
    });
    new Gauge({
      name: 'userops_queue_jobs',
      help: `Jobs in the queue by state, counted at scrape time (given up after ${QUEUE_COUNT_DEADLINE_MS} ms).`,
      labelNames: ['state'],
      registers,
      async collect() {
        const count = await countQueue();
        // Unknown is better shown as absent than as the last value seen.
        this.reset();
        if (!count) return;
        for (const state of QUEUE_STATES) this.labels(state).set(count.jobs[state] ?? 0);
        this.labels(BULLMQ5_PAUSED).set(count.bullmq5Paused);
      },
    });
    new Gauge({
      name: 'userops_queue_paused',
      help: '1 while the queue is paused (nothing is taken from it), else 0; NaN when Redis does not answer.',
      registers,
      async collect() {
        const count = await countQueue();
        // A gauge without labels cannot be left out, and 0 would say "not paused": NaN says unknown.
        this.set(count ? Number(count.paused) : Number.NaN);
      },
    });
    // Standard names (process_*, nodejs_*), unprefixed, so stock Node.js dashboards work.
    collectDefaultMetrics({ register: this.registry });
  }

  /** Records one committed group. */
  groupCommitted(jobs: number, ops: number, seconds: number): void {
    this.groupJobs.observe(jobs);
    this.groupOps.observe(ops);
    this.commitSeconds.observe(seconds);
  }

  /**
   * Records one job committed: each op by name and outcome (unless `replayed`: then nothing was
   * applied again), and its latency from `createdAt` (epoch ms, the producer's clock).
   */
  jobCommitted(ops: readonly unknown[], results: readonly OpResult[], replayed: boolean, createdAt: number, committedAt: number): void {
    this.jobTallies[replayed ? 'replayed' : 'applied']++;
    // Clocks of producer and consumer hosts differ; a job cannot have waited less than nothing.
    // A job added with a timestamp that is not a number has no wait to tell (prom-client would throw).
    if (Number.isFinite(createdAt)) this.jobLatency.observe(Math.max(0, committedAt - createdAt) / 1000);
    if (replayed) return;
    for (let i = 0; i < results.length; i++) {
      const result = results[i] as OpResult;
      this.tally(opName(ops[i]), result.ok ? 'ok' : result.error.code).pending++;
    }
  }

  /** Records a job that left without being committed. */
  jobRejected(outcome: 'failed' | 'malformed'): void {
    this.jobTallies[outcome]++;
  }

  private tally(op: string, outcome: string): Tally {
    let byOutcome = this.tallies.get(op);
    if (!byOutcome) this.tallies.set(op, (byOutcome = new Map<string, Tally>()));
    let tally = byOutcome.get(outcome);
    if (!tally) byOutcome.set(outcome, (tally = { labels: { op, outcome }, pending: 0 }));
    return tally;
  }
}

/** The queue as one scrape sees it. */
interface QueueCount {
  jobs: Record<string, number>;
  /** Paused by an operator (BullMQ's pause): jobs wait however many there are. */
  paused: boolean;
  bullmq5Paused: number;
}

/** The queue's job counts by state and whether it is paused, or `undefined` when Redis does not answer in time. */
async function countJobs(queue: Queue | undefined): Promise<QueueCount | undefined> {
  if (!queue) return undefined;
  try {
    const counts = Promise.all([queue.getJobCounts(...QUEUE_STATES), queue.isPaused(), countBullmq5Paused(queue)]);
    const [jobs, paused, bullmq5Paused] = await withDeadline(counts, QUEUE_COUNT_DEADLINE_MS, () => new Error('timed out'));
    return { jobs, paused, bullmq5Paused };
  } catch {
    return undefined;
  }
}

const KNOWN_OPS = new Set<string>(OP_NAMES);

/** The op name of a raw op for a label: ours, or `invalid` (anyone can add jobs). */
function opName(raw: unknown): string {
  const op = (raw as { op?: unknown } | null)?.op;
  return typeof op === 'string' && KNOWN_OPS.has(op) ? op : UNKNOWN_OP;
}
