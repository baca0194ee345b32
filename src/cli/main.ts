#!/usr/bin/env -S node --max-semi-space-size=4 --heap-growing-percent=30
/**
 * The `userops` command: the daemon, one command per operation, and the demo.
 *
 * Run it as an executable (the Dockerfile, `npm start` and the bench do) so the shebang's V8 flags
 * apply. The daemon's live heap is small (~20-30 MB) but it makes garbage fast, a group of jobs at a
 * time, and V8 would let the heap grow well past it between full collections:
 * - 4 MB semi-spaces keep a group's short-lived objects from being promoted en masse: the peak RSS
 *   while draining 300k queued ops fell from ~215 MB to ~175 MB, at the same speed.
 * - Growing the heap by 30% over what survives a full collection, instead of V8's own factor: the
 *   peak RSS draining 1M ops fell from 170-187 MB to 119-122 MB. The drain ran 10-15% slower (still
 *   ~50k ops/s); 4 x 64 calls ran at the same speed. Node 20, 24 and 26 accept the flag.
 * A flag set at run time through node:v8 comes too late to change the heap's layout.
 *
 * Results go to stdout as JSON; errors go to stderr as one line, without a stack trace.
 * Exit codes: 0 success, 1 the operation failed (not found, exists, invalid input),
 * 2 bad usage or configuration, 3 infrastructure (Redis unreachable, timeout, job failed).
 */
import { readFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';

import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';

import { adminConfig, clientConfig, describeConfig, ENV_HELP } from '../config.js';
import { createLogger } from '../logger.js';
import { UserOpsClient } from '../producer/client.js';
import { ErrorCode, UserOpsError } from '../protocol/errors.js';
import { MAX_LIST_LIMIT } from '../protocol/ops.js';
import { runDemo } from './demo.js';
import { formatConfig } from './effective-config.js';
import { formatFailed, listFailed } from './failed.js';
import { RETRY_HELP, retryAll, retryJob } from './retry.js';
import { oneLineUsageErrors } from './usage-errors.js';

/** Exit codes; documented in the README. */
export const EXIT = { OK: 0, FAILED: 1, USAGE: 2, INFRA: 3 } as const;

const DOMAIN_CODES = new Set<string>([
  ErrorCode.USER_NOT_FOUND,
  ErrorCode.USER_EXISTS,
  ErrorCode.INVALID_INPUT,
  ErrorCode.JOB_NOT_FOUND,
  ErrorCode.JOB_NOT_FAILED,
]);

function exitCodeFor(err: unknown): number {
  if (err instanceof UserOpsError) {
    if (DOMAIN_CODES.has(err.code)) return EXIT.FAILED;
    if (err.code === ErrorCode.INVALID_CONFIG) return EXIT.USAGE;
  }
  return EXIT.INFRA;
}

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

/** The signal that interrupted a client command, if one did. */
let interruptedBy: NodeJS.Signals | undefined;

/** Runs a client command: one client, the result printed as JSON, the client closed. */
async function withClient(run: (client: UserOpsClient) => Promise<unknown>): Promise<void> {
  const config = clientConfig();
  // Logs go to stderr so stdout stays pure JSON for scripts.
  const client = new UserOpsClient({
    redisUrl: config.redisUrl,
    queue: config.queue,
    timeoutMs: config.timeoutMs,
    logger: createLogger(config.logLevel, process.stderr),
  });
  // Interrupted, the command closes the client rather than dying: the call's job is withdrawn if
  // no consumer has taken it, and the error printed says whether the op may still be applied.
  const onSignal = (signal: NodeJS.Signals) => {
    interruptedBy ??= signal;
    void client.close();
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const result = await run(client);
    if (result !== undefined) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await client.close();
  }
}

/** Parses an `--offset` value: a whole number, 0 or more. */
function listOffset(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n)) throw new InvalidArgumentError(`expected a whole number, 0 or more, got "${value}"`);
  return n;
}

/** Parses a `--limit` value; commander names the flag in front of the message. */
function listLimit(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isInteger(n) || n < 1 || n > MAX_LIST_LIMIT) {
    throw new InvalidArgumentError(`expected a whole number from 1 to ${MAX_LIST_LIMIT}, got "${value}"`);
  }
  return n;
}

/** Prints `result` as JSON for `--json`, else in its human form. */
function print<T>(result: T, json: boolean | undefined, human: (r: T) => string): void {
  process.stdout.write(`${json ? JSON.stringify(result, null, 2) : human(result)}\n`);
}

