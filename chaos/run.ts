/**
 * `npm run chaos`: every fault scenario at full scale against real processes, and a table of what
 * the callers were told against what the database holds. Exits 1 if anything was lost, doubled,
 * reported wrongly or left hanging, or if a scenario's own expectation failed.
 */
import { Command, InvalidArgumentError } from 'commander';

import { FULL, type Scale, SCENARIOS, type ScenarioResult, SHORT } from './scenarios.js';
import { isClean } from './verify.js';

const names = SCENARIOS.map((s) => s.name);

const program = new Command('chaos')
  .option('--only <names>', `comma-separated scenarios (${names.join(', ')})`, (value) => {
    const picked = value.split(',').map((n) => n.trim());
    const unknown = picked.filter((n) => !names.includes(n));
    if (unknown.length > 0) throw new InvalidArgumentError(`unknown scenario(s) ${unknown.join(', ')}; expected some of ${names.join(', ')}`);
    return picked;
  })
  .option('--short', 'the short scale npm test uses')
  .option('--json', 'print results as JSON')
  .parse();
const opts = program.opts<{ only?: string[]; short?: boolean; json?: boolean }>();
const scale: Scale = opts.short ? SHORT : FULL;

type Row = { name: string; what: string } & ({ result: ScenarioResult } | { error: string });

const rows: Row[] = [];
for (const s of SCENARIOS.filter((s) => !opts.only || opts.only.includes(s.name))) {
  if (!opts.json) process.stderr.write(`… ${s.name}: ${s.what}\n`);
  try {
    rows.push({ name: s.name, what: s.what, result: await s.run(scale) });
  } catch (err) {
    rows.push({ name: s.name, what: s.what, error: err instanceof Error ? err.message : String(err) });
  }
}

const passed = (r: Row) => 'result' in r && isClean(r.result.verdict) && r.result.failures.length === 0;

if (opts.json) {
  process.stdout.write(`${JSON.stringify({ scale, rows: rows.map((r) => ({ ...r, passed: passed(r) })) }, null, 2)}\n`);
} else {
  const seconds = (ms: number | undefined) => (ms === undefined ? '-' : `${(ms / 1000).toFixed(1)} s`);
  const lines = [
    `Scale: ${scale.callers} callers over 2 clients, faults held ${scale.holdMs} ms, call timeout ${scale.timeoutMs} ms.`,
    '',
    '| scenario | sent | resolved | rejected, by code | lost | doubled | phantom | stale | unsettled | max settle | recovery | verdict |',
    '| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |',
  ];
  for (const r of rows) {
    if ('error' in r) {
      lines.push(`| ${r.name} | | | | | | | | | | | could not run: ${r.error} |`);
      continue;
    }
    const v = r.result.verdict;
    const rejected = Object.entries(v.rejected).map(([code, n]) => `${code} ${n}`).join(', ') || 'none';
    lines.push(
      `| ${r.name} | ${v.sent} | ${v.resolved} | ${rejected} | ${v.lost} | ${v.doubled} | ${v.phantom} | ${v.stale} | ${v.unsettled} | ` +
        `${seconds(v.maxSettleMs)} | ${seconds(r.result.recoveryMs)} | ${passed(r) ? 'ok' : 'FAILED'} |`,
    );
  }
  lines.push('');
  for (const r of rows) {
    if (!('result' in r)) continue;
    const details = [...r.result.notes, ...r.result.failures.map((f) => `FAILED: ${f}`), ...r.result.verdict.problems];
    if (r.result.verdict.foreignRows > 0) details.push(`FAILED: ${r.result.verdict.foreignRows} rows no caller created`);
    if (details.length > 0) lines.push(`- ${r.name}: ${details.join('; ')}`);
  }
  process.stdout.write(`${lines.join('\n')}\n`);
}
process.exitCode = rows.every(passed) ? 0 : 1;
