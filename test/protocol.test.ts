import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  ConfigError,
  fromWireError,
  parseArgs,
  parseEnvelope,
  parseOp,
  parseResults,
  UserExistsError,
  UserNotFoundError,
  UserOpsError,
  ValidationError,
  listRows,
  MAX_LIST_ROWS_PER_JOB,
} from '../src/protocol/index.js';
import { resolveClientOptions } from '../src/producer/options.js';
import { resolveConsumerOptions } from '../src/consumer/options.js';
import { clientConfig, consumerConfig } from '../src/config.js';
import { bullPrefix, redactUrl } from '../src/redis.js';
import { parseRedisUrl } from '../src/redis-url.js';
import { describeValue } from '../src/protocol/validate.js';

describe('op arguments', () => {
  it('accepts and normalises a valid create', () => {
    const args = parseArgs('user.create', { nickname: 'bob', fullName: '  Bob B ', email: 'bob@example.com' });
    assert.deepEqual(args, { nickname: 'bob', fullName: 'Bob B', email: 'bob@example.com' });
  });

  it('names every bad field, why, and what it got', () => {
    let v: ValidationError | undefined;
    try {
      parseArgs('user.create', { nickname: 'has space', fullName: '', email: 'nope' });
    } catch (err) {
      v = err as ValidationError;
    }
    assert.ok(v instanceof ValidationError);
    assert.equal(v.code, 'INVALID_INPUT');
    assert.deepEqual(v.issues.map((i) => i.path).sort(), ['email', 'fullName', 'nickname']);
    assert.match(v.message, /^Invalid user\.create arguments: /);
    assert.match(v.message, /email: must be an email address .*\(got "nope"\)/);
    assert.match(v.message, /nickname: must start with a letter or digit/);
  });

  it('says once that the arguments are not an object, instead of once per required field', () => {
    for (const [args, got] of [[null, 'null'], [undefined, 'nothing'], [5, '5'], ['bob', '"bob"'], [[], 'an empty array']] as const) {
      assert.throws(
        () => parseArgs('user.create', args),
        (err: unknown) =>
          err instanceof ValidationError &&
          err.message === `Invalid user.create arguments: expected an object like { nickname, fullName, email } (got ${got})` &&
          err.issues.length === 1,
      );
    }
    assert.throws(() => parseArgs('user.list', 'all'), /^ValidationError: Invalid user\.list arguments: expected an object like \{ limit, after \} \(got "all"\)$/);
    // An op that needs nothing still takes missing args as empty ones.
    assert.deepEqual(parseArgs('user.list', null), {});
    assert.deepEqual(parseArgs('user.list', undefined), {});
  });

  it('rejects unknown keys instead of dropping them', () => {
    assert.throws(() => parseArgs('user.get', { nickname: 'bob', admin: true }), /unknown key\(s\) admin/);
    assert.throws(() => parseArgs('user.get', JSON.parse('{"nickname":"bob","__proto__":{"x":1}}')), /unknown key\(s\) __proto__/);
  });

  it('requires at least one field on update', () => {
    assert.throws(() => parseArgs('user.update', { nickname: 'bob' }), /give at least one of fullName, email/);
  });

  it('refuses a full name that is not valid Unicode, which SQLite would alter', () => {
    assert.throws(() => parseArgs('user.update', { nickname: 'bob', fullName: 'A\ud800B' }), /fullName: must be valid Unicode \(it holds half of a surrogate pair\)/);
    assert.equal(parseArgs('user.update', { nickname: 'bob', fullName: 'A\u{1F600}B' }).fullName, 'A\u{1F600}B', 'a whole pair is fine');
  });

  it('bounds list limits', () => {
    assert.throws(() => parseArgs('user.list', { limit: 0 }), /limit: must be at least 1/);
    assert.throws(() => parseArgs('user.list', { limit: 1001 }), /limit: must be at most 1000/);
    assert.throws(() => parseArgs('user.list', { limit: 1.5 }), /limit: must be a whole number/);
    assert.deepEqual(parseArgs('user.list', {}), {});
  });

  it('rejects control characters in names and non-strings anywhere', () => {
    assert.throws(() => parseArgs('user.create', { nickname: 'a', fullName: 'A\u0000B', email: 'a@b.co' }), /control characters/);
    assert.throws(() => parseArgs('user.get', { nickname: 42 }), /nickname: must be a string \(got 42\)/);
  });
});

