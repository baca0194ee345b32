/**
 * The chaos scenarios: each runs load through real clients against real processes, breaks
 * something, lets it recover, and checks every call against the SQLite file. `npm run chaos` runs
 * them at full scale; test/chaos.test.ts runs them short.
 */
import { execFileSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, unlinkSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { withDeadline } from '../src/redis.js';
import type { ConsumerProcess } from '../test/helpers/cli.js';
import { freePort } from '../test/helpers/redis-server.js';
import { Stack } from './stack.js';
import { type Verdict, verify } from './verify.js';

/** How hard a run pushes. */
export interface Scale {
  /** Concurrent callers, spread over two clients. */
  callers: number;
  /** Successful calls to wait for between steps. */
  okBetween: number;
  /** How long a fault is held before it is cleared, in ms. */
  holdMs: number;
  /** Every call's timeout. */
  timeoutMs: number;
}

/** `npm run chaos` */
export const FULL: Scale = { callers: 64, okBetween: 500, holdMs: 3000, timeoutMs: 30_000 };
/** `npm test` */
export const SHORT: Scale = { callers: 16, okBetween: 60, holdMs: 1000, timeoutMs: 20_000 };

/** What a scenario found. */
export interface ScenarioResult {
  verdict: Verdict;
  /** From the fault being cleared to the first call succeeding after it, in ms. */
  recoveryMs?: number;
  /** Expectations of this scenario beyond the common verdict that did not hold. */
  failures: string[];
  notes: string[];
}

/** One scenario. */
export interface Scenario {
  name: string;
  /** One line for the report. */
  what: string;
  /** Runs the scenario; throws only if it could not be run at all. */
  run(scale: Scale): Promise<ScenarioResult>;
}

/** A small filesystem of the scenario's own, holding the database folder. */
interface Disk {
  mountPoint: string;
  dir: string;
  release: () => void;
}

type Out = { failures: string[]; notes: string[]; clearedAt?: number };
type Body = (stack: Stack, scale: Scale, out: Out, disk: Disk | undefined) => Promise<void>;

/**
 * The frame every scenario shares: a stack with one consumer and load running, the scenario's
 * body, then settle, verify and tear down.
 */
function scenario(name: string, what: string, body: Body, options: { disk?: boolean } = {}): Scenario {
  return {
    name,
    what,
    async run(scale) {
      const disk = options.disk ? smallDisk(name) : undefined;
      const stack = await Stack.start({ timeoutMs: scale.timeoutMs, ...(disk ? { dbDir: disk.dir } : {}) });
      const out: Out = { failures: [], notes: [] };
      try {
        await stack.startConsumer();
        const load = stack.startLoad(2, scale.callers);
        await load.waitForOk(scale.okBetween);
        await body(stack, scale, out, disk);
        await stack.settle();
        // The callers' jobs must never fail (hostile jobs, named so, are meant to).
        const failed = (await stack.admin.queue.getFailed()).filter((job) => job.name !== HOSTILE);
        if (failed.length > 0) out.failures.push(`${failed.length} job(s) failed: ${failed.map((j) => j.failedReason).join('; ').slice(0, 300)}`);
        const verdict = verify(stack.dbPath, load.calls, stack.tag);
        const firstOk = out.clearedAt === undefined ? undefined : load.firstOkAfter(out.clearedAt);
        return {
          verdict,
          ...(firstOk !== undefined && out.clearedAt !== undefined ? { recoveryMs: firstOk - out.clearedAt } : {}),
          failures: out.failures,
          notes: out.notes,
        };
      } finally {
        await stack.close();
        stack.removeFiles();
        disk?.release();
      }
    },
  };
}

const consumerSigkill = scenario('consumer-sigkill', 'consumer SIGKILLed three times in a few seconds under load', async (stack, scale, out) => {
  for (let i = 0; i < 3; i++) {
    const [victim] = stack.live;
    if (victim) await stack.stopConsumer(victim, 'SIGKILL');
    // Restarted at once, as a supervisor would; the next kill may land while it is still starting.
    await stack.startConsumer(false);
    if (i === 2) out.clearedAt = Date.now();
    else await sleep(scale.holdMs);
  }
  await stack.load?.waitForOk(scale.okBetween);
});

const consumerSigterm = scenario('consumer-sigterm', 'consumer stopped with SIGTERM under load, then restarted', async (stack, scale, out) => {
  const [victim] = stack.live;
  if (!victim) throw new Error('no consumer running');
  const { code, ms } = await stack.stopConsumer(victim, 'SIGTERM');
  out.notes.push(`drained and exited ${String(code)} in ${ms} ms`);
  if (code !== 0) out.failures.push(`SIGTERM: exit code ${String(code)}, expected 0`);
  if (ms > 10_000) out.failures.push(`SIGTERM: took ${ms} ms to exit, more than 10 s`);
  await stack.startConsumer(false);
  out.clearedAt = Date.now();
  await stack.load?.waitForOk(scale.okBetween);
});

const redisRestart = scenario('redis-restart', 'Redis SIGKILLed under load, restarted from its AOF', async (stack, scale, out) => {
  await stack.redis.kill('SIGKILL');
  await sleep(scale.holdMs);
  await stack.redis.restart();
  out.clearedAt = Date.now();
  await stack.load?.waitForOk(scale.okBetween);
  if (stack.live.length === 0) out.failures.push('the consumer exited when Redis went away');
});

const lostReplies = scenario('lost-replies', 'replies trimmed away and reply readers disconnected', async (stack, scale, out) => {
  const redis = stack.admin.redis;
  const until = Date.now() + 2 * scale.holdMs;
  let trims = 0;
  let kills = 0;
  while (Date.now() < until) {
    // Every client's reply stream, and BullMQ's events stream, which nobody should depend on.
    const streams = [`bull:${stack.queue}:events`, ...(await redis.keys(`bull:${stack.queue}:userops:reply:*`))];
    for (const key of streams) await redis.xtrim(key, 'MAXLEN', 0);
    trims++;
    if (trims % 5 === 0) {
      // The clients' reply readers are the connections blocked in XREAD.
      const list = await redis.client('LIST');
      for (const line of String(list).split('\n').filter((l) => l.includes('cmd=xread'))) {
        const id = /\bid=(\d+)/.exec(line)?.[1];
        if (id) {
          await redis.client('KILL', 'ID', id);
          kills++;
        }
      }
    }
    await sleep(100);
  }
  out.clearedAt = Date.now();
  out.notes.push(`reply streams emptied ${trims} times, ${kills} reply readers disconnected`);
  await stack.load?.waitForOk(scale.okBetween);
});

const standbyTakeover = scenario('standby-takeover', 'two consumers on one queue; the writer SIGKILLed', async (stack, scale, out) => {
  const standby = await stack.startConsumer();
  await standby.waitFor(/standing by/);
  const writer = stack.live.find((c) => c !== standby);
  if (!writer) throw new Error('no writer running');
  if (standby.lines.some((l) => l.includes('writer role taken'))) out.failures.push('the second consumer became a writer while the first held the lease');
  await stack.stopConsumer(writer, 'SIGKILL');
  out.clearedAt = Date.now();
  await standby.waitFor(/writer role taken/);
  out.notes.push(`standby took the writer role ${Date.now() - out.clearedAt} ms after the kill`);
  await stack.load?.waitForOk(scale.okBetween);
});

/** The name the hostile-input scenario gives its jobs. */
const HOSTILE = 'hostile';

/** Jobs another service might add: every one must fail with a reason or return per-op errors. */
function hostileJobs(): unknown[] {
  const deep: Record<string, unknown> = {};
  let cursor = deep;
  for (let i = 0; i < 1000; i++) cursor = cursor.next = {};
  return [
    null,
    'a string',
    42,
    [],
    { v: 1 },
    { v: 2, ops: [] },
    { v: 1, ops: 'nope' },
    { v: 1, ops: [{ op: 'user.drop', args: {} }] },
    { v: 1, ops: [{ op: 'user.create', args: { nickname: 7, fullName: [], email: {} } }] },
    { v: 1, ops: Array.from({ length: 10_000 }, () => ({ op: 'user.get', args: { nickname: 'x' } })) },
    { v: 1, ops: [{ op: 'user.create', args: { nickname: 'big', fullName: 'x'.repeat(4 * 1024 * 1024), email: 'big@example.com' } }] },
    { v: 1, ops: [{ op: 'user.get', args: deep }] },
    JSON.parse('{"v":1,"ops":[{"op":"user.create","args":{"__proto__":{"admin":true},"nickname":"proto","fullName":"P","email":"p@example.com"}}]}'),
    { v: 1, ops: [{ op: 'user.update', args: { nickname: 'constructor', constructor: { prototype: { polluted: true } } } }] },
  ];
}

const hostileInput = scenario('hostile-input', 'malformed and hostile jobs added by another service under load', async (stack, scale, out) => {
  const added = [];
  for (const data of hostileJobs()) added.push(await stack.admin.queue.add(HOSTILE, data));
  await stack.load?.waitForOk(scale.okBetween);
  const states = await Promise.all(added.map((job) => job.getState()));
  const failed = states.filter((state) => state === 'failed').length;
  const answered = states.filter((state) => state === 'completed').length;
  out.notes.push(`${failed} hostile jobs failed with a reason, ${answered} answered with per-op errors`);
  if (failed + answered !== added.length) out.failures.push(`hostile jobs left unfinished: ${states.join(', ')}`);
  if (stack.live.length === 0) out.failures.push('the consumer exited');
  if (({} as Record<string, unknown>).admin !== undefined) out.failures.push('Object.prototype was polluted');
});

/** A 24 MiB tmpfs for the database, so the disk can be filled or made read-only without touching the machine's. */
function smallDisk(scenarioName: string): Disk {
  const mountPoint = mkdtempSync(join(tmpdir(), 'userops-disk-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=24m', 'tmpfs', mountPoint], { stdio: 'pipe' });
  } catch (err) {
    rmSync(mountPoint, { recursive: true, force: true });
    const why = err instanceof Error ? err.message.split('\n')[0] : String(err);
    throw new Error(`${scenarioName} needs to mount a small tmpfs (run as root, as CI does): ${why}`);
  }
  return {
    mountPoint,
    dir: join(mountPoint, 'db'),
    release: () => {
      execFileSync('umount', [mountPoint], { stdio: 'pipe' });
      rmSync(mountPoint, { recursive: true, force: true });
    },
  };
}

