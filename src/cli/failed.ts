/**
 * `userops failed`: the failed jobs, newest first, with why they failed. The consumer keeps
 * failed jobs for 7 days (at most 10,000) for this and for `userops retry`.
 */
import type { Job } from 'bullmq';

import type { AdminConfig } from '../config.js';
import { withAdminQueue } from './admin-queue.js';
import { formatTable, shorten } from './table.js';

/** One failed job as `userops failed` lists it. */
export interface FailedJob {
  id: string;
  failedReason: string;
  /** Ops the job carries; `null` when its data holds no ops array (it is malformed). */
  ops: number | null;
  attemptsMade: number;
  /** When it failed, ISO 8601; `null` if BullMQ did not record it. */
  failedAt: string | null;
  /** When it was added, ISO 8601. */
  addedAt: string;
}

function opCount(data: unknown): number | null {
  const ops = (data as { ops?: unknown } | null)?.ops;
  return Array.isArray(ops) ? ops.length : null;
}

function describe(job: Job): FailedJob {
  return {
    id: String(job.id),
    failedReason: job.failedReason ?? '',
    ops: opCount(job.data),
    attemptsMade: job.attemptsMade,
    failedAt: job.finishedOn ? new Date(job.finishedOn).toISOString() : null,
    addedAt: new Date(job.timestamp).toISOString(),
  };
}

/**
 * Up to `limit` failed jobs, newest first, after skipping the `offset` newest: pages through all
 * that are kept, which are more than one page may hold.
 */
export function listFailed(config: AdminConfig, limit: number, offset = 0): Promise<FailedJob[]> {
  return withAdminQueue(config, async ({ queue }) => {
    const jobs = await queue.getFailed(offset, offset + limit - 1);
    // A job removed between the range read and the fetch comes back empty.
    return jobs.filter((job): job is Job => Boolean(job?.id)).map(describe);
  });
}

/**
 * The list as a table for people; reasons are shortened (`--json` has them whole).
 * @param offset - how many newer jobs the list skipped, so an empty page is not read as none at all
 */
export function formatFailed(jobs: FailedJob[], offset = 0): string {
  if (jobs.length === 0) return offset > 0 ? `no failed jobs after the newest ${offset}` : 'no failed jobs';
  return formatTable([
    ['ID', 'FAILED AT', 'OPS', 'ATTEMPTS', 'REASON'],
    ...jobs.map((j) => [j.id, j.failedAt ?? '-', j.ops === null ? '-' : String(j.ops), String(j.attemptsMade), shorten(j.failedReason, 100)]),
  ]);
}
