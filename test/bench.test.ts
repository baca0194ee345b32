import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';

import { type BenchResults, type LoadRow, writeReport } from '../bench/report.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** `npm run bench -- <args>`, as a user runs it (it builds dist/ first). */
function bench(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn('npm', ['run', '--silent', 'bench', '--', ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, stdout, stderr })));
}

describe('npm run bench', () => {
  it('runs every part at a small scale, with no call failed and every backlog op in the database', async () => {
    const docs = readFileSync(join(ROOT, 'docs/benchmarks.md'), 'utf8');
    const run = await bench(['--producers', '2', '--concurrency', '1,4', '--repeat', '2', '--duration', '1', '--backlog', '2000', '--growth', '3000', '--no-write', '--json']);
    assert.equal(run.code, 0, run.stderr);
    const r = JSON.parse(run.stdout) as BenchResults;

    assert.deepEqual(r.options.sweep, [1, 4]);
    const shape = r.load.map((row) => `${row.system} ${row.label ?? `${row.producers}x${row.concurrency}`}`);
    assert.deepEqual(shape, ['userops idle', 'baseline idle', 'userops 2x1', 'userops 2x4', 'baseline 2x1', 'baseline 2x4']);
    for (const row of r.load.filter((x) => x.system === 'userops')) {
      const name = `userops ${row.producers}x${row.concurrency}`;
      assert.ok(row.ops > 0, `${name} made no calls`);
      assert.equal(row.errors, 0, `${name}: calls failed`);
      assert.ok(row.p50 > 0 && row.p50 <= row.p90 && row.p90 <= row.p99, `${name}: percentiles out of order: ${row.p50}, ${row.p90}, ${row.p99}`);
      assert.ok((row.peakRssMb ?? 0) > 0, `${name}: no consumer RSS`);
      if (row.label) continue;
      for (const [part, us] of Object.entries(row.cpuUsPerOp)) assert.ok((us ?? 0) > 0, `${name}: no CPU time for ${part}`);
      // Run twice; the row is the slower, the median of two being the lower one.
      assert.equal(row.runs?.length, 2, `${name}: not run twice`);
      assert.equal(row.opsPerSec, Math.min(...(row.runs ?? [])));
    }

    assert.ok(r.backlog, 'no backlog drain');
    assert.equal(r.backlog.ops, 2000);
    assert.equal(r.backlog.failedJobs, 0);
    assert.equal(r.backlog.applied, 2000, 'the drain left ops unapplied');
    assert.ok(r.backlog.opsPerSec > 0);

    assert.ok(r.growth, 'no growth check');
    assert.equal(r.growth.size, 3000);
    for (const size of ['small', 'large'] as const) for (const op of ['get', 'update'] as const) assert.ok(r.growth[size][op] > 0, `no cost for ${op} at ${size}`);
    const e = r.growth.endToEnd;
    assert.ok(e, 'no end-to-end growth check');
    assert.deepEqual([e.producers, e.concurrency], [2, 4]);
    for (const op of ['get', 'update'] as const) {
      for (const size of ['small', 'large'] as const) {
        const row: LoadRow = e[op][size];
        const name = `${op} at ${size} end to end`;
        // Every get and update names a user the database was filled with: a failure is a finding.
        assert.ok(row.ops > 0, `${name}: no calls`);
        assert.equal(row.errors, 0, `${name}: calls failed`);
        assert.equal(row.runs?.length, 2, `${name}: not run twice`);
      }
    }
    assert.ok(r.ceilingOpsPerSec > 0);

    assert.equal(readFileSync(join(ROOT, 'docs/benchmarks.md'), 'utf8'), docs, '--no-write changed docs/benchmarks.md');
  });

  it('refuses a bad option by name before starting anything', async () => {
    const list = await bench(['--concurrency', '1,x']);
    assert.notEqual(list.code, 0);
    assert.match(list.stderr, /--concurrency.*expected a whole number of at least 1, got "x"/);
    const mix = await bench(['--mix', 'create=60,get=60']);
    assert.notEqual(mix.code, 0);
    assert.match(mix.stderr, /--mix.*must add up to 100/);
    // Said in one line, not a stack trace.
    for (const { stderr } of [list, mix]) assert.doesNotMatch(stderr, /^\s+at /m);
  });
});

