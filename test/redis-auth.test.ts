/**
 * REDIS_URL with TLS (`rediss://`), an ACL user and a password: the daemon and the commands work
 * through it, and the password never reaches a log line or an error message. The certificate
 * authority is a private one made for the test, trusted through Node's NODE_EXTRA_CA_CERTS.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { runCli, spawnConsumer } from './helpers/cli.js';
import { queueName, tempDb } from './helpers/fixtures.js';
import { freePort, TestRedis } from './helpers/redis-server.js';

const PASSWORD = 'pw-7f3a9c-secret';

/** A CA and a server certificate for 127.0.0.1, made with openssl. */
function makeCertificates(dir: string): { ca: string; cert: string; key: string } {
  const path = (name: string) => join(dir, name);
  const openssl = (...args: string[]) => execFileSync('openssl', args, { stdio: 'pipe' });
  openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', path('ca.key'), '-out', path('ca.pem'), '-days', '2', '-subj', '/CN=userops test CA');
  openssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', path('server.key'), '-out', path('server.csr'), '-subj', '/CN=127.0.0.1');
  writeFileSync(path('ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  openssl('x509', '-req', '-in', path('server.csr'), '-CA', path('ca.pem'), '-CAkey', path('ca.key'), '-CAcreateserial',
    '-out', path('server.pem'), '-days', '2', '-extfile', path('ext'));
  return { ca: path('ca.pem'), cert: path('server.pem'), key: path('server.key') };
}

describe('Redis over TLS with an ACL user and password', () => {
  const dir = mkdtempSync(join(tmpdir(), 'userops-tls-'));
  let redis: TestRedis;
  let tlsPort: number;
  let ca: string;

  before(async () => {
    const certs = makeCertificates(dir);
    ca = certs.ca;
    tlsPort = await freePort();
    redis = await TestRedis.start([
      '--tls-port', String(tlsPort), '--tls-cert-file', certs.cert, '--tls-key-file', certs.key, '--tls-ca-cert-file', certs.ca,
      '--tls-auth-clients', 'no', '--requirepass', `${PASSWORD}-default`,
      // One argument per ACL rule: redis-server would quote a single spaced argument into one name.
      '--user', 'alice', 'on', `>${PASSWORD}`, '~*', '&*', '+@all',
    ]);
  });
  after(async () => {
    await redis.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('serves calls through rediss://user:password@ and never prints the password', async () => {
    const { dbPath, cleanup } = tempDb();
    const env = { REDIS_URL: `rediss://alice:${PASSWORD}@127.0.0.1:${tlsPort}`, USEROPS_QUEUE: queueName(), USEROPS_DB: dbPath, NODE_EXTRA_CA_CERTS: ca };
    const consumer = spawnConsumer(env);
    try {
      await consumer.waitFor(/consumer ready/);
      const created = await runCli(['create', '--nickname', 'tls-user', '--full-name', 'Over TLS', '--email', 'tls@example.com'], env);
      assert.equal(created.code, 0, created.stderr);
      const got = await runCli(['get', 'tls-user'], env);
      assert.equal(got.code, 0, got.stderr);
      assert.equal((JSON.parse(got.stdout) as { fullName: string }).fullName, 'Over TLS');
      const started = consumer.lines.find((l) => l.includes('consumer starting')) ?? '';
      assert.match(started, /rediss:\/\/alice:\*\*\*@127\.0\.0\.1/);
      for (const text of [...consumer.lines, created.stdout, created.stderr, got.stdout, got.stderr]) assert.ok(!text.includes(PASSWORD), text);
    } finally {
      consumer.child.kill('SIGTERM');
      await consumer.exited;
      cleanup();
    }
  });

  it('fails fast, with the password redacted, on a wrong password or an untrusted certificate', async () => {
    const queue = queueName();
    // At debug, ioredis' AUTH error is logged with the command it answers, whose args are the password.
    const wrong = await runCli(['get', 'anyone'], { REDIS_URL: `rediss://alice:not-${PASSWORD}@127.0.0.1:${tlsPort}`, USEROPS_QUEUE: queue, NODE_EXTRA_CA_CERTS: ca, LOG_LEVEL: 'debug' });
    assert.equal(wrong.code, 3, wrong.stderr);
    assert.match(wrong.stderr, /REDIS_UNAVAILABLE/);
    assert.ok(!wrong.stderr.includes(PASSWORD), wrong.stderr);
    const untrusted = await runCli(['get', 'anyone'], { REDIS_URL: `rediss://alice:${PASSWORD}@127.0.0.1:${tlsPort}`, USEROPS_QUEUE: queue });
    assert.equal(untrusted.code, 3, untrusted.stderr);
    assert.match(untrusted.stderr, /certificate/);
    assert.ok(!untrusted.stderr.includes(PASSWORD), untrusted.stderr);
  });
});
