/**
 * The writer role: at most one consumer per queue applies jobs, whatever is started by mistake.
 *
 * A lease in Redis (`SET NX PX`, renewed by compare-and-extend) names the consumer that may write.
 * Others stand by and take over when it expires. The holder also checks its own clock before each
 * commit (`held()`), so a process that froze past its lease never commits after another took over.
 */
import { hostname } from 'node:os';

import type { Redis } from 'ioredis';
import type { Logger } from 'pino';

import { isOutOfMemory, isWrongTypeError } from '../redis.js';

// Asked to take and to renew alike. Answers 1 when the lease was ours and is extended; 2 when it
// was free and is now ours; else the holder's value and its PTTL (-1: none), so a standby can say
// who writes and whether that lease will ever expire. A lease taken by another stays theirs. One
// still ours is extended even after our clock gave it up (Redis stopped answering, but kept it):
// nobody else held it meanwhile, and we committed nothing without it. A free one is taken even
// while our clock holds it: Redis lost it (a restart without its data). SET only for a free
// key: Redis over its maxmemory refuses SET even where it would change nothing, and a standby
// must still see who writes then.
//
// The queue's database binding (KEYS[2], db-identity.ts) is checked in the same script, at every
// renewal, not only when the consumer starts: Redis that lost its data lost the binding too, and a
// consumer started on another file then would bind the queue to it and take over. The writer puts
// a lost binding back; one bound to another database meanwhile answers 'db:<its id>', and the
// lease is neither taken nor renewed. A binding that is not a string answers 'dbkey:<error>'.
const ACQUIRE = `local db = redis.pcall('GET', KEYS[2])
if type(db) == 'table' then return 'dbkey:' .. tostring(db.err) end
if db and db ~= ARGV[3] then return 'db:' .. db end
local v = redis.call('GET', KEYS[1])
local mine = v == ARGV[1]
if not mine and not (not v and redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX')) then
  return {v or '', redis.call('PTTL', KEYS[1])}
end
if not db then redis.call('SET', KEYS[2], ARGV[3]) end
if mine then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 2`;
const RELEASE = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end`;

/** The queue's database binding the lease is taken under: see db-identity.ts. */
export interface DatabaseBinding {
  /** The Redis key holding the id of the database the queue is served from. */
  key: string;
  /** This consumer's database id. */
  id: string;
  /** What to say when the queue is bound to database `theirs` instead. */
  describeRefusal(theirs: string): string;
}

/** Who holds a lease, as far as its value tells. */
export interface LeaseHolder {
  /** The holder's unique token (its BullMQ lock token). */
  token: string;
  /** Host and process id, absent when the holder is a build that wrote a bare token. */
  host?: string;
  pid?: number;
}

/**
 * The lease value for the consumer with `token`: JSON naming its host and pid, so an operator can
 * tell which process is the writer. The value is only ever compared whole (SET NX, compare-and-
 * extend), so older consumers that write a bare token interoperate with it.
 */
export function leaseOwner(token: string): string {
  return JSON.stringify({ token, host: hostname(), pid: process.pid });
}

/** Reads a lease value written by {@link leaseOwner}, or a bare token from an older build. */
export function parseLeaseOwner(value: string): LeaseHolder {
  try {
    const parsed = JSON.parse(value) as Partial<LeaseHolder> | null;
    if (parsed && typeof parsed.token === 'string') {
      return {
        token: parsed.token,
        ...(typeof parsed.host === 'string' ? { host: parsed.host } : {}),
        ...(typeof parsed.pid === 'number' ? { pid: parsed.pid } : {}),
      };
    }
  } catch {
    // not JSON: a bare token
  }
  return { token: value };
}

/** Whether this consumer is the queue's writer. */
export type WriterRole = 'writer' | 'standby';

/**
 * Why a consumer stands by: another holds the lease, Redis did not answer the request for it,
 * Redis answered with an error (the key holds something that is not a lease, or Redis is out of
 * memory and refused to let the free lease be taken), or the queue is served from another
 * database than this consumer's (`unbound`).
 */
export type StandbyReason = 'held' | 'unanswered' | 'refused' | 'unbound';

/** What a standby knows of why it stands by. */
export interface StandbyDetail {
  /** Who holds the lease, when another does and Redis said so. */
  holder?: LeaseHolder;
  /** The holder's lease's remaining time in ms; -1 when it has no expiry and will never lapse. */
  leaseTtlMs?: number;
  /** Redis's error, when it refused. */
  err?: Error;
  /**
   * Set when no consumer can become the writer until someone mends the key: it holds something
   * other than a lease, or a lease with no expiry; or when this one cannot, because the queue is
   * served from another database. Says what is wrong, naming the key.
   */
  problem?: string;
}

function describeHolder({ token, host, pid }: LeaseHolder): string {
  return host === undefined ? `token ${token}` : `token ${token} on ${host}${pid === undefined ? '' : ` (pid ${pid})`}`;
}

/** Holds, renews and gives up the writer lease of one queue. */
export class WriterLease {
  private validUntil = 0;
  private timer?: NodeJS.Timeout;
  private stopped = false;
  private firstAnswered = false;
  /** The role and reason last reported, so a change between two ticks is reported too. */
  private reported?: string;
  private blocked?: string;

  /**
   * @param key - the lease key, in the queue's own key space
   * @param owner - this consumer's unique lease value, from {@link leaseOwner}
   * @param ttlMs - how long the lease lasts unless renewed; a dead writer is replaced after this
   * @param binding - the queue's database binding, checked (and put back if lost) at every request
   */
  constructor(
    private readonly redis: Redis,
    private readonly key: string,
    private readonly owner: string,
    private readonly ttlMs: number,
    private readonly binding: DatabaseBinding,
    private readonly log: Logger,
    private readonly onChange: (role: WriterRole, why?: StandbyReason, detail?: StandbyDetail) => void,
  ) {}

  /**
   * False until the first request for the lease has come back (taken, held by another, or no
   * answer from Redis): until then the consumer is neither the writer nor a standby.
   */
  get answered(): boolean {
    return this.firstAnswered;
  }

  /** What keeps every consumer from writing, as of the last answer: see {@link StandbyDetail.problem}. */
  get problem(): string | undefined {
    return this.blocked;
  }

  /** True while the lease is ours by our own clock, with a margin for the renew in flight. */
  held(): boolean {
    return Date.now() < this.validUntil;
  }

  /** Starts trying to acquire, then renewing, every third of the TTL. */
  start(): Promise<void> {
    return this.tick();
  }

  private async tick(): Promise<void> {
    if (this.stopped) return;
    const started = Date.now();
    let why: StandbyReason = 'held';
    const detail: StandbyDetail = {};
    try {
      const held = this.held();
      const { key: dbKey, id: dbId } = this.binding;
      const answer: unknown = await this.redis.eval(ACQUIRE, 2, this.key, dbKey, this.owner, this.ttlMs, dbId);
      if (held && answer === 2) this.log.warn({ key: this.key }, 'the writer lease was gone from Redis (did it restart without its data?); taken again');
      if (typeof answer === 'string') {
        why = answer.startsWith('db:') ? 'unbound' : 'refused';
        detail.problem =
          why === 'unbound' ? this.binding.describeRefusal(answer.slice('db:'.length)) : `${dbKey} holds something other than a database id (${answer.slice('dbkey:'.length)})`;
      }
      // Counted from before the request: the lease may have started expiring while it travelled.
      this.validUntil = answer === 1 || answer === 2 ? started + this.ttlMs - Math.floor(this.ttlMs / 5) : 0;
      if (Array.isArray(answer) && typeof answer[0] === 'string' && answer[0] !== '') {
        detail.holder = parseLeaseOwner(answer[0]);
        detail.leaseTtlMs = Number(answer[1]);
      }
    } catch (err) {
      // The key holds a hash, say: an answer, and no outage to wait out. Say so.
      if (isWrongTypeError(err)) {
        why = 'refused';
        detail.err = err;
        detail.problem = `${this.key} holds something other than a lease (${err.message})`;
        this.validUntil = 0;
      } else if (isOutOfMemory(err)) {
        // The lease was free, and Redis refused to let us take it: over its maxmemory.
        why = 'refused';
        detail.err = err;
        this.validUntil = 0;
      } else {
        why = 'unanswered';
        this.log.debug({ err }, 'writer lease: Redis did not answer');
        // Keep our clock's view: it expires on its own if Redis stays away.
      }
    }
    if (detail.holder && detail.leaseTtlMs === -1) {
      detail.problem = `${this.key} is held by ${describeHolder(detail.holder)} with no expiry, so no consumer will take over until it is deleted`;
    }
    this.firstAnswered = true;
    // Unanswered says nothing of the key: what was wrong with it stays as last seen.
    if (why !== 'unanswered') this.blocked = detail.problem;
    // Compared with what was last reported, not with the previous tick: a lease can lapse by our
    // clock between two ticks, and that must be told too.
    const role: WriterRole = this.held() ? 'writer' : 'standby';
    const now = role === 'writer' ? role : `${role} ${why} ${detail.problem ?? ''}`;
    if (now !== this.reported) {
      this.reported = now;
      if (role === 'writer') this.onChange('writer');
      else this.onChange('standby', why, detail);
    }
    if (!this.stopped) {
      this.timer = setTimeout(() => void this.tick(), Math.floor(this.ttlMs / 3));
      this.timer.unref();
    }
  }

  /** Stops renewing and releases the lease if we hold it, so a standby takes over at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    if (!this.held()) return;
    this.validUntil = 0;
    await this.redis.eval(RELEASE, 1, this.key, this.owner).catch(() => undefined);
  }
}
