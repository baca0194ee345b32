/**
 * Runs the real `userops` command (from source, through tsx) as a child process.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const ARGS = ['--import', 'tsx', 'src/cli/main.ts'];

/** What a finished command printed and how it exited. */
export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

function childEnv(env: Record<string, string | undefined>): NodeJS.ProcessEnv {
  // Start from a clean slate for userops' own variables so the caller's shell cannot leak in.
  const base = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith('USEROPS_') && k !== 'REDIS_URL' && k !== 'LOG_LEVEL'),
  );
  // Off unless a test asks for it: parallel test files would all want the default port.
  return { ...base, USEROPS_HTTP_PORT: '0', ...env };
}

/** Starts `userops <args>`: the process, for signals, and what it printed once it has exited. */
export function spawnCli(args: string[], env: Record<string, string | undefined> = {}): { child: ChildProcess; result: Promise<CliResult> } {
  const started = Date.now();
  const child = spawn(process.execPath, [...ARGS, ...args], { cwd: ROOT, env: childEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const result = new Promise<CliResult>((resolve) => child.once('close', (code) => resolve({ code, stdout, stderr, ms: Date.now() - started })));
  return { child, result };
}

/** Runs `userops <args>` to completion. */
export function runCli(args: string[], env: Record<string, string | undefined> = {}): Promise<CliResult> {
  return spawnCli(args, env).result;
}

/** A `userops consumer` process with its log lines collected. */
export interface ConsumerProcess {
  child: ChildProcess;
  lines: string[];
  /** Resolves when a log line matches `pattern`. */
  waitFor(pattern: RegExp): Promise<string>;
  /** Resolves with the exit code once the process has exited. */
  exited: Promise<number | null>;
}

/** Starts `userops consumer` with `env`. */
export function spawnConsumer(env: Record<string, string | undefined>): ConsumerProcess {
  const child = spawn(process.execPath, [...ARGS, 'consumer'], { cwd: ROOT, env: childEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: string[] = [];
  const waiters: { pattern: RegExp; resolve: (l: string) => void }[] = [];
  let buffer = '';
  const onData = (d: Buffer) => {
    buffer += d.toString();
    const parts = buffer.split('\n');
    buffer = parts.pop() ?? '';
    for (const line of parts) {
      lines.push(line);
      for (const w of waiters.filter((w) => w.pattern.test(line))) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(line);
      }
    }
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return {
    child,
    lines,
    exited,
    waitFor(pattern) {
      const seen = lines.find((l) => pattern.test(l));
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve) => waiters.push({ pattern, resolve }));
    },
  };
}

/**
 * Starts `userops consumer` with `env`, killed at teardown if still running; resolves once it
 * logs that it is ready.
 */
export async function startCliConsumer(t: { add<T>(value: T, step: (v: T) => unknown): T }, env: Record<string, string | undefined>): Promise<ConsumerProcess> {
  const proc = t.add(spawnConsumer(env), async (p) => {
    if (p.child.exitCode === null) p.child.kill('SIGKILL');
    await p.exited;
  });
  await proc.waitFor(/consumer ready/);
  return proc;
}
