import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';

import { pino } from 'pino';

import { isPortOpen, startPrivateRedis } from '../src/consumer/private-redis.js';
import { runCli, spawnCli, spawnConsumer, startCliConsumer } from './helpers/cli.js';
import { newClient, plainQueue, queueName, Teardown, tempDb, until } from './helpers/fixtures.js';
import { freePort, TestRedis } from './helpers/redis-server.js';

let redis: TestRedis;
let t: Teardown;
let env: Record<string, string>;

before(async () => {
  redis = await TestRedis.start();
});
after(() => redis.stop());
beforeEach(() => {
  t = new Teardown();
  const db = t.add(tempDb(), (d) => d.cleanup());
  env = { REDIS_URL: redis.url, USEROPS_QUEUE: queueName(), USEROPS_DB: db.dbPath, LOG_LEVEL: 'info' };
});
afterEach(() => t.run());

const consumer = () => startCliConsumer(t, env);

describe('userops CLI', () => {
  it('runs each command with JSON on stdout and exit codes that say what happened', async () => {
    await consumer();
    const created = await runCli(['create', '--nickname', 'bob', '--full-name', 'Bob B', '--email', 'bob@example.com'], env);
    assert.equal(created.code, 0, created.stderr);
    assert.equal((JSON.parse(created.stdout) as { nickname: string }).nickname, 'bob');

    const got = await runCli(['get', 'bob'], env);
    assert.equal(got.code, 0);
    assert.equal((JSON.parse(got.stdout) as { email: string }).email, 'bob@example.com');

    const updated = await runCli(['update', 'bob', '--email', 'new@example.com'], env);
    assert.equal((JSON.parse(updated.stdout) as { email: string }).email, 'new@example.com');

    const listed = await runCli(['list', '--limit', '10'], env);
    assert.deepEqual((JSON.parse(listed.stdout) as { nickname: string }[]).map((u) => u.nickname), ['bob']);

    const exists = await runCli(['create', '--nickname', 'bob', '--full-name', 'B', '--email', 'b@example.com'], env);
    assert.equal(exists.code, 1);
    assert.equal(exists.stdout, '');
    assert.equal(exists.stderr, 'userops: USER_EXISTS: User bob already exists\n');

    const deleted = await runCli(['delete', 'bob'], env);
    assert.equal(deleted.code, 0);
    const missing = await runCli(['get', 'bob'], env);
    assert.equal(missing.code, 1);
    assert.equal(missing.stderr, "userops: USER_NOT_FOUND: User bob doesn't exist\n");
  });

  it('interrupted, takes its job back and says the op will never run', async () => {
    // No consumer: the job waits in the queue until Ctrl-C.
    const probe = plainQueue(t, redis.url, env.USEROPS_QUEUE as string);
    const { child, result } = spawnCli(['create', '--nickname', 'bob', '--full-name', 'Bob B', '--email', 'bob@example.com'], env);
    await until('the job is waiting', async () => (await probe.getWaitingCount()) === 1);
    child.kill('SIGINT');
    const { code, stdout, stderr } = await result;
    assert.equal(code, 130);
    assert.equal(stdout, '');
    assert.match(stderr, /^userops: CLIENT_CLOSED: The userops client is closed \(job [\w-]+; applied: false\)\n$/);
    assert.equal(await probe.getWaitingCount(), 0, 'the job was withdrawn');
  });

  it('rejects bad input and bad usage without a stack trace', async () => {
    const invalid = await runCli(['create', '--nickname', 'bob', '--full-name', 'B', '--email', 'nope'], env);
    assert.equal(invalid.code, 1);
    assert.match(invalid.stderr, /^userops: INVALID_INPUT: Invalid user\.create arguments: email: .*\(got "nope"\)\n$/);

    const usage = await runCli(['create', '--nickname', 'bob'], env);
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /required option '--full-name <name>' not specified/);

    const limit = await runCli(['list', '--limit', 'lots'], env);
    assert.equal(limit.code, 2);
    assert.match(limit.stderr, /expected a whole number from 1 to 1000, got "lots"/);

    const badEnv = await runCli(['get', 'bob'], { ...env, USEROPS_TIMEOUT_MS: '-1' });
    assert.equal(badEnv.code, 2);
    assert.match(badEnv.stderr, /USEROPS_TIMEOUT_MS: must be at least 1 \(got "-1"\)/);
    for (const r of [invalid, usage, limit, badEnv]) assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  });

  it('prints a usage error as one userops: line with a pointer to --help, exit 2, before reading Redis', async () => {
    // Nothing listens there: a command that got as far as Redis would exit 3, not 2.
    const offline = { ...env, REDIS_URL: `redis://127.0.0.1:${await freePort()}` };
    const cases: [string[], RegExp][] = [
      [['bogus'], /^userops: unknown command 'bogus' \(run 'userops --help' for usage\)\n$/],
      [['stat'], /^userops: unknown command 'stat'; did you mean stats\? \(run 'userops --help' for usage\)\n$/],
      [['list', '--limit', '0'], /^userops: option '--limit <n>' argument '0' is invalid\. expected a whole number from 1 to 1000, got "0" \(run 'userops list --help' for usage\)\n$/],
      [['get'], /^userops: missing required argument 'nickname' \(run 'userops get --help' for usage\)\n$/],
      [['update', 'bob'], /^userops: nothing to change: give --full-name <name>, --email <email> or both \(run 'userops update --help' for usage\)\n$/],
    ];
    for (const [args, stderr] of cases) assert.match((await runCli(args, offline)).stderr, stderr);
    // Commander's own errors always exited 2; this one is ours.
    assert.equal((await runCli(['update', 'bob'], offline)).code, 2);
  });

  it('checks every variable the same way on every command', async () => {
    // Consumer-only, and half of a pair: a client command refuses it as `stats` does.
    const offline = { ...env, REDIS_URL: `redis://127.0.0.1:${await freePort()}`, USEROPS_DASHBOARD_USER: 'u' };
    const [get, stats] = await Promise.all([runCli(['get', 'bob'], offline), runCli(['stats'], offline)]);
    assert.equal(get.code, 2);
    assert.equal(get.stderr, 'userops: INVALID_CONFIG: Invalid environment: USEROPS_DASHBOARD_PASSWORD: must be set when USEROPS_DASHBOARD_USER is\n');
    assert.deepEqual([get.code, get.stderr], [stats.code, stats.stderr]);

    const url = await runCli(['get', 'bob'], { ...env, REDIS_URL: 'notaurl' });
    assert.equal(
      url.stderr,
      'userops: INVALID_CONFIG: Invalid environment: REDIS_URL: expected the scheme redis:// or rediss:// (or redis+cluster://, redis+sentinel://) (got "notaurl")\n',
    );
  });

  it('exits non-zero within seconds when Redis is unreachable', async () => {
    const port = await freePort();
    // Default log level: the one-line message is all a user sees.
    const r = await runCli(['get', 'bob'], { ...env, LOG_LEVEL: undefined, REDIS_URL: `redis://:secret@127.0.0.1:${port}` });
    assert.equal(r.code, 3);
    assert.match(r.stderr, /^userops: REDIS_UNAVAILABLE: Redis at redis:\/\/:\*\*\*@127\.0\.0\.1:\d+ is unavailable/);
    assert.doesNotMatch(r.stderr, /secret/);
    assert.ok(r.ms < 10_000, `took ${r.ms} ms`);
  });

  it('replays the original recipe with `userops demo`, and again', async () => {
    await consumer();
    const first = await runCli(['demo'], env);
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, /^created saghul \(id \d+\)\ncreated saghul2 .*\ncreated saghu3 .*\ncreated saghul4 .*\n/);
    assert.match(first.stdout, /nickname: saghul\nfull name: Saúl Ibarra Corretgé\nemail: saghul@example\.com\n/);
    assert.match(first.stdout, /UserNotFoundError \(USER_NOT_FOUND\): User saghul5 doesn't exist\n$/);
    const again = await runCli(['demo'], env);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /^saghul already exists\n/);
  });

  it('refuses bad configuration at start with the variable named', async () => {
    const proc = spawnConsumer({ ...env, USEROPS_MAX_OPS_PER_JOB: 'many' });
    assert.equal(await proc.exited, 2);
    assert.ok(proc.lines.some((l) => /USEROPS_MAX_OPS_PER_JOB: must be a whole number in decimal digits \(got "many"\)/.test(l)), proc.lines.join('\n'));
  });

  it('drains on SIGTERM under load, exits 0, and a restarted daemon finishes the rest', async () => {
    const first = await consumer();
    const client = newClient(t, { redisUrl: redis.url, queue: env.USEROPS_QUEUE, timeoutMs: 60_000 });
    const n = 2000;
    let resolved = 0;
    const calls = Array.from({ length: n }, (_, i) =>
      client.createUser({ nickname: `load${i}`, fullName: 'L', email: `l${i}@example.com` }).then((u) => {
        resolved++;
        return u;
      }),
    );
    while (resolved < 100) await new Promise((r) => setTimeout(r, 5));
    const signalled = Date.now();
    first.child.kill('SIGTERM');
    assert.equal(await first.exited, 0);
    assert.ok(Date.now() - signalled < 10_000, 'exited within 10 s');
    assert.ok(first.lines.some((l) => l.includes('consumer closed')));

    await consumer();
    const users = await Promise.all(calls);
    assert.deepEqual(users.map((u) => u.nickname), calls.map((_, i) => `load${i}`), 'every call got its own create');
    const probe = plainQueue(t, redis.url, env.USEROPS_QUEUE as string);
    assert.equal(await probe.getFailedCount(), 0, 'no job failed');
  });
});

