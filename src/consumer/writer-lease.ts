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

// Extend only if we still hold it: a lease that expired and was taken by another stays theirs.
const RENEW = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end`;
// Take it if free, or if it is still ours: our clock gives it up when Redis stops answering, while
// Redis may keep it; nobody else has held it meanwhile, and we committed nothing without it.
const ACQUIRE = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then return 1 else return 0 end`;
const RELEASE = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end`;

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

/** Why a consumer stands by: another holds the lease, or Redis did not answer the request for it. */
export type StandbyReason = 'held' | 'unanswered';

/** Holds, renews and gives up the writer lease of one queue. */
export class WriterLease {
  private validUntil = 0;
  private timer?: NodeJS.Timeout;
  private stopped = false;
  private firstAnswered = false;

  /**
   * @param key - the lease key, in the queue's own key space
   * @param owner - this consumer's unique lease value, from {@link leaseOwner}
   * @param ttlMs - how long the lease lasts unless renewed; a dead writer is replaced after this
   */
  constructor(
    private readonly redis: Redis,
    private readonly key: string,
    private readonly owner: string,
    private readonly ttlMs: number,
    private readonly log: Logger,
    private readonly onChange: (role: WriterRole, why?: StandbyReason) => void,
  ) {}

  /**
   * False until the first request for the lease has come back (taken, held by another, or no
   * answer from Redis): until then the consumer is neither the writer nor a standby.
   */
  get answered(): boolean {
    return this.firstAnswered;
  }

  /** True while the lease is ours by our own clock, with a margin for the renew in flight. */
  held(): boolean {
    return Date.now() < this.validUntil;
  }

  /** Starts trying to acquire, then renewing, every third of the TTL. */
  start(): Promise<void> {
    return this.tick(true);
  }

  /** @param first - report the role even if unchanged: a standby should say so when it starts */
  private async tick(first = false): Promise<void> {
    if (this.stopped) return;
    const wasHeld = this.held();
    const started = Date.now();
    let answered = true;
    try {
      const ok = (await this.redis.eval(wasHeld ? RENEW : ACQUIRE, 1, this.key, this.owner, this.ttlMs)) === 1;
      // Counted from before the request: the lease may have started expiring while it travelled.
      this.validUntil = ok ? started + this.ttlMs - Math.floor(this.ttlMs / 5) : 0;
    } catch (err) {
      answered = false;
      this.log.debug({ err }, 'writer lease: Redis did not answer');
      // Keep our clock's view: it expires on its own if Redis stays away.
    }
    this.firstAnswered = true;
    if (first || this.held() !== wasHeld) {
      if (this.held()) this.onChange('writer');
      else this.onChange('standby', answered ? 'held' : 'unanswered');
    }
    if (!this.stopped) {
      this.timer = setTimeout(() => void this.tick(false), Math.floor(this.ttlMs / 3));
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
