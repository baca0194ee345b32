/**
 * What `REDIS_URL` can say, in one place: one Redis, a Redis Cluster, or a Sentinel-managed
 * Redis; how to print it without secrets; and the BullMQ key prefix each needs.
 *
 * - `redis://[user:password@]host:port[/db]` and `rediss://` (TLS): one Redis.
 * - `redis+cluster://[user:password@]host:port,host:port,...` (`rediss+cluster://`): a Redis
 *   Cluster, found from any of the seed nodes listed.
 * - `redis+sentinel://[user:password@]host:port,host:port,.../<master name>[/db]`
 *   (`rediss+sentinel://`): the master that these Sentinels name. The user and password are the
 *   master's; Sentinels that need their own take `?sentinelUsername=...&sentinelPassword=...`.
 */

/** Where a Redis endpoint listens. */
export interface HostPort {
  host: string;
  port: number;
}

/** A parsed `REDIS_URL`. */
export type RedisTarget =
  | { mode: 'standalone'; url: string }
  | { mode: 'cluster'; nodes: HostPort[]; username?: string; password?: string; tls: boolean }
  | {
      mode: 'sentinel';
      sentinels: HostPort[];
      name: string;
      db: number;
      username?: string;
      password?: string;
      sentinelUsername?: string;
      sentinelPassword?: string;
      tls: boolean;
    };