describe('bench report', () => {
  const row = (over: Partial<LoadRow>): LoadRow => ({
    system: 'userops', producers: 4, concurrency: 64, ops: 300_000, errors: 0, opsPerSec: 30_000, p50: 5, p90: 8, p99: 12,
    peakRssMb: 120, cpuUsPerOp: { producers: 20, consumer: 20, redis: 5 }, ...over,
  });
  const results = (load: LoadRow[], backlog: Partial<NonNullable<BenchResults['backlog']>> = {}): BenchResults => ({
    machine: { cpus: 2, cpuModel: 'test', memGiB: 1, node: process.version, date: '2026-01-01T00:00:00.000Z' },
    options: { producers: 4, sweep: [64], durationS: 10, repeat: 1, mix: { create: 50, get: 25, update: 25 } },
    ceilingOpsPerSec: 400_000,
    load,
    backlog: { ops: 1000, seconds: 0.01, opsPerSec: 100_000, peakRssMb: 100, failedJobs: 0, applied: 1000, ...backlog },
  });
  const lines = (r: BenchResults) => writeReport(r).split('\n');
  const line = (r: BenchResults, start: string) => lines(r).find((l) => l.startsWith(start)) ?? assert.fail(`no line "${start}" in:\n${lines(r).join('\n')}`);
  const baseline = row({ system: 'baseline', opsPerSec: 1000 });

  it('meets a target only when every call succeeded and every op reached the database', () => {
    const clean = results([row({}), baseline]);
    assert.match(line(clean, '- Throughput at 4 x 64'), /30,000 ops\/s \(target >= 25,000\): met$/);
    assert.match(line(clean, '- Versus the per-op baseline'), /30\.0x \(target >= 10x\): met$/);
    assert.match(line(clean, '- Backlog of 1,000 ops'), /100,000 ops\/s \(target >= 20,000\): met;/);

    // Fast because its calls failed: that measures how fast they fail.
    const failing = results([row({ errors: 5 }), baseline]);
    assert.match(line(failing, '- Throughput at 4 x 64'), /30,000 ops\/s \(5 calls failed\) \(target >= 25,000\): NOT met$/);
    assert.match(line(failing, '- Versus the per-op baseline'), /\(5 calls failed\) \(target >= 10x\): NOT met$/);

    // Repeated, a point is its median run, and says how far the others were from it.
    const repeated = results([row({ opsPerSec: 26_000, runs: [26_000, 30_000, 24_000] }), baseline]);
    assert.match(line(repeated, '- Throughput at 4 x 64'), /26,000 ops\/s \(median of 3 runs: 24,000-30,000\) \(target >= 25,000\): met$/);

    // Growth is met only when the apply path and the end-to-end runs both stay within 1.2x.
    const growth = (endToEnd: Partial<LoadRow>): BenchResults => ({
      ...results([row({}), baseline]),
      growth: {
        size: 1_000_000, small: { get: 10, update: 10 }, large: { get: 11, update: 12 },
        endToEnd: { producers: 4, concurrency: 64, get: { small: row({}), large: row({ opsPerSec: 27_000 }) }, update: { small: row({}), large: row(endToEnd) } },
      },
    });
    assert.match(line(growth({ opsPerSec: 26_000 }), '- Cost per op'), /apply path: get 1\.10x, update 1\.20x; end to end at 4 x 64: get 1\.11x, update 1\.15x \(target <= 1\.2x\): met$/);
    assert.match(line(growth({ opsPerSec: 20_000 }), '- Cost per op'), /update 1\.50x \(target <= 1\.2x\): NOT met$/);
    assert.match(line(growth({ opsPerSec: 26_000, errors: 3 }), '- Cost per op'), /update 1\.15x \(3 calls failed\) \(target <= 1\.2x\): NOT met$/);

    // An empty queue with ops missing from the database is not a drain.
    const short = results([row({})], { applied: 999, failedJobs: 1 });
    assert.match(line(short, '- Backlog of 1,000 ops'), /\(only 999 of its ops applied; failed jobs: 1\) \(target >= 20,000\): NOT met;/);
  });

  it('writes the table and the chart when given a folder', () => {
    const dir = mkdtempSync(join(tmpdir(), 'userops-report-'));
    try {
      writeReport(results([row({}), baseline]), dir);
      assert.match(readFileSync(join(dir, 'benchmarks.md'), 'utf8'), /users in the database afterwards: 1,000/);
      assert.ok(existsSync(join(dir, 'benchmarks.svg')));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