// The commands that open SQLite (stats, backup, consumer) are imported when run: the SQLite driver
// is an optional dependency, and the client's commands must work where only the client is installed.
function addAdminCommands(program: Command): void {
  program
    .command('stats')
    .description('queue job counts, the writer lease, and what the database holds (read-only)')
    .option('--json', 'print JSON instead of a table')
    .action(async (o: { json?: boolean }) => {
      const { collectStats, formatStats } = await import('./stats.js');
      print(await collectStats(adminConfig()), o.json, formatStats);
    });

  program
    .command('failed')
    .description('failed jobs, newest first, with the reason each failed')
    .addOption(new Option('--limit <n>', `at most n jobs (1-${MAX_LIST_LIMIT})`).argParser(listLimit).default(20))
    .addOption(new Option('--offset <n>', 'skip the n newest (for the next page)').argParser(listOffset).default(0))
    .option('--json', 'print JSON instead of a table')
    .action(async (o: { limit: number; offset: number; json?: boolean }) => print(await listFailed(adminConfig(), o.limit, o.offset), o.json, (jobs) => formatFailed(jobs, o.offset)));

  program
    .command('retry')
    .description('move a failed job (or every failed job) back to the queue, to be applied now')
    .argument('[jobId]', 'the failed job to retry (see `userops failed`)')
    .option('--all', 'retry every failed job, oldest failure first')
    .addHelpText('after', RETRY_HELP)
    .action(async function (this: Command, jobId: string | undefined, o: { all?: boolean }) {
      if ((jobId === undefined) === (o.all !== true)) this.error('give a job id or --all (one of the two)');
      const result = o.all ? await retryAll(adminConfig()) : await retryJob(adminConfig(), jobId as string);
      print(result, true, String);
    });

  program
    .command('backup')
    .description('copy the live database to <file>, consistently, while the consumer runs; prints a JSON summary')
    .argument('<file>', 'where to write the copy')
    .option('--force', 'replace <file> if it exists')
    .addHelpText('after', '\nRestore: stop the consumer, replace the database file with the copy, delete its -wal and -shm files, start the consumer.')
    .action(async (file: string, o: { force?: boolean }) => {
      const { backupDatabase } = await import('./backup.js');
      const summary = await backupDatabase(adminConfig().dbPath, file, { force: o.force === true, progressTo: process.stderr });
      print(summary, true, String);
    });

  program
    .command('config')
    .description('the effective configuration: every variable, its value (secrets redacted) and where it came from')
    .option('--json', 'print JSON instead of a table')
    .action((o: { json?: boolean }) => print(describeConfig(), o.json, formatConfig));
}

function buildProgram(): Command {
  const program = new Command('userops')
    .description('Single-writer SQLite user operations over a BullMQ queue.')
    .version(version())
    .addHelpText('after', `\nEnvironment:\n${Object.entries(ENV_HELP).map(([k, v]) => `  ${k.padEnd(31)} ${v}`).join('\n')}\n`)
    .exitOverride();

  program
    .command('consumer')
    .description('run the consumer daemon (the single writer) until SIGTERM or SIGINT')
    .action(async () => (await import('./run-consumer.js')).runConsumer());

  program
    .command('create')
    .description('create a user')
    .requiredOption('--nickname <nickname>', 'unique nickname')
    .requiredOption('--full-name <name>', 'full name')
    .requiredOption('--email <email>', 'email address')
    .action((o: { nickname: string; fullName: string; email: string }) =>
      withClient((c) => c.createUser({ nickname: o.nickname, fullName: o.fullName, email: o.email })),
    );

  program
    .command('get')
    .description('show a user')
    .argument('<nickname>')
    .action((nickname: string) => withClient((c) => c.getUser(nickname)));

  program
    .command('update')
    .description('change a user (give --full-name, --email or both)')
    .argument('<nickname>')
    .option('--full-name <name>', 'new full name')
    .option('--email <email>', 'new email address')
    .action(function (this: Command, nickname: string, o: { fullName?: string; email?: string }) {
      // A usage error, named by the flags: the client would call it invalid input, by field names.
      if (o.fullName === undefined && o.email === undefined) this.error('nothing to change: give --full-name <name>, --email <email> or both');
      return withClient((c) => c.updateUser(nickname, o));
    });

  program
    .command('delete')
    .description('delete a user and print it as it was')
    .argument('<nickname>')
    .action((nickname: string) => withClient((c) => c.deleteUser(nickname)));

  program
    .command('list')
    .description('list users in nickname order')
    .addOption(new Option('--limit <n>', `at most n users (1-${MAX_LIST_LIMIT})`).argParser(listLimit).default(100))
    .option('--after <nickname>', 'start after this nickname (for the next page)')
    .action((o: { limit: number; after?: string }) => withClient((c) => c.listUsers(o)));

  program
    .command('demo')
    .description('replay the original recipe: create four users, read one, show a not-found error')
    .action(() =>
      withClient(async (c) => {
        await runDemo(c, (line) => process.stdout.write(`${line}\n`));
        return undefined;
      }),
    );

  addAdminCommands(program);
  oneLineUsageErrors(program);
  return program;
}

async function main(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      // Commander has printed its message (or the help/version text) already.
      process.exitCode = err.exitCode === 0 ? EXIT.OK : EXIT.USAGE;
      return;
    }
    const message = err instanceof UserOpsError ? `${err.code}: ${err.message}` : String(err instanceof Error ? err.message : err);
    process.stderr.write(`userops: ${message}\n`);
    // 128 + the signal's number, as a shell reports a command a signal ended.
    process.exitCode = interruptedBy ? 128 + osConstants.signals[interruptedBy] : exitCodeFor(err);
  }
}

// `userops list | head` closes stdout early: that is the reader's choice, not a crash.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw err;
});
await main(process.argv);