describe('ops and envelopes from the wire', () => {
  it('parses an op and rejects unknown op names and shapes', () => {
    assert.deepEqual(parseOp({ op: 'user.get', args: { nickname: 'x' } }), { op: 'user.get', args: { nickname: 'x' } });
    assert.throws(() => parseOp({ op: 'user.drop', args: {} }), /unknown op 'user\.drop'; expected one of user\.create/);
    assert.throws(() => parseOp({ op: 'toString', args: {} }), /unknown op 'toString'/);
    assert.throws(() => parseOp('user.get'), /an op must be an object/);
    assert.throws(() => parseOp({ op: 'user.get', args: { nickname: 'x' }, extra: 1 }), /unknown key\(s\) extra/);
  });

  it('bounds the rows the list ops of one job may ask for', () => {
    const list = (limit?: number) => ({ op: 'user.list', args: limit === undefined ? {} : { limit } });
    assert.equal(parseEnvelope({ v: 1, ops: Array.from({ length: 10 }, () => list(1000)) }).ops.length, 10);
    assert.throws(
      () => parseEnvelope({ v: 1, ops: Array.from({ length: 11 }, () => list(1000)) }),
      /ops: its user\.list ops ask for up to 11000 rows, more than the limit of 10000 per job; split them/,
    );
    // No limit counts as the default (100); a bad limit as the most it could mean (1000).
    assert.throws(() => parseEnvelope({ v: 1, ops: Array.from({ length: 101 }, () => list()) }), /up to 10100 rows/);
    assert.throws(() => parseEnvelope({ v: 1, ops: [...Array.from({ length: 9 }, () => list(1000)), list(-5), list()] }), /up to 10100 rows/);
    assert.equal(listRows({ op: 'user.get', args: { nickname: 'x' } }), 0);
    assert.equal(MAX_LIST_ROWS_PER_JOB, 10_000);
  });

  it('accepts a batch envelope and says what is wrong with a bad one', () => {
    assert.equal(parseEnvelope({ v: 1, ops: [{}] }).ops.length, 1);
    assert.throws(() => parseEnvelope(null), /Invalid job: job data must be an object like \{ v: 1, ops: \[\.\.\.\] \} \(got null\)/);
    assert.throws(() => parseEnvelope('hello'), /job data must be an object/);
    assert.throws(() => parseEnvelope({ v: 2, ops: [{}] }), /v: must be 1 \(the protocol version\) \(got 2\)/);
    assert.throws(() => parseEnvelope({ v: 1, ops: [] }), /ops: must hold at least one op/);
    assert.throws(() => parseEnvelope({ v: 1, ops: {} }), /ops: must be an array/);
    assert.throws(() => parseEnvelope({ v: 1, ops: [{}, {}, {}] }, 2), /ops: must hold at most 2 ops/);
    assert.throws(() => parseEnvelope({ v: 1, ops: [{}], extra: true }), /unknown key\(s\) extra/);
    assert.throws(() => parseEnvelope({ v: 1, ops: [{ op: 'x', args: 'y'.repeat(2000) }] }, 10, 1024), /Invalid job: data is at least \d+ bytes of JSON, more than the limit of 1024/);
    // Refused by its size before anything copies it, and by its depth rather than a bare stack overflow.
    assert.throws(() => parseEnvelope({ v: 1, ops: [{ op: 'user.get', args: { nickname: 'a'.repeat(64 * 1024 * 1024) } }] }), /data is at least \d{8} bytes of JSON, more than the limit of 1048576/);
    let deep: unknown = 'x';
    for (let i = 0; i < 200_000; i++) deep = [deep];
    assert.throws(() => parseEnvelope({ v: 1, ops: [{ op: 'user.get', args: deep }] }), /Invalid job: ops: nested too deeply to serialize/);
  });

  it('measures a job in bytes of its whole JSON, multi-byte characters and reply id included', () => {
    const data = { ops: [{ op: 'user.get', args: { nickname: 'é'.repeat(600) } }], reply: 'client-1', v: 1 };
    const bytes = Buffer.byteLength(JSON.stringify(data));
    assert.throws(() => parseEnvelope(data, 10, bytes - 1), new RegExp(`data is ${bytes} bytes of JSON, more than the limit of ${bytes - 1}`));
    const { opsJson } = parseEnvelope(data, 10, bytes);
    assert.equal(opsJson, JSON.stringify(data.ops));
  });

  it('says what it got: the kind of value, and how many items an array holds', () => {
    assert.equal(describeValue({}), 'an object');
    assert.equal(describeValue([]), 'an empty array');
    assert.equal(describeValue([1]), 'an array of 1 item');
    assert.equal(describeValue(Array.from({ length: 1001 })), 'an array of 1001 items');
    assert.throws(() => parseEnvelope({ v: 1, ops: [{}, {}, {}] }, 2), /ops: must hold at most 2 ops \(got an array of 3 items\)/);
    assert.throws(() => parseEnvelope({ v: 1, ops: [] }), /ops: must hold at least one op \(got an empty array\)/);
    assert.throws(() => parseArgs('user.update', { nickname: 'bob' }), /give at least one of fullName, email \(got an object\)/);
  });

  it('checks result lists against the number of ops', () => {
    const results = [{ ok: true, value: 1 }, { ok: false, error: { code: 'USER_EXISTS', message: 'm' } }];
    assert.deepEqual(parseResults({ results }, 2), results);
    assert.equal(parseResults({ results }, 3), undefined);
    assert.equal(parseResults('nonsense', 1), undefined);
  });
});

