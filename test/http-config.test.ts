import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { beforeEach, describe, it } from 'node:test';

import { consumerConfig, DEFAULT_HTTP_PORT } from '../src/config.js';
import { resolveConsumerOptions } from '../src/consumer/options.js';
import { ConfigError } from '../src/index.js';
import { runCli, spawnConsumer } from './helpers/cli.js';
import { redisSuite, type Teardown, tempDb } from './helpers/fixtures.js';
import { freePort } from './helpers/redis-server.js';

const suite = redisSuite();
let t: Teardown;
let env: Record<string, string>;
beforeEach(() => {
  t = suite.t;
  const db = t.add(tempDb(), (d) => d.cleanup());
  env = { REDIS_URL: suite.redis.url, USEROPS_QUEUE: suite.queue, USEROPS_DB: db.dbPath, LOG_LEVEL: 'info', USEROPS_HTTP_HOST: '127.0.0.1' };
});

/** Runs the consumer healthcheck of docker-compose.yml, exactly as written there; resolves with its exit code. */
function composeHealthcheck(port: number): Promise<number | null> {
  const compose = readFileSync(new URL('../docker-compose.yml', import.meta.url), 'utf8');
  const line = /^\s+test: (\["CMD", "node", .*\])$/m.exec(compose)?.[1];
  assert.ok(line, 'docker-compose.yml has a node healthcheck');
  const [, node, ...args] = JSON.parse(line) as string[];
  assert.equal(node, 'node');
  const child = spawn(process.execPath, args, { env: { ...process.env, USEROPS_HTTP_PORT: String(port) }, stdio: 'ignore' });
  return new Promise((resolve) => child.once('exit', resolve));
}

function configError(vars: Record<string, string>): ConfigError {
  try {
    consumerConfig(vars);
  } catch (err) {
    assert.ok(err instanceof ConfigError);
    return err;
  }
  assert.fail(`expected ${JSON.stringify(vars)} to be refused`);
}

describe('HTTP configuration', () => {
  it('defaults to port 9464 on every address, with no dashboard; port 0 means no server', () => {
    assert.deepEqual(consumerConfig({}).http, { port: DEFAULT_HTTP_PORT, host: '0.0.0.0' });
    assert.equal(DEFAULT_HTTP_PORT, 9464);
    assert.equal(consumerConfig({ USEROPS_HTTP_PORT: '0' }).http, undefined);
    assert.deepEqual(consumerConfig({ USEROPS_HTTP_PORT: '8080', USEROPS_HTTP_HOST: '::1', USEROPS_DASHBOARD: 'yes' }).http, {
      port: 8080,
      host: '::1',
      dashboard: {},
    });
    assert.deepEqual(
      consumerConfig({ USEROPS_DASHBOARD: '1', USEROPS_DASHBOARD_USER: 'ops', USEROPS_DASHBOARD_PASSWORD: 's3cret' }).http?.dashboard,
      { auth: { user: 'ops', password: 's3cret' } },
    );
  });

  it('refuses bad values, naming the variable, the expected form and the value got', () => {
    assert.match(configError({ USEROPS_HTTP_PORT: 'http' }).message, /USEROPS_HTTP_PORT: must be a whole number in decimal digits \(got "http"\)/);
    // Number() reads these as 0, 9000 and 1000: a blank port turned the server off without a word.
    for (const port of [' ', '0x2328', '1e3', '80.0']) assert.match(configError({ USEROPS_HTTP_PORT: port }).message, /USEROPS_HTTP_PORT: must be a whole number in decimal digits/, port);
    assert.match(configError({ USEROPS_HTTP_PORT: '70000' }).message, /USEROPS_HTTP_PORT: must be at most 65535 \(got "70000"\)/);
    assert.match(configError({ USEROPS_HTTP_PORT: '-1' }).message, /USEROPS_HTTP_PORT: must be at least 0 \(got "-1"\)/);
    assert.match(configError({ USEROPS_HTTP_HOST: 'my host' }).message, /USEROPS_HTTP_HOST: must be an IP address or host name.* \(got "my host"\)/);
    assert.match(configError({ USEROPS_DASHBOARD: 'maybe' }).message, /USEROPS_DASHBOARD: must be 1 or 0.* \(got "maybe"\)/);
    assert.match(configError({ USEROPS_DASHBOARD: '1', USEROPS_HTTP_PORT: '0' }).message, /USEROPS_DASHBOARD: needs the HTTP server/);
    assert.match(configError({ USEROPS_DASHBOARD_USER: 'ops' }).message, /USEROPS_DASHBOARD_PASSWORD: must be set when USEROPS_DASHBOARD_USER is/);
    // Open to every address, an uncredentialed dashboard hands the queue to anyone who reaches it.
    assert.match(
      configError({ USEROPS_DASHBOARD: '1' }).message,
      /USEROPS_DASHBOARD_USER: must be set, with USEROPS_DASHBOARD_PASSWORD, when USEROPS_DASHBOARD is 1 and USEROPS_HTTP_HOST is not a loopback address \(got 0\.0\.0\.0\)/,
    );
    assert.throws(() => resolveConsumerOptions({ dbPath: 'x.db', http: { port: 0, host: '10.0.0.5', dashboard: {} } }), /http\.dashboard\.auth: must be set/);
    assert.deepEqual(consumerConfig({ USEROPS_DASHBOARD: '1', USEROPS_HTTP_HOST: '127.0.0.1' }).http?.dashboard, {});
    const noUser = configError({ USEROPS_DASHBOARD_PASSWORD: 'hunter2' });
    assert.match(noUser.message, /USEROPS_DASHBOARD_USER: must be set/);
    assert.doesNotMatch(noUser.message, /hunter2/, 'the password is never echoed');
  });

  it('serves the docker-compose healthcheck from `userops consumer`, which fails once the consumer stops', async () => {
    const port = await freePort();
    const proc = spawnConsumer({ ...env, USEROPS_HTTP_PORT: String(port) });
    t.add(proc, async (p) => {
      if (p.child.exitCode === null) p.child.kill('SIGKILL');
      await p.exited;
    });
    assert.match(await proc.waitFor(/http server listening/), new RegExp(`"port":${port}`));
    await proc.waitFor(/consumer ready/);
    assert.equal(await composeHealthcheck(port), 0);
    proc.child.kill('SIGTERM');
    assert.equal(await proc.exited, 0);
    assert.equal(await composeHealthcheck(port), 1);
  });

  it('starts no server with USEROPS_HTTP_PORT=0', async () => {
    const proc = spawnConsumer({ ...env, USEROPS_HTTP_PORT: '0' });
    t.add(proc, async (p) => {
      if (p.child.exitCode === null) p.child.kill('SIGKILL');
      await p.exited;
    });
    await proc.waitFor(/consumer ready/);
    assert.equal(proc.lines.filter((l) => /http server/.test(l)).length, 0);
  });

  it('exits 2 naming USEROPS_HTTP_PORT when the port is taken', async () => {
    const port = await freePort();
    const squatter = createServer();
    await new Promise<void>((resolve) => squatter.listen(port, '127.0.0.1', resolve));
    t.add(squatter, (s) => new Promise((resolve) => s.close(resolve)));
    const result = await runCli(['consumer'], { ...env, USEROPS_HTTP_PORT: String(port) });
    assert.equal(result.code, 2);
    assert.match(result.stderr, new RegExp(`INVALID_CONFIG: The HTTP server cannot listen on 127\\.0\\.0\\.1:${port} \\(EADDRINUSE\\)\\. Set USEROPS_HTTP_PORT`));
  });
});
