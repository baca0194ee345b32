/**
 * Jobs whose stored data is not JSON: written into Redis by hand or by a foreign tool, never by a
 * BullMQ Queue. BullMQ throws a SyntaxError while it reads one, which drops the job's id with it:
 * the consumer could neither fail it nor apply it, so it stayed active, stalled and came back for
 * ever, and any listing of the failed set that met one failed whole. The Queue and Worker here
 * read such a job as one whose data is an {@link UnreadableJobData}, so it can be failed and listed.
 */
import { Job, type JobJson, type JobProgress, Queue, Worker } from 'bullmq';

/** Stands in for a job's data that is not JSON; `reason` is the parser's complaint. */
export class UnreadableJobData {
  constructor(readonly reason: string) {}

  /** What a listing or a dashboard shows in place of the data. */
  toJSON(): { unreadable: string } {
    return { unreadable: this.reason };
  }
}

type JobQueue = Parameters<typeof Job.fromJSON>[0];

/** A Job that reads data which is not JSON as an {@link UnreadableJobData}. */
class TolerantJob<T = unknown, R = unknown, N extends string = string, P extends JobProgress = JobProgress> extends Job<T, R, N, P> {
  static override fromJSON<T = unknown, R = unknown, N extends string = string>(queue: JobQueue, json: JobJson, jobId?: string): Job<T, R, N> {
    try {
      return super.fromJSON<T, R, N>(queue, json, jobId);
    } catch (err) {
      if (!(err instanceof SyntaxError)) throw err;
      const job = super.fromJSON<T, R, N>(queue, { ...json, data: 'null' }, jobId);
      (job as Job<unknown, R, N>).data = new UnreadableJobData(`data is not JSON (${err.message})`);
      return job;
    }
  }
}

/** A BullMQ Queue whose getters read jobs with unreadable data instead of throwing. */
export class TolerantQueue<T = unknown, R = unknown> extends Queue<T, R> {
  protected override get Job(): typeof Job {
    return TolerantJob;
  }
}

/** A BullMQ Worker that fetches jobs with unreadable data instead of throwing, so they can be failed. */
export class TolerantWorker<T = unknown, R = unknown> extends Worker<T, R> {
  protected override get Job(): typeof Job {
    return TolerantJob;
  }
}