describe('private redis-server', () => {
  it('starts with AOF on under the given folder and stops cleanly', async () => {
    const db = t.add(tempDb(), (d) => d.cleanup());
    const port = await freePort();
    const server = await startPrivateRedis('redis-server', `${db.dir}/redis`, port, pino({ level: 'silent' }));
    t.add(server, (s) => s.stop());
    assert.equal(server.url, `redis://127.0.0.1:${port}`);
    const client = newClient(t, { redisUrl: server.url, queue: 'p', connectTimeoutMs: 2000, timeoutMs: 300 });
    // Reachable: the call gets as far as timing out (no consumer), not REDIS_UNAVAILABLE.
    await assert.rejects(client.getUser('x'), { code: 'TIMEOUT' });
    await server.stop();
    assert.equal(await isPortOpen('127.0.0.1', port), false);
    assert.ok(readdirSync(`${db.dir}/redis`).some((f) => f.startsWith('appendonly')), 'AOF files written');
  });
});

describe('installed without the optional SQLite driver', () => {
  it('runs the client commands, and the ones that need SQLite say what is missing (exit 2)', async () => {
    // A copy of the project whose node_modules lacks both better-sqlite3 majors, as after
    // `npm install --omit=optional` or a failed native build.
    const root = fileURLToPath(new URL('..', import.meta.url));
    const dir = mkdtempSync(join(tmpdir(), 'userops-nodriver-'));
    after(() => rmSync(dir, { recursive: true, force: true }));
    cpSync(join(root, 'src'), join(dir, 'src'), { recursive: true });
    copyFileSync(join(root, 'package.json'), join(dir, 'package.json'));
    mkdirSync(join(dir, 'node_modules'));
    for (const name of readdirSync(join(root, 'node_modules'))) {
      if (!name.startsWith('better-sqlite3')) symlinkSync(join(root, 'node_modules', name), join(dir, 'node_modules', name));
    }
    const env = { ...process.env, REDIS_URL: `redis://127.0.0.1:${await freePort()}`, USEROPS_DB: join(dir, 'data', 'u.db'), USEROPS_HTTP_PORT: '0' };
    const run = (...args: string[]) =>
      new Promise<{ code: number | null; stderr: string }>((resolve) => {
        const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { cwd: dir, env, stdio: ['ignore', 'ignore', 'pipe'] });
        let stderr = '';
        child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        child.once('close', (code) => resolve({ code, stderr }));
      });
    // The client's command loads, and gets as far as Redis.
    const get = await run('get', 'bob');
    assert.equal(get.code, 3, get.stderr);
    assert.match(get.stderr, /^userops: REDIS_UNAVAILABLE/);
    for (const command of ['stats', 'consumer']) {
      const r = await run(command);
      assert.equal(r.code, 2, `${command}: ${r.stderr}`);
      assert.match(r.stderr, /^userops: INVALID_CONFIG: The consumer needs better-sqlite3 .* and it is not installed: it is an optional dependency of userops/m);
    }
    assert.equal(existsSync(join(dir, 'data')), false, 'no database was created');
  });
});
