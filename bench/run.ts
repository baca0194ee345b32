/**
 * `npm run bench`: userops against the per-op baseline and the raw SQLite ceiling, in one run, on
 * real processes (a redis-server, the consumer, P producer processes). Prints figures; asserts
 * nothing. See docs/benchmarks.md for the latest run.
 */
import { type ChildProcess, fork, spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { Queue } from 'bullmq';
import { SingleBar } from 'cli-progress';
import { Command, InvalidArgumentError, Option } from 'commander';
import * as hdr from 'hdr-histogram-js';
import { Redis } from 'ioredis';
import { pino } from 'pino';

import { applyJob } from '../src/consumer/apply.js';
import { startPrivateRedis } from '../src/consumer/private-redis.js';
import Database from '../src/consumer/sqlite-driver.js';
import { Store } from '../src/consumer/store.js';
import { freePort } from '../test/helpers/redis-server.js';
import type { ProducerMessage, ProducerReport, ProducerTask } from './producer.js';
import { type BenchResults, type GrowthEndToEnd, type LoadRow, writeReport } from './report.js';

/** How long a consumer may take to say it is ready. */
const READY_TIMEOUT_MS = 60_000;

/** Linux's USER_HZ, the unit of CPU times in /proc/<pid>/stat. */
const CLOCK_TICKS = 100;

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const TSX = ['--import', 'tsx'];

type Mix = ProducerTask['mix'];

function parseMix(value: string): Mix {
  const mix: Mix = { create: 0, get: 0, update: 0 };
  for (const part of value.split(',')) {
    const [name, pct] = part.split('=');
    if (!name || !(name in mix) || !pct || !/^\d+$/.test(pct)) {
      throw new InvalidArgumentError(`expected create=N,get=N,update=N, got "${value}"`);
    }
    mix[name as keyof Mix] = Number(pct);
  }
  if (mix.create + mix.get + mix.update !== 100) throw new InvalidArgumentError(`percentages must add up to 100, got "${value}"`);
  return mix;
}

function positive(what: string, allowZero = false) {
  return (value: string) => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isInteger(n) || n < (allowZero ? 0 : 1)) {
      throw new InvalidArgumentError(`${what}: expected a whole number of at least ${allowZero ? 0 : 1}, got "${value}"`);
    }
    return n;
  };
}

/** A comma-separated list of positive whole numbers, checked by commander like any option. */
function positiveList(what: string) {
  const one = positive(what);
  return (value: string) => value.split(',').map(one);
}

const program = new Command('bench')
  .option('--producers <P>', 'producer processes', positive('--producers'), 4)
  .addOption(new Option('--concurrency <list>', 'concurrent calls per producer, comma-separated sweep').argParser(positiveList('--concurrency')).default([1, 8, 64], '1,8,64'))
  .option('--duration <s>', 'seconds per load run', positive('--duration'), 10)
  .option('--repeat <n>', 'runs of each sweep point; the median run is reported, with the spread', positive('--repeat'), 3)
  .addOption(new Option('--mix <mix>', 'op mix in percent').argParser(parseMix).default(parseMix('create=50,get=25,update=25'), 'create=50,get=25,update=25'))
  .option('--backlog <n>', 'ops queued before the consumer starts (0 skips)', positive('--backlog', true), 1_000_000)
  .option('--growth <n>', 'table size for the cost-per-op check (0 skips)', positive('--growth', true), 1_000_000)
  .option('--no-baseline', 'skip the per-op baseline')
  .option('--no-write', 'do not write docs/benchmarks.md')
  .option('--json', 'print results as JSON only')
  .parse();

const opts = program.opts<{
  producers: number;
  concurrency: number[];
  duration: number;
  repeat: number;
  mix: Mix;
  backlog: number;
  growth: number;
  baseline: boolean;
  write: boolean;
  json: boolean;
}>();
const sweep = opts.concurrency;
const say = (line: string) => {
  if (!opts.json) process.stderr.write(`${line}\n`);
};