/** Writes zeros to `path` until the filesystem refuses. */
function fill(path: string): number {
  const fd = openSync(path, 'w');
  const chunk = Buffer.alloc(64 * 1024);
  let bytes = 0;
  try {
    for (;;) bytes += writeSync(fd, chunk);
  } catch {
    return bytes;
  } finally {
    closeSync(fd);
  }
}

const diskFull = scenario(
  'disk-full',
  'the database disk fills up under load, then space is freed',
  async (stack, scale, out, disk) => {
    if (!disk) throw new Error('no disk');
    const filler = join(disk.mountPoint, 'filler');
    // A consumer with its HTTP server, taking over from the frame's, so /readyz can be asked too.
    const port = await freePort();
    const consumer = await stack.startConsumer(true, port);
    const [first] = stack.live;
    if (first && first !== consumer) await stack.stopConsumer(first, 'SIGTERM');
    await consumer.waitFor(/writer role taken/);
    out.notes.push(`filled the disk with ${Math.round(fill(filler) / 1024)} KiB`);
    // The daemon must say why it is stuck: the storage error, by its SQLite code, in its log and
    // on /readyz, where an alert would look.
    await expectLog(consumer, /SQLITE_FULL/, scale, out, 'the consumer never logged SQLITE_FULL while the disk was full');
    const full = await readyz(port);
    if (full.status !== 503 || !full.sqlite.includes('SQLITE_FULL')) out.failures.push(`/readyz while full: ${full.status} ${full.sqlite}`);
    await sleep(scale.holdMs);
    unlinkSync(filler);
    out.clearedAt = Date.now();
    await stack.load?.waitForOk(scale.okBetween);
    const freed = await readyz(port);
    if (freed.status !== 200) out.failures.push(`/readyz after space was freed: ${freed.status} ${freed.sqlite}`);
    if (stack.live.length === 0) out.failures.push('the consumer exited');
  },
  { disk: true },
);

