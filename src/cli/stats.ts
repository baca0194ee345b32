/**
 * `userops stats`: the queue's job counts and writer lease (from Redis), and what the database
 * holds (from the SQLite file, read-only). The CLI may run on another machine than the daemon, so
 * an unreachable database is reported, not fatal; a missing one is never created.
 */
import { existsSync, statSync } from 'node:fs';

import type { AdminConfig } from '../config.js';
import { type DatabaseSummary, ReadOnlyStore } from '../consumer/store.js';
import { countBullmq5Paused } from '../consumer/queue-settings.js';
import { type LeaseHolder, parseLeaseOwner } from '../consumer/writer-lease.js';
import { type AdminQueue, withAdminQueue } from './admin-queue.js';
import { formatBytes, formatTable } from './table.js';

/** BullMQ states counted; `prioritized` holds waiting jobs too (userops adds none, others may). */
const JOB_STATES = ['waiting', 'prioritized', 'delayed', 'active', 'completed', 'failed'] as const;

/** The writer lease as Redis holds it now. */
export type WriterStats = { held: false } | ({ held: true; ttlMs: number } & LeaseHolder);

/** The database part of `stats`: what it holds, or why it could not be read from here. */
export type DatabaseStats =
  | ({ available: true; path: string; bytes: { db: number; wal: number }; servesQueue: boolean | null } & DatabaseSummary)
  | { available: false; path: string; reason: string };

/** Everything `userops stats` reports. */
export interface Stats {
  queue: string;
  redis: string;
  jobs: Record<(typeof JOB_STATES)[number], number>;
  /** A paused queue keeps its waiting jobs: the consumer takes none until it is resumed. */
  paused: boolean;
  /** Jobs in BullMQ 5's paused list, which `jobs` leaves out and no consumer takes until the queue is resumed. */
  bullmq5Paused: number;
  writer: WriterStats;
  /** The database id the queue is served from (set by the first consumer), if any. */
  queueDbId: string | null;
  database: DatabaseStats;
}

async function writerStats(q: AdminQueue): Promise<WriterStats> {
  const [value, ttlMs] = await Promise.all([q.redis.get(q.keys.writer), q.redis.pttl(q.keys.writer)]);
  return value === null ? { held: false } : { held: true, ttlMs, ...parseLeaseOwner(value) };
}

function fileSize(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}

/** Reads the database read-only; never creates it. */
export function databaseStats(path: string, queueDbId: string | null): DatabaseStats {
  let store: ReadOnlyStore;
  try {
    store = new ReadOnlyStore(path);
  } catch (err) {
    const reason = existsSync(path)
      ? err instanceof Error ? err.message : String(err)
      : 'no database file here (USEROPS_DB); the consumer may run on another machine';
    return { available: false, path, reason };
  }
  try {
    const summary = store.summary();
    const servesQueue = queueDbId === null || summary.dbId === undefined ? null : summary.dbId === queueDbId;
    return { available: true, path, bytes: { db: fileSize(path), wal: fileSize(`${path}-wal`) }, servesQueue, ...summary };
  } catch (err) {
    return { available: false, path, reason: err instanceof Error ? err.message : String(err) };
  } finally {
    store.close();
  }
}

/** Collects the stats of the configured queue and database. */
export function collectStats(config: AdminConfig): Promise<Stats> {
  return withAdminQueue(config, async (q) => {
    const [counts, paused, bullmq5Paused, writer, queueDbId] = await Promise.all([
      q.queue.getJobCounts(...JOB_STATES),
      q.queue.isPaused(),
      countBullmq5Paused(q.queue),
      writerStats(q),
      q.redis.get(q.keys.db),
    ]);
    const jobs = Object.fromEntries(JOB_STATES.map((s) => [s, counts[s] ?? 0])) as Stats['jobs'];
    return { queue: config.queue, redis: q.redisUrl, jobs, paused, bullmq5Paused, writer, queueDbId, database: databaseStats(config.dbPath, queueDbId) };
  });
}

function describeWriter(w: WriterStats): string {
  if (!w.held) return 'none (no consumer holds the writer lease)';
  const who = w.host === undefined ? `token ${w.token}` : `${w.host} pid ${String(w.pid)} (token ${w.token.slice(0, 8)})`;
  return `${who}; lease renews or expires within ${(w.ttlMs / 1000).toFixed(1)} s`;
}

/** The stats as an aligned table for people. */
export function formatStats(s: Stats): string {
  const rows: string[][] = [
    ['queue', `${s.queue} at ${s.redis}${s.paused ? ' (PAUSED)' : ''}`],
    ['writer', describeWriter(s.writer)],
    ['jobs', JOB_STATES.map((state) => `${state} ${s.jobs[state]}`).join(', ')],
    ...(s.bullmq5Paused > 0
      ? [['', `${s.bullmq5Paused} in BullMQ 5's paused list: no consumer takes them until a BullMQ 6 resume() or the dashboard moves them back`]]
      : []),
    ['database', s.database.path],
  ];
  const d = s.database;
  if (!d.available) {
    rows.push(['', `unavailable: ${d.reason}`]);
  } else {
    const servesQueue = d.servesQueue === null ? '' : d.servesQueue ? ", the queue's database" : `, NOT the queue's database (${String(s.queueDbId)})`;
    rows.push(
      ['size', `${formatBytes(d.bytes.db + d.bytes.wal)} (db ${formatBytes(d.bytes.db)}, wal ${formatBytes(d.bytes.wal)})`],
      ['users', String(d.users)],
      ['ledger', `${d.ledgerRows} rows`],
      ['schema', `version ${d.schemaVersion}, id ${d.dbId ?? '(none before schema 3)'}${servesQueue}`],
    );
  }
  return formatTable(rows);
}
