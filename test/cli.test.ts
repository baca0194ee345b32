import assert from 'node:assert/strict';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';

import { pino } from 'pino';

import { isPortOpen, startPrivateRedis } from '../src/consumer/private-redis.js';
import { runCli, spawnConsumer, startCliConsumer } from './helpers/cli.js';
import { newClient, plainQueue, queueName, Teardown, tempDb } from './helpers/fixtures.js';
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
    assert.ok(proc.lines.some((l) => /USEROPS_MAX_OPS_PER_JOB: must be a number \(got "many"\)/.test(l)), proc.lines.join('\n'));
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
    const { readdirSync } = await import('node:fs');
    assert.ok(readdirSync(`${db.dir}/redis`).some((f) => f.startsWith('appendonly')), 'AOF files written');
  });
});