const diskReadonly = scenario(
  'disk-readonly',
  'the consumer restarts onto a read-only disk under load, which is later made writable',
  async (stack, scale, out, disk) => {
    if (!disk) throw new Error('no disk');
    const [running] = stack.live;
    if (!running) throw new Error('no consumer running');
    // Linux refuses to make a filesystem read-only while a process has a file open for writing,
    // so the consumer stops first (as it would for a redeploy) and comes back to a read-only disk.
    await stack.stopConsumer(running, 'SIGTERM');
    execFileSync('mount', ['-o', 'remount,ro', disk.mountPoint], { stdio: 'pipe' });
    const consumer = await stack.startConsumer(false);
    await expectLog(consumer, /cannot be written/, scale, out, 'the consumer never said the database cannot be written');
    await sleep(scale.holdMs);
    if (consumer.child.exitCode !== null) out.failures.push(`the consumer exited (${consumer.child.exitCode}) instead of waiting`);
    execFileSync('mount', ['-o', 'remount,rw', disk.mountPoint], { stdio: 'pipe' });
    out.clearedAt = Date.now();
    await consumer.waitFor(/consumer ready/);
    await stack.load?.waitForOk(scale.okBetween);
  },
  { disk: true },
);

/** The consumer's /readyz answer: its status and what it says of SQLite. */
async function readyz(port: number): Promise<{ status: number; sqlite: string }> {
  const res = await fetch(`http://127.0.0.1:${port}/readyz`);
  const body = (await res.json()) as { sqlite?: string };
  return { status: res.status, sqlite: String(body.sqlite) };
}

/** Waits (up to half the call timeout) for `consumer` to log a line matching `pattern`. */
async function expectLog(consumer: ConsumerProcess, pattern: RegExp, scale: Scale, out: Out, failure: string): Promise<void> {
  // withDeadline clears its timer: a bare sleep would hold the process open for up to 15 s after.
  const said = await withDeadline(consumer.waitFor(pattern), scale.timeoutMs / 2, () => new Error('not said')).catch(() => undefined);
  if (said) out.notes.push(`consumer said: ${summarize(said)}`);
  else out.failures.push(failure);
}

/** A pino line, shortened to its message and SQLite code. */
function summarize(line: string): string {
  try {
    const { msg, code } = JSON.parse(line) as { msg?: string; code?: string };
    return code ? `${msg} (${code})` : String(msg);
  } catch {
    return line.slice(0, 120);
  }
}

/** Every scenario, in the order `npm run chaos` runs them. */
export const SCENARIOS: readonly Scenario[] = [consumerSigkill, consumerSigterm, redisRestart, lostReplies, standbyTakeover, hostileInput, diskFull, diskReadonly];