describe('error catalogue', () => {
  it('round-trips typed errors through the wire form', () => {
    const notFound = fromWireError(new UserNotFoundError('bob').toWire());
    assert.ok(notFound instanceof UserNotFoundError);
    assert.equal(notFound.message, "User bob doesn't exist");
    assert.equal(notFound.code, 'USER_NOT_FOUND');
    assert.ok(fromWireError(new UserExistsError('bob').toWire()) instanceof UserExistsError);
    const invalid = fromWireError(new ValidationError([{ path: 'email', message: 'bad' }]).toWire());
    assert.ok(invalid instanceof ValidationError);
    assert.deepEqual((invalid).issues, [{ path: 'email', message: 'bad' }]);
  });

  it('keeps unknown codes from a newer consumer', () => {
    const err = fromWireError({ code: 'RATE_LIMITED', message: 'slow down' });
    assert.ok(err instanceof UserOpsError);
    assert.equal(err.code, 'RATE_LIMITED');
    assert.equal(err.message, 'slow down');
  });
});

describe('options and environment', () => {
  it('validates client options, naming the option, the form and the value', () => {
    assert.throws(() => resolveClientOptions({ timeoutMs: -5 }), (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.match(err.message, /^Invalid UserOpsClient options: timeoutMs: .* \(got -5\)/);
      return true;
    });
    assert.throws(() => resolveClientOptions({ redisUrl: 'http://x' }), /redisUrl: expected the scheme redis:\/\/ or rediss:\/\//);
    assert.throws(() => resolveClientOptions({ queue: 'a:b' }), /queue: must be 1-64 characters/);
    assert.throws(() => resolveClientOptions({ timout: 5 } as never), /unknown key\(s\) timout/);
    assert.equal(resolveClientOptions({}).queue, 'userops');
  });

  it('validates consumer options', () => {
    assert.throws(() => resolveConsumerOptions({ dbPath: '' }), /dbPath: must be a file path/);
    assert.equal(resolveConsumerOptions({ dbPath: 'x.db' }).redisUrl, 'redis://127.0.0.1:6379');
  });

  it('reads the environment once, naming the bad variable', () => {
    assert.throws(() => consumerConfig({ LOG_LEVEL: 'loud' }), /Invalid environment: LOG_LEVEL: must be one of fatal.* \(got "loud"\)/);
    assert.throws(() => consumerConfig({ REDIS_URL: 'localhost:6379' }), /REDIS_URL: expected the scheme/);
    assert.throws(() => clientConfig({ USEROPS_TIMEOUT_MS: 'soon' }), /USEROPS_TIMEOUT_MS: must be a whole number in decimal digits/);
    assert.throws(() => consumerConfig({ USEROPS_QUEUE: 'bad name' }), /USEROPS_QUEUE: must be 1-64 characters/);
    // Cross-checks too, whichever command reads the environment.
    assert.throws(() => clientConfig({ USEROPS_DASHBOARD_USER: 'u' }), /USEROPS_DASHBOARD_PASSWORD: must be set when USEROPS_DASHBOARD_USER is/);
    assert.throws(() => clientConfig({ USEROPS_DASHBOARD: '1', USEROPS_HTTP_PORT: '0' }), /USEROPS_DASHBOARD: needs the HTTP server/);
    const c = consumerConfig({ REDIS_URL: '', USEROPS_DB: '/tmp/x.db' });
    assert.equal(c.redisUrl, undefined);
    assert.equal(c.dbPath, '/tmp/x.db');
    assert.equal(c.queue, 'userops');
  });

  it('redacts Redis passwords', () => {
    assert.equal(redactUrl('redis://user:s3cret@host:6379/2'), 'redis://user:***@host:6379/2');
    assert.equal(redactUrl('rediss://:s3cret@host'), 'rediss://:***@host');
    assert.doesNotMatch(redactUrl('redis://u:s3cret@h'), /s3cret/);
    assert.equal(redactUrl('redis+cluster://:s3cret@h1:7000,h2:7001'), 'redis+cluster://:***@h1:7000,h2:7001');
    assert.equal(
      redactUrl('rediss+sentinel://u:s3cret@s1,s2:26380/main/1?sentinelUsername=s&sentinelPassword=s3cret2'),
      'rediss+sentinel://u:***@s1,s2:26380/main/1?sentinelUsername=s&sentinelPassword=***',
    );
    assert.equal(redactUrl('redis://u:p%40ss@host'), 'redis://u:***@host');
    // ioredis reads a password from the query too.
    assert.equal(redactUrl('redis://host:6379/0?password=s3cret&family=6'), 'redis://host:6379/0?password=***&family=6');
    // A bad URL is shown in the error that names it, without its password, also when the password
    // holds a character that ends the userinfo early (base64 passwords hold /).
    for (const url of ['redis://:s3cret@host:99999', 'http://u:s3cret@host', 'u:s3cret@host:6379', 'redis://u:ab/s3cret==@host', 'redis://:s3c#ret@host', 'redis+cluster://u:s3c/ret@h1,h2']) {
      assert.throws(() => clientConfig({ REDIS_URL: url }), (err: Error) => /REDIS_URL: .*\(got "[^"]*\*\*\*/.test(err.message) && !err.message.includes('s3cret'), url);
    }
  });

  it('reads every REDIS_URL form, and says what is wrong with a bad one', () => {
    assert.deepEqual(parseRedisUrl('rediss+cluster://a:b@h1,h2:7001'), {
      mode: 'cluster', nodes: [{ host: 'h1', port: 6379 }, { host: 'h2', port: 7001 }], tls: true, username: 'a', password: 'b',
    });
    assert.deepEqual(parseRedisUrl('redis+sentinel://[::1]:26380,s2/main/2'), {
      mode: 'sentinel', sentinels: [{ host: '::1', port: 26380 }, { host: 's2', port: 26379 }], name: 'main', db: 2, tls: false,
    });
    const bad: [string, RegExp][] = [
      ['http://h', /^"expected the scheme redis:\/\/ or rediss:\/\/ \(or redis\+cluster:\/\/, redis\+sentinel:\/\/\)"$/],
      ['redis://h1,h2', /one host only/],
      ['redis+cluster://h1/3', /takes no path/],
      ['redis+sentinel://s1', /master name/],
      ['redis+sentinel://s1/m?password=x', /unknown parameter\(s\) password/],
      ['redis+cluster://h1:0', /port from 1 to 65535/],
    ];
    for (const [url, message] of bad) assert.match(JSON.stringify(parseRedisUrl(url)), message, url);
    assert.throws(() => consumerConfig({ REDIS_URL: 'redis+cluster://h1/3' }), /REDIS_URL: a cluster URL takes no path/);
    // The part at fault is named, and the value got is said once, at the end.
    assert.throws(() => consumerConfig({ REDIS_URL: 'notaurl' }), (err: Error) => err.message.split('got').length === 2 && /\(got "notaurl"\)$/.test(err.message));
    assert.throws(() => consumerConfig({ REDIS_URL: 'redis://h:99999' }), /REDIS_URL: expected a port from 1 to 65535, not 99999 \(got "redis:\/\/h:99999"\)$/);
    assert.equal(bullPrefix('redis+cluster://h1', 'q'), 'bull:{q}');
    assert.equal(bullPrefix('redis://h1', 'q'), 'bull');
  });
});