const work = mkdtempSync(join(tmpdir(), 'userops-bench-'));
let queueSeq = 0;

/** A consumer process (userops or baseline) and its peak RSS. */
async function startConsumer(system: 'userops' | 'baseline', redisUrl: string, queue: string, dbPath: string) {
  const child: ChildProcess =
    system === 'userops'
      ? spawn(join(ROOT, 'dist/cli/main.js'), ['consumer'], { // as `npm start` runs it: the shebang's V8 flags apply
          cwd: ROOT,
          // Metrics are still recorded with the server off; a fixed port could clash with a running consumer.
          env: { ...process.env, REDIS_URL: redisUrl, USEROPS_QUEUE: queue, USEROPS_DB: dbPath, LOG_LEVEL: 'info', USEROPS_HTTP_PORT: '0' },
          stdio: ['ignore', 'pipe', 'inherit'],
        })
      : spawn(process.execPath, [...TSX, 'bench/baseline-consumer.ts', redisUrl, queue, dbPath], {
          cwd: ROOT,
          stdio: ['ignore', 'pipe', 'inherit'],
        });
  await new Promise<void>((resolve, reject) => {
    let buffer = '';
    // A consumer that never gets ready (waiting for a database it cannot write, say) must not
    // hang the benchmark: give up, and show what it said.
    const deadline = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${system} consumer not ready after ${READY_TIMEOUT_MS / 1000} s; it said:\n${buffer.slice(-2000)}`));
    }, READY_TIMEOUT_MS);
    child.stdout?.on('data', (d: Buffer) => {
      buffer += d.toString();
      if (buffer.includes('consumer ready')) {
        clearTimeout(deadline);
        resolve();
      }
    });
    child.once('error', (err) => {
      clearTimeout(deadline);
      reject(new Error(`${system} consumer could not start: ${err.message}${system === 'userops' ? ' (npm run bench builds dist/ first)' : ''}`));
    });
    child.once('exit', (code) => {
      clearTimeout(deadline);
      reject(new Error(`${system} consumer exited with ${code}`));
    });
  });
  const exited = new Promise((r) => child.once('exit', r));
  return {
    /** CPU time (user + system) used so far, in seconds, from /proc; undefined where there is none. */
    cpuSeconds(): number | undefined {
      try {
        // Fields 14 and 15 (utime, stime), counted after the command name, which may hold spaces.
        const fields = readFileSync(`/proc/${child.pid}/stat`, 'utf8').split(') ')[1]?.split(' ');
        return fields ? (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS : undefined;
      } catch {
        return undefined;
      }
    },
    /** Peak resident set (VmHWM) in MB, read from /proc before the process exits. */
    peakRssMb(): number | undefined {
      try {
        const kb = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))?.[1];
        return kb ? Number(kb) / 1024 : undefined;
      } catch {
        return undefined;
      }
    },
    async stop() {
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/**
 * Empties Redis and compacts its AOF, waiting for the rewrite to finish, so that every run starts
 * from the same state: without it, each run inherited the jobs (and the AOF) of the runs before,
 * and a background rewrite forked by that backlog could land in any later run.
 */
async function freshRedis(url: string): Promise<void> {
  const redis = new Redis(url, { maxRetriesPerRequest: 1 });
  try {
    await redis.flushall();
    await redis.bgrewriteaof().catch(() => undefined); // one may already be running
    for (;;) {
      const info = await redis.info('persistence');
      if (/aof_rewrite_in_progress:0/.test(info) && /aof_rewrite_scheduled:0/.test(info)) break;
      await new Promise((r) => setTimeout(r, 50));
    }
  } finally {
    redis.disconnect();
  }
}

type System = 'userops' | 'baseline';

/** A database filled before the consumer starts on it, and the mix run against its users. */
interface Population {
  users: number;
  /** A closed, checkpointed database file holding the users, copied for the run. */
  template: string;
  mix: Mix;
}

/**
 * One load run: P producer processes x C callers against `systems[0]`, or, given two systems, one
 * producer calling each in turn (the idle comparison), so both see the disk at the same moments.
 */
async function runLoad(systems: readonly [System] | readonly [System, System], redisUrl: string, producers: number, concurrency: number, durationMs: number, population?: Population): Promise<LoadRow[]> {
  await freshRedis(redisUrl);
  const queues = systems.map(() => `bench${++queueSeq}`);
  const consumers: Awaited<ReturnType<typeof startConsumer>>[] = [];
  // The consumers' and Redis's CPU, sampled when every producer has begun its timed run and again
  // when the first one ends: a window in which all of them were calling.
  const sample = async (): Promise<CpuSample> => ({ at: performance.now(), consumers: consumers.map((c) => c.cpuSeconds()), redis: await redisCpuSeconds(redisUrl) });
  let started = 0;
  let windowStart: Promise<CpuSample> | undefined;
  let windowEnd: Promise<CpuSample> | undefined;
  let reports: ProducerReport[];
  const peakRssMb: (number | undefined)[] = [];
  try {
    for (const [i, system] of systems.entries()) {
      const dbPath = join(work, `${queues[i]}.db`);
      if (population) copyFileSync(population.template, dbPath);
      consumers.push(await startConsumer(system, redisUrl, queues[i] as string, dbPath));
    }
    const [first, second] = systems;
    reports = await Promise.all(
      Array.from({ length: producers }, (_, id) => {
        const child = fork(join(ROOT, 'bench/producer.ts'), { execArgv: TSX, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
        const task: ProducerTask = {
          system: first, redisUrl, queue: queues[0] as string, id, concurrency, durationMs, mix: population?.mix ?? opts.mix,
          ...(second ? { alternate: { system: second, queue: queues[1] as string } } : {}),
          ...(population ? { existing: population.users } : {}),
        };
        child.send(task);
        return new Promise<ProducerReport>((resolve, reject) => {
          child.on('message', (m: ProducerMessage) => {
            if (m === 'started') {
              if (++started === producers) windowStart = sample();
              return;
            }
            if (windowStart && !windowEnd) windowEnd = sample();
            resolve(m);
          });
          child.once('exit', (code) => code !== 0 && reject(new Error(`producer exited with ${code}`)));
        });
      }),
    );
  } finally {
    // Even when a producer fails, so a failed run leaves no consumer behind.
    for (const consumer of consumers) {
      peakRssMb.push(consumer.peakRssMb());
      await consumer.stop();
    }
  }
  const [from, to] = [await windowStart, await windowEnd];
  return systems.map((system, i) => {
    const mine = i === 0 ? reports : reports.map((r) => r.alternate as ProducerReport);
    const merged = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: 3 });
    for (const r of mine) merged.add(hdr.decodeFromCompressedBase64(r.histogram));
    const ops = mine.reduce((n, r) => n + r.ops, 0);
    const elapsed = Math.max(...mine.map((r) => r.elapsedMs));
    const ms = (p: number) => merged.getValueAtPercentile(p) / 1000;
    const cpu = cpuPerOp(mine, ops / elapsed, from, to, i);
    return {
      system, producers, concurrency, ops,
      errors: mine.reduce((n, r) => n + r.errors, 0),
      opsPerSec: (ops / elapsed) * 1000,
      p50: ms(50), p90: ms(90), p99: ms(99),
      peakRssMb: peakRssMb[i],
      // Two systems share the producer process and Redis: only the consumers' CPU is their own.
      cpuUsPerOp: systems.length === 1 ? cpu : { ...cpu, producers: undefined, redis: undefined },
    };
  });
}

/**
 * The run with the median throughput, standing for all of them: this machine's speed drifts by a
 * fifth between identical runs minutes apart, so one run says little. Its `runs` keep every run's
 * rate, and its `errors` count the failed calls of all of them, so no failure hides in a run not shown.
 */
function medianRun(runs: LoadRow[]): LoadRow {
  const sorted = [...runs].sort((a, b) => a.opsPerSec - b.opsPerSec);
  const median = sorted[Math.floor((sorted.length - 1) / 2)] as LoadRow;
  return { ...median, errors: runs.reduce((n, r) => n + r.errors, 0), runs: runs.map((r) => r.opsPerSec) };
}

/** CPU time of the consumers and Redis at a moment of a load run (producers measure their own). */
interface CpuSample {
  at: number;
  /** Each system's consumer, in the order of the run's systems. */
  consumers: (number | undefined)[];
  redis: number | undefined;
}

/** Redis's own CPU time so far (INFO cpu), in seconds. */
async function redisCpuSeconds(url: string): Promise<number | undefined> {
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  try {
    await redis.connect();
    const info = await redis.info('cpu');
    const field = (name: string) => Number(new RegExp(`^${name}:([\\d.]+)`, 'm').exec(info)?.[1]);
    return field('used_cpu_user') + field('used_cpu_sys');
  } catch {
    return undefined;
  } finally {
    redis.disconnect();
  }
}

/**
 * CPU microseconds per op, by process: the producers' from their own timed runs, the consumer's
 * and Redis's from the window between two samples, whose ops are estimated at the run's rate.
 */
function cpuPerOp(reports: ProducerReport[], opsPerMs: number, from: CpuSample | undefined, to: CpuSample | undefined, consumer = 0): LoadRow['cpuUsPerOp'] {
  const producers = (reports.reduce((n, r) => n + r.cpuUs, 0) / reports.reduce((n, r) => n + r.ops, 0)) || undefined;
  const windowOps = from && to ? (to.at - from.at) * opsPerMs : 0;
  const delta = (pick: (s: CpuSample) => number | undefined) => {
    const a = from && pick(from);
    const b = to && pick(to);
    return a === undefined || b === undefined || windowOps <= 0 ? undefined : ((b - a) * 1e6) / windowOps;
  };
  return { consumer: delta((s) => s.consumers[consumer]), producers, redis: delta((s) => s.redis) };
}

/** Raw better-sqlite3: batched inserts, FULL sync, 1,000 rows a transaction. */
function ceiling(durationMs = 3000): number {
  const db = new Database(join(work, 'ceiling.db'));
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.exec('CREATE TABLE users (id INTEGER PRIMARY KEY, nickname TEXT NOT NULL UNIQUE, full_name TEXT, email TEXT, created_at INTEGER, updated_at INTEGER)');
  const insert = db.prepare('INSERT INTO users (nickname, full_name, email, created_at, updated_at) VALUES (?, ?, ?, ?, ?)');
  let n = 0;
  const batch = db.transaction(() => {
    for (let i = 0; i < 1000; i++, n++) insert.run(`u${n}`, 'Bench User', `u${n}@example.com`, n, n);
  });
  const started = performance.now();
  while (performance.now() - started < durationMs) batch();
  const rate = (n / (performance.now() - started)) * 1000;
  db.close();
  return rate;
}

/** Queue `total` create ops as jobs of 100 (as clients would batch them), then time the drain. */
async function backlog(redisUrl: string, total: number) {
  await freshRedis(redisUrl);
  const queueName = `bench${++queueSeq}`;
  const connection = new Redis(redisUrl, { maxRetriesPerRequest: null });
  const queue = new Queue(queueName, { connection });
  const perJob = 100;
  for (let added = 0; added < total; ) {
    const jobs = [];
    for (let j = 0; j < 1000 && added < total; j++) {
      const ops = [];
      for (let k = 0; k < perJob && added < total; k++, added++) {
        ops.push({ op: 'user.create', args: { nickname: `b${added}`, fullName: 'Backlog User', email: `b${added}@example.com` } });
      }
      jobs.push({ name: 'batch', data: { v: 1, ops } });
    }
    await queue.addBulk(jobs);
  }
  const dbPath = join(work, `${queueName}.db`);
  const consumer = await startConsumer('userops', redisUrl, queueName, dbPath);
  const started = performance.now();
  for (;;) {
    const c = await queue.getJobCounts('wait', 'active', 'failed');
    if ((c.wait ?? 0) + (c.active ?? 0) === 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const seconds = (performance.now() - started) / 1000;
  const peakRssMb = consumer.peakRssMb();
  const failed = await queue.getFailedCount();
  await consumer.stop();
  await queue.close();
  connection.disconnect();
  // An empty queue is not proof of work done: count what reached the database.
  const db = new Database(dbPath, { readonly: true });
  const applied = (db.prepare('SELECT count(*) AS n FROM users').get() as { n: number }).n;
  db.close();
  return { ops: total, seconds, opsPerSec: total / seconds, peakRssMb, failedJobs: failed, applied };
}

/**
 * Cost of get and update through the real apply path, at 1,000 users and at `size` users. Two
 * databases, filled and checkpointed first, then jobs alternate between them (swapping which goes
 * first) so both sizes see the same disk: fsync latency here drifts by milliseconds between runs.
 */
function growth(size: number) {
  const open = (name: string, users: number) => {
    copyFileSync(populated(users), join(work, name));
    return { store: new Store(join(work, name)), users };
  };
  const small = open('growth-small.db', 1000);
  const large = open('growth-large.db', size);
  let seq = 0;
  const job = (db: { store: Store; users: number }, kind: 'get' | 'update') => {
    const ops = Array.from({ length: 100 }, () => {
      const nickname = `g${Math.floor(Math.random() * db.users)}`;
      return kind === 'get' ? { op: 'user.get', args: { nickname } } : { op: 'user.update', args: { nickname, fullName: 'Renamed' } };
    });
    const started = performance.now();
    applyJob(db.store, `growth-${seq++}`, { v: 1, ops }, 1000);
    return performance.now() - started;
  };
  const perOp = { small: { get: 0, update: 0 }, large: { get: 0, update: 0 } };
  const jobs = 200;
  for (const kind of ['get', 'update'] as const) {
    for (let j = 0; j < 20; j++) {
      // warm-up, untimed
      job(small, kind);
      job(large, kind);
    }
    let smallMs = 0;
    let largeMs = 0;
    for (let j = 0; j < jobs; j++) {
      if (j % 2 === 0) {
        smallMs += job(small, kind);
        largeMs += job(large, kind);
      } else {
        largeMs += job(large, kind);
        smallMs += job(small, kind);
      }
    }
    perOp.small[kind] = (smallMs * 1000) / (jobs * 100);
    perOp.large[kind] = (largeMs * 1000) / (jobs * 100);
  }
  small.store.close();
  large.store.close();
  return { ...perOp, size };
}

/**
 * A closed database file holding users `g0` to `g{users-1}`, checkpointed so the file alone holds
 * them: made once, and copied for each growth check that needs that many.
 */
function populated(users: number): string {
  const path = join(work, `populated-${users}.db`);
  if (!existsSync(path)) {
    const store = new Store(path);
    const insert = store.db.prepare('INSERT INTO users (nickname, full_name, email, created_at, updated_at) VALUES (?, ?, ?, ?, ?)');
    store.db.transaction(() => {
      for (let i = 0; i < users; i++) insert.run(`g${i}`, 'Growth User', `g${i}@example.com`, i, i);
    })();
    store.db.pragma('wal_checkpoint(TRUNCATE)');
    store.close();
  }
  return path;
}

/**
 * Cost per op as the table grows, end to end: P x C callers getting (then updating) random users
 * of a database that holds 1,000 users, or `size`. Each repeat runs both sizes, in turns swapped
 * from one repeat to the next, so the machine's drift falls on both alike.
 */
async function growthEndToEnd(redisUrl: string, size: number, step: (name: string) => void): Promise<GrowthEndToEnd> {
  const concurrency = Math.max(...sweep);
  const median = async (kind: 'get' | 'update') => {
    const mix = { create: 0, get: kind === 'get' ? 100 : 0, update: kind === 'update' ? 100 : 0 };
    const runs = { small: [] as LoadRow[], large: [] as LoadRow[] };
    for (let k = 1; k <= opts.repeat; k++) {
      for (const which of k % 2 === 1 ? (['small', 'large'] as const) : (['large', 'small'] as const)) {
        const users = which === 'small' ? 1000 : size;
        step(`${kind} at ${users} users, ${opts.producers} producers x ${concurrency} calls${opts.repeat > 1 ? `, run ${k} of ${opts.repeat}` : ''}`);
        runs[which].push(...(await runLoad(['userops'], redisUrl, opts.producers, concurrency, opts.duration * 1000, { users, template: populated(users), mix })));
      }
    }
    return { small: medianRun(runs.small), large: medianRun(runs.large) };
  };
  return { producers: opts.producers, concurrency, get: await median('get'), update: await median('update') };
}

async function main(): Promise<void> {
  const redis = await startPrivateRedis('redis-server', join(work, 'redis'), await freePort(), pino({ level: 'silent' }));
  const systems = opts.baseline ? (['userops', 'baseline'] as const) : (['userops'] as const);
  const growthRuns = opts.growth > 0 ? 2 * 2 * opts.repeat : 0;
  const loadRuns = systems.length * sweep.length * opts.repeat + 1 + growthRuns;
  const bar = opts.json || !process.stderr.isTTY ? undefined : new SingleBar({ format: 'bench [{bar}] {value}/{total} runs | {step}', hideCursor: true });
  bar?.start(loadRuns + 3, 0, { step: 'starting' });
  const step = (name: string) => {
    bar?.increment({ step: name });
    if (!bar) say(`… ${name}`);
  };
  try {
    const load: LoadRow[] = [];
    // Idle first, before anything has filled the disk's write-back cache, and both systems in one
    // run, a call to each in turn: fsync latency here drifts by milliseconds within minutes, and
    // this comparison is about one fsync.
    step(`idle latency (1 producer x 1 call${opts.baseline ? ', userops and baseline in turn' : ''})`);
    const idle = await runLoad(opts.baseline ? ['userops', 'baseline'] : ['userops'], redis.url, 1, 1, opts.duration * 1000);
    load.push(...idle.map((row) => ({ ...row, label: 'idle' as const })));
    for (const system of systems) {
      for (const c of sweep) {
        const runs: LoadRow[] = [];
        for (let k = 1; k <= opts.repeat; k++) {
          step(`${system} ${opts.producers} producers x ${c} calls${opts.repeat > 1 ? `, run ${k} of ${opts.repeat}` : ''}`);
          runs.push(...(await runLoad([system], redis.url, opts.producers, c, opts.duration * 1000)));
        }
        load.push(medianRun(runs));
      }
    }
    step(`backlog of ${opts.backlog} ops`);
    const drained = opts.backlog > 0 ? await backlog(redis.url, opts.backlog) : undefined;
    step(`cost per op at ${opts.growth} users`);
    const grown = opts.growth > 0 ? { ...growth(opts.growth), endToEnd: await growthEndToEnd(redis.url, opts.growth, step) } : undefined;
    step('ceiling: raw better-sqlite3 inserts');
    const ceilingRate = ceiling();
    bar?.stop();
    const results: BenchResults = {
      machine: {
        cpus: cpus().length,
        cpuModel: cpus()[0]?.model ?? 'unknown',
        memGiB: Math.round(totalmem() / 2 ** 30),
        node: process.version,
        date: new Date().toISOString(),
      },
      options: { producers: opts.producers, sweep, durationS: opts.duration, repeat: opts.repeat, mix: opts.mix },
      ceilingOpsPerSec: ceilingRate,
      load,
      backlog: drained,
      growth: grown,
    };
    if (opts.json) process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
    else process.stdout.write(writeReport(results, opts.write ? join(ROOT, 'docs') : undefined));
  } finally {
    bar?.stop();
    await redis.stop();
    rmSync(work, { recursive: true, force: true });
  }
}

await main();
