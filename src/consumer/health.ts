/**
 * Readiness: whether this consumer can do its job right now, part by part, so a failing probe
 * says which part failed instead of just "no".
 */
import type { Redis } from 'ioredis';

import { coerceError } from '../protocol/index.js';
import { withDeadline } from '../redis.js';
import type { Store } from './store.js';
import type { WriterRole } from './writer-lease.js';

/** Where a consumer is in its lifecycle. */
export type ConsumerState = 'new' | 'starting' | 'running' | 'closing' | 'closed';

/**
 * What a consumer is to its queue: its {@link WriterRole} once it has asked for the writer lease,
 * `starting` before: a consumer still waiting for Redis or its database could not take over yet.
 */
export type ConsumerRole = WriterRole | 'starting';

/** A PING slower than this counts as Redis being unreachable: probes run every few seconds. */
const PING_DEADLINE_MS = 1000;

/** What `/readyz` answers; each part is `ok` or says what is wrong. */
export interface Readiness {
  /** True when every part is fine: the consumer can apply jobs, or take over as writer. */
  ready: boolean;
  /**
   * `writer` applies jobs; `standby` is ready to take over when the writer goes; `starting` has not
   * asked for the writer lease yet.
   */
  role: ConsumerRole;
  /** `running` when ready; else the lifecycle state. */
  consumer: ConsumerState;
  /** `ok`, or why a PING failed, or why Redis refuses the consumer's writes (out of memory). */
  redis: string;
  /** `ok`, `busy` (another connection holds the write lock for now; still ready), or why it cannot be written. */
  sqlite: string;
  /**
   * `ok`, or why no consumer can be the writer until someone mends the lease key (it holds
   * something else, or a lease with no expiry): the queue is not being served.
   */
  lease: string;
  /** Names of the parts that are not fine, empty when ready. */
  failing: ('consumer' | 'redis' | 'sqlite' | 'lease')[];
}

/** What readiness is judged from. */
export interface ReadinessProbe {
  state: ConsumerState;
  role: ConsumerRole;
  /** A fail-fast connection (no offline queue), so a PING to a dead Redis fails at once. */
  redis: Redis | undefined;
  /** The connection's last error (ECONNREFUSED, WRONGPASS...): says more than a failed PING. */
  redisError: Error | undefined;
  /** Why Redis refuses writes though it answers PING: over its maxmemory, it takes no job. */
  redisWriteProblem?: string | undefined;
  store: Store | undefined;
  /** Why the database cannot be used now: not open yet, or commits failing and being retried. */
  storageProblem?: string | undefined;
  /** Why the database is not open yet though nothing is wrong with it: reported, but not as failing. */
  storagePending?: string | undefined;
  /** What keeps any consumer from taking the writer lease, if anything. */
  leaseProblem?: string | undefined;
}

/** Checks each part; never throws. */
export async function checkReadiness(probe: ReadinessProbe): Promise<Readiness> {
  const pinged = await pingRedis(probe.redis, probe.redisError);
  const redis = pinged === 'ok' ? (probe.redisWriteProblem ?? pinged) : pinged;
  const sqlite = probe.storagePending ?? checkSqlite(probe.store, probe.storageProblem);
  const failing: Readiness['failing'] = [];
  if (probe.state !== 'running') failing.push('consumer');
  if (redis !== 'ok') failing.push('redis');
  if (!probe.storagePending && sqlite !== 'ok' && sqlite !== 'busy') failing.push('sqlite');
  if (probe.leaseProblem) failing.push('lease');
  return { ready: failing.length === 0, role: probe.role, consumer: probe.state, redis, sqlite, lease: probe.leaseProblem ?? 'ok', failing };
}

async function pingRedis(redis: Redis | undefined, lastError: Error | undefined): Promise<string> {
  if (!redis) return 'not connected';
  if (redis.status !== 'ready') return `unreachable (${redis.status}): ${lastError?.message ?? 'connection lost'}`;
  try {
    await withDeadline(redis.ping(), PING_DEADLINE_MS, () => new Error(`no answer to PING within ${PING_DEADLINE_MS} ms`));
    return 'ok';
  } catch (err) {
    return coerceError(err).message;
  }
}

function checkSqlite(store: Store | undefined, problem: string | undefined): string {
  // The write-lock check alone passes on a full disk: it writes nothing.
  if (problem) return problem;
  if (!store?.db.open) return 'not open';
  try {
    return store.checkWritable();
  } catch (err) {
    return coerceError(err).message;
  }
}
