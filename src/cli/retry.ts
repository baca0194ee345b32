/**
 * `userops retry`: moves failed jobs back to the wait list, to be applied by the consumer.
 *
 * What that means for callers: a failed job's callers were already answered with a
 * `JobFailedError`, and nobody awaits the retried job, so its ops take effect later, silently. The
 * ledger makes a retry safe: a job never applied (the usual case) is applied now; one that had been
 * applied (it failed after its commit, e.g. stalled too often) is answered from the ledger and
 * applies nothing twice. A retried job whose data is malformed fails again with the same reason.
 */
import type { Queue } from 'bullmq';

import type { AdminConfig } from '../config.js';
import { JobNotFailedError, JobNotFoundError } from '../protocol/errors.js';
import { withAdminQueue } from './admin-queue.js';

/** Help text for the command; the README says the same. */
export const RETRY_HELP = `
A retried job's ops are applied now, though its callers were already told it failed
(JobFailedError) and will not hear the outcome. Check with \`userops get\` before retrying ops
that someone may have redone by hand. The consumer's ledger makes a retry safe to repeat: a job
that had been applied is answered from the ledger and applies nothing twice. A job that failed
because it was malformed fails again; one that was too large for USEROPS_MAX_OPS_PER_JOB or
USEROPS_MAX_JOB_BYTES applies once the consumer runs with a higher limit.`;

/** What `userops retry` did. */
export interface RetryResult {
  /** Jobs moved back to wait, in the order they will be applied. */
  retried: string[];
  /** Jobs listed as failed that changed state before they could be retried (`--all` only). */
  skipped: { id: string; state: string }[];
}

async function retryOne(queue: Queue, jobId: string): Promise<void> {
  const job = await queue.getJob(jobId);
  if (!job) throw new JobNotFoundError(jobId);
  const state = await job.getState();
  if (state !== 'failed') throw new JobNotFailedError(jobId, state);
  try {
    // Attempts start again from zero: they describe this run of the job, as if it were new.
    await job.retry('failed', { resetAttemptsMade: true, resetAttemptsStarted: true });
  } catch (err) {
    // Moved (retried, removed) between the check and the retry: say where it is now.
    const now = await queue.getJobState(jobId);
    if (now === 'unknown') throw new JobNotFoundError(jobId);
    if (now !== 'failed') throw new JobNotFailedError(jobId, now);
    throw err;
  }
}

/** Retries one failed job; throws `JobNotFoundError` or `JobNotFailedError`. */
export function retryJob(config: AdminConfig, jobId: string): Promise<RetryResult> {
  return withAdminQueue(config, async ({ queue }) => {
    await retryOne(queue, jobId);
    return { retried: [jobId], skipped: [] };
  });
}

/**
 * Retries every failed job, oldest failure first and one at a time, so they are applied in the
 * order they first failed. (BullMQ's `retryJobs` does it in bulk but cannot say which it moved.)
 */
export function retryAll(config: AdminConfig): Promise<RetryResult> {
  return withAdminQueue(config, async ({ queue }) => {
    const ids = await queue.getRanges(['failed'], 0, -1, true);
    const result: RetryResult = { retried: [], skipped: [] };
    for (const id of ids) {
      try {
        await retryOne(queue, id);
        result.retried.push(id);
      } catch (err) {
        if (err instanceof JobNotFailedError) result.skipped.push({ id, state: err.state });
        else if (err instanceof JobNotFoundError) result.skipped.push({ id, state: 'removed' });
        else throw err;
      }
    }
    return result;
  });
}
