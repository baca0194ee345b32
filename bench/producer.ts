/**
 * One benchmark producer process: C concurrent callers issuing a mix of ops for a fixed time,
 * through the userops client or through the per-op baseline (one BullMQ job per op,
 * `waitUntilFinished`). Reports an HDR latency histogram to the parent over IPC.
 */
import { Queue, QueueEvents } from 'bullmq';
import * as hdr from 'hdr-histogram-js';
import { Redis } from 'ioredis';

import { UserOpsClient } from '../src/index.js';

/** What the parent asks of a producer. */
export interface ProducerTask {
  system: 'userops' | 'baseline';
  redisUrl: string;
  queue: string;
  id: number;
  concurrency: number;
  durationMs: number;
  /** Percentages of create, get and update. */
  mix: { create: number; get: number; update: number };
  /**
   * A second system called in turn with the first, one call each, so both are measured at the same
   * moments: this disk's fsync latency drifts too much for runs made a minute apart to compare.
   */
  alternate?: Pick<ProducerTask, 'system' | 'queue'>;
  /**
   * Users `g0` to `g{existing-1}` are already in the database: gets and updates pick one of them
   * at random, as on a large table in use, instead of a user the caller created moments before.
   */
  existing?: number;
}

/** What a producer reports back. */
export interface ProducerReport {
  ops: number;
  errors: number;
  histogram: string;
  elapsedMs: number;
  /** CPU time (user + system) this process spent during the timed run, in microseconds. */
  cpuUs: number;
  /** The alternate system's calls, when there was one (its cpuUs is this process's, shared). */
  alternate?: ProducerReport;
}

/** What a producer sends its parent: 'started' when seeding is done and the timed run begins, then its report. */
export type ProducerMessage = 'started' | ProducerReport;

const send = (message: ProducerMessage, then: () => void = () => undefined) => process.send?.(message, then);

type Call = (op: string, args: Record<string, unknown>) => Promise<unknown>;

function useropsCaller(task: ProducerTask): { call: Call; close: () => Promise<void> } {
  const client = new UserOpsClient({ redisUrl: task.redisUrl, queue: task.queue, timeoutMs: 120_000, maxPendingCalls: 1_000_000 });
  const call: Call = (op, args) => {
    switch (op) {
      case 'user.create':
        return client.createUser(args as never);
      case 'user.get':
        return client.getUser(args.nickname as string);
      default:
        return client.updateUser(args.nickname as string, { fullName: args.fullName as string });
    }
  };
  return { call, close: () => client.close() };
}

async function baselineCaller(task: ProducerTask): Promise<{ call: Call; close: () => Promise<void> }> {
  const connection = new Redis(task.redisUrl, { maxRetriesPerRequest: null });
  const queue = new Queue(task.queue, { connection });
  const events = new QueueEvents(task.queue, { connection: connection.duplicate() });
  // waitUntilFinished adds listeners per call: the straightforward design this baseline measures.
  events.setMaxListeners(0);
  queue.setMaxListeners(0);
  await events.waitUntilReady();
  const call: Call = async (op, args) => {
    // Completed jobs must outlive waitUntilFinished's state check, or a fast job is never seen finishing.
    const job = await queue.add(op, { op, args }, { removeOnComplete: { count: 10_000 }, removeOnFail: { count: 10_000 } });
    // waitUntilFinished can miss a fast job's finish notification (the race userops is built to
    // avoid): bounded, such a call counts as an error instead of hanging the run.
    return job.waitUntilFinished(events, 15_000);
  };
  return {
    call,
    close: async () => {
      await events.close();
      await queue.close();
      connection.disconnect();
    },
  };
}

/** One system a producer drives: how to call it, and what its calls did. */
interface Driven {
  call: Call;
  close: () => Promise<void>;
  histogram: hdr.Histogram;
  /** Users each caller has created, the targets of its gets and updates. */
  created: string[][];
  ops: number;
  errors: number;
}

async function open(task: ProducerTask): Promise<Driven> {
  const { call, close } = task.system === 'userops' ? useropsCaller(task) : await baselineCaller(task);
  const histogram = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: 3 });
  return { call, close, histogram, created: Array.from({ length: task.concurrency }, () => []), ops: 0, errors: 0 };
}

async function run(task: ProducerTask): Promise<ProducerReport> {
  const systems = [await open(task), ...(task.alternate ? [await open({ ...task, ...task.alternate })] : [])];
  // Seed each caller with a user so gets and updates always have a target. The baseline's
  // waitUntilFinished can miss a finish (see baselineCaller): counted as an error, not a crash.
  for (const s of task.existing ? [] : systems) {
    await Promise.all(
      s.created.map(async (mine, c) => {
        const nickname = `seed-${task.id}-${c}`;
        await s.call('user.create', { nickname, fullName: 'Seed', email: `${nickname}@example.com` }).catch(() => s.errors++);
        mine.push(nickname);
      }),
    );
  }
  let seq = 0;
  const once = async (s: Driven, c: number) => {
    const mine = s.created[c] as string[];
    const roll = Math.random() * 100;
    let op: string;
    let args: Record<string, unknown>;
    if (roll < task.mix.create) {
      const nickname = `u-${task.id}-${c}-${seq++}`;
      op = 'user.create';
      args = { nickname, fullName: 'Bench User', email: `${nickname}@example.com` };
    } else {
      const nickname = task.existing ? `g${Math.floor(Math.random() * task.existing)}` : (mine[Math.floor(Math.random() * mine.length)] as string);
      op = roll < task.mix.create + task.mix.get ? 'user.get' : 'user.update';
      args = { nickname, fullName: `Renamed ${seq++}` };
    }
    const t0 = performance.now();
    try {
      await s.call(op, args);
      if (op === 'user.create') mine.push(args.nickname as string);
    } catch {
      s.errors++;
    }
    s.histogram.recordValue(Math.max(1, Math.round((performance.now() - t0) * 1000)));
    s.ops++;
  };
  send('started');
  const cpuBefore = process.cpuUsage();
  const started = performance.now();
  const deadline = started + task.durationMs;
  await Promise.all(
    Array.from({ length: task.concurrency }, async (_, c) => {
      // With a second system, one call to each in turn.
      while (performance.now() < deadline) for (const s of systems) await once(s, c);
    }),
  );
  const elapsedMs = performance.now() - started;
  const cpu = process.cpuUsage(cpuBefore);
  for (const s of systems) await s.close();
  const [first, second] = systems.map((s) => ({ ops: s.ops, errors: s.errors, histogram: hdr.encodeIntoCompressedBase64(s.histogram), elapsedMs, cpuUs: cpu.user + cpu.system }));
  return { ...(first as ProducerReport), ...(second ? { alternate: second } : {}) };
}

process.once('message', (task: ProducerTask) => {
  // A call that never settles is a finding, not a reason to hang the whole benchmark.
  setTimeout(() => {
    console.error(`producer ${task.id}: calls still pending 60 s after the run ended`);
    process.exit(2);
  }, task.durationMs + 60_000).unref();
  run(task).then(
    (report) => send(report, () => process.exit(0)),
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
});