const FORM = /^(rediss?)(?:\+(cluster|sentinel))?:\/\/(?:([^@/?#]*)@)?([^/?#]*)(\/[^?#]*)?(?:\?([^#]*))?$/;

const USAGE =
  'expected redis://[user:password@]host:port[/db] (rediss:// for TLS), ' +
  'redis+cluster://[user:password@]host:port,host:port,... or ' +
  'redis+sentinel://[user:password@]host:port,.../<master name>[/db]';

const SCHEMES = ['redis', 'rediss', 'redis+cluster', 'rediss+cluster', 'redis+sentinel', 'rediss+sentinel'];

/** The default port of each kind of endpoint. */
const DEFAULT_PORT = { standalone: 6379, cluster: 6379, sentinel: 26379 } as const;

function parseHosts(list: string, defaultPort: number): HostPort[] | string {
  const hosts: HostPort[] = [];
  for (const item of list.split(',')) {
    // host, host:port, [v6], [v6]:port
    const m = /^(\[[^\]]+\]|[^:[\]]+)(?::(\d{1,5}))?$/.exec(item.trim());
    if (!m?.[1]) return `expected host:port in a comma-separated list, not "${item}"`;
    const port = m[2] === undefined ? defaultPort : Number(m[2]);
    if (port < 1 || port > 65535) return `expected a port from 1 to 65535, not ${port}`;
    hosts.push({ host: m[1].replace(/^\[|\]$/g, ''), port });
  }
  return hosts;
}

function decode(part: string | undefined): string | undefined {
  if (part === undefined || part === '') return undefined;
  try {
    return decodeURIComponent(part);
  } catch {
    return part;
  }
}

/**
 * Parses `url`; returns the target, or a message saying what is wrong with it. The message names
 * the part at fault but not the whole URL, which the caller shows (redacted) after it.
 */
export function parseRedisUrl(url: string): RedisTarget | string {
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(url)?.[1];
  if (scheme === undefined || !SCHEMES.includes(scheme)) {
    return 'expected the scheme redis:// or rediss:// (or redis+cluster://, redis+sentinel://)';
  }
  // An @ past the authority: a user or password holding /, ? or #, which would otherwise be read,
  // and echoed in a message, as a host or a path.
  const afterScheme = url.slice(scheme.length + 3);
  if (afterScheme.includes('@') && !(afterScheme.split(/[/?#]/, 1)[0] ?? '').includes('@')) {
    return 'a user or password holds an unencoded /, ? or # (or an @ is not percent-encoded): percent-encode them (%2F, %3F, %23, %40)';
  }
  const m = FORM.exec(url);
  if (!m) return USAGE;
  const [, base, kind, userinfo, hostList = '', path = '', query = ''] = m;
  const tls = base === 'rediss';
  const colon = userinfo?.indexOf(':') ?? -1;
  const username = decode(colon >= 0 ? userinfo?.slice(0, colon) : userinfo);
  const password = decode(colon >= 0 ? userinfo?.slice(colon + 1) : undefined);
  const creds = { ...(username ? { username } : {}), ...(password ? { password } : {}) };
  if (hostList === '') return `expected a host, as in ${scheme}://host:port`;

  if (kind === undefined) {
    if (hostList.includes(',')) return 'one host only in redis:// (use redis+cluster:// or redis+sentinel:// for several)';
    const hosts = parseHosts(hostList, DEFAULT_PORT.standalone);
    if (typeof hosts === 'string') return hosts;
    const db = path.replace(/^\//, '');
    if (db !== '' && !/^\d{1,2}$/.test(db)) return `expected a database number after the host, not /${db}`;
    return { mode: 'standalone', url };
  }

  const hosts = parseHosts(hostList, DEFAULT_PORT[kind as 'cluster' | 'sentinel']);
  if (typeof hosts === 'string') return hosts;
  if (kind === 'cluster') {
    // Cluster has no databases but 0: a path would be ignored, so refuse it rather than surprise.
    if (path !== '' && path !== '/') return `a cluster URL takes no path such as ${path}`;
    return { mode: 'cluster', nodes: hosts, tls, ...creds };
  }
  const [name, db = '0', ...more] = path.replace(/^\//, '').split('/');
  if (!name) return 'expected the master name after the Sentinels, as in redis+sentinel://host:26379/mymaster';
  if (more.length > 0 || !/^\d{1,2}$/.test(db)) return `expected /<master name>[/db] after the Sentinels, not ${path}`;
  const params = new URLSearchParams(query);
  const unknown = [...params.keys()].filter((k) => k !== 'sentinelUsername' && k !== 'sentinelPassword');
  if (unknown.length > 0) return `unknown parameter(s) ${unknown.join(', ')}; expected sentinelUsername, sentinelPassword`;
  const sentinelUsername = params.get('sentinelUsername') ?? undefined;
  const sentinelPassword = params.get('sentinelPassword') ?? undefined;
  return {
    mode: 'sentinel', sentinels: hosts, name: decodeURIComponent(name), db: Number(db), tls, ...creds,
    ...(sentinelUsername ? { sentinelUsername } : {}), ...(sentinelPassword ? { sentinelPassword } : {}),
  };
}

/** Returns the URL with every password replaced by `***`, fit for logs and error messages. */
export function redactUrl(url: string): string {
  const schemeEnd = url.indexOf('://');
  if (schemeEnd < 0) return '<unparseable Redis URL>';
  const head = url.slice(0, schemeEnd + 3);
  let rest = url.slice(schemeEnd + 3);
  // The userinfo ends at the last @. Not only in the authority: a password with an unencoded /, ?
  // or # (base64 ones hold /) would end it early and show the rest. An @ in a query value makes
  // this hide more than the password, which is the safe side.
  const at = rest.lastIndexOf('@');
  if (at >= 0) {
    const userinfo = rest.slice(0, at);
    const colon = userinfo.indexOf(':');
    if (colon >= 0) rest = `${userinfo.slice(0, colon)}:***${rest.slice(at)}`;
  }
  // ioredis also reads a password from the query (?password=).
  return head + rest.replace(/([?&](?:sentinelPassword|password)=)[^&#]*/gi, '$1***');
}

/**
 * BullMQ's key prefix for `queue`. A Cluster needs every key of a queue in one hash slot, which a
 * hash tag (`{...}`) in the prefix gives; tagging by queue name spreads queues over the cluster.
 * One Redis and Sentinel keep BullMQ's default, so existing queues keep their keys.
 */
export function bullPrefix(url: string, queue: string): string {
  const target = parseRedisUrl(url);
  return typeof target !== 'string' && target.mode === 'cluster' ? `bull:{${queue}}` : 'bull';
}

/** A key of userops' own beside the queue's (`writer`, `db`, `reply:<id>`), in the queue's hash slot. */
export function userOpsKey(url: string, queue: string, name: 'writer' | 'db' | `reply:${string}`): string {
  return `${bullPrefix(url, queue)}:${queue}:userops:${name}`;
}
