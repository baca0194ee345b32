/**
 * The producer library: typed calls that become jobs on the queue and promises that settle with
 * each op's own result.
 */
import { Queue, QueueEvents } from 'bullmq';
import type { Redis } from 'ioredis';
import { type Logger, pino } from 'pino';

import {
  coerceError,
  JOB_NAME,
  type JobPayload,
  type OpName,
  type OpValues,
  parseArgs,
  RedisUnavailableError,
  type User,
  ValidationError,
} from '../protocol/index.js';
import { RedisConnections, redactUrl, settleWithin } from '../redis.js';
import { Dispatcher } from './dispatcher.js';
import { type ClientOptions, type ResolvedClientOptions, resolveClientOptions } from './options.js';

/** Longest wait for each BullMQ close step; a healthy close takes milliseconds. */
const CLOSE_DEADLINE_MS = 2000;

/** Arguments of {@link UserOpsClient.createUser}. */
export interface CreateUserInput {
  nickname: string;
  fullName: string;
  email: string;
}

/** Fields {@link UserOpsClient.updateUser} can change; give at least one. */
export interface UpdateUserInput {
  fullName?: string;
  email?: string;
}

/** Paging of {@link UserOpsClient.listUsers}: users in nickname order, after `after`. */
export interface ListUsersInput {
  /** At most this many users (1-1000). @defaultValue 100 */
  limit?: number;
  /** Start after this nickname; pass the last nickname of the previous page. */
  after?: string;
}

/**
 * Enqueues user operations for the single-writer consumer and resolves with their results.
 *
 * Connects on the first call. Every method validates its input before anything is sent and
 * rejects with a {@link ValidationError} naming the field. `close()` is idempotent.
 *
 * @example
 * ```ts
 * const client = new UserOpsClient({ redisUrl: 'redis://127.0.0.1:6379' });
 * const user = await client.createUser({ nickname: 'bob', fullName: 'Bob', email: 'bob@example.com' });
 * await client.close();
 * ```
 */
export class UserOpsClient {
  private readonly options: ResolvedClientOptions;
  private readonly log: Logger;
  private readonly redis: RedisConnections;
  private readonly commands: Redis;
  private readonly blocking: Redis;
  private readonly queue: Queue;
  private readonly dispatcher: Dispatcher;
  private events?: QueueEvents;
  private connecting?: Promise<void>;
  private closing?: Promise<void>;

  /** @param options - validated here; throws `ConfigError` naming the bad option */
  constructor(options: ClientOptions = {}) {
    this.options = resolveClientOptions(options);
    const { redisUrl, queue } = this.options;
    this.log = (this.options.logger ?? pino({ level: 'silent' })).child({ component: 'client', queue });
    // Lazy: a client that is never used never opens a socket.
    this.redis = new RedisConnections(redisUrl, this.log);
    this.commands = this.redis.open('command', { lazyConnect: true });
    this.blocking = this.redis.open('blocking', { lazyConnect: true });
    this.queue = new Queue(queue, { connection: this.commands });
    this.queue.on('error', (err) => this.log.debug({ err }, 'queue error'));
    this.dispatcher = new Dispatcher(this.options, (jobId, payload) => this.send(jobId, payload), this.log);
  }

  /** Creates a user. Rejects with `UserExistsError` if the nickname is taken. */
  createUser(input: CreateUserInput): Promise<User> {
    return this.call('user.create', input);
  }

  /** Reads a user. Rejects with `UserNotFoundError` ("User bob doesn't exist"). */
  getUser(nickname: string): Promise<User> {
    return this.call('user.get', { nickname });
  }

  /** Changes a user's full name and/or email. Rejects with `UserNotFoundError`. */
  updateUser(nickname: string, changes: UpdateUserInput): Promise<User> {
    if (typeof changes !== 'object' || changes === null) {
      return Promise.reject(new ValidationError([{ path: 'changes', message: 'must be an object like { fullName, email }' }]));
    }
    return this.call('user.update', { ...changes, nickname });
  }

  /** Deletes a user and resolves with the user as it was. Rejects with `UserNotFoundError`. */
  deleteUser(nickname: string): Promise<User> {
    return this.call('user.delete', { nickname });
  }

  /** Lists users in nickname order, one page at a time. */
  listUsers(input: ListUsersInput = {}): Promise<User[]> {
    return this.call('user.list', input);
  }

  /** Calls submitted and not yet settled. */
  get pendingCount(): number {
    return this.dispatcher.pendingCount;
  }

  private call<K extends OpName>(op: K, args: unknown): Promise<OpValues[K]> {
    try {
      return this.dispatcher.submit({ op, args: parseArgs(op, args) }) as Promise<OpValues[K]>;
    } catch (err) {
      return Promise.reject(coerceError(err));
    }
  }

  private async send(jobId: string, payload: JobPayload): Promise<void> {
    await this.ready();
    try {
      await this.queue.add(JOB_NAME, payload, { jobId, attempts: 3, backoff: { type: 'exponential', delay: 1000 } });
    } catch (err) {
      throw this.unavailable(err);
    }
  }

  /** The error for a call that could not reach Redis, naming the real cause when one is known. */
  private unavailable(err: unknown): RedisUnavailableError {
    if (err instanceof RedisUnavailableError) return err;
    const cause = this.commands.status === 'ready' ? err : (this.redis.lastError(this.commands) ?? err);
    return new RedisUnavailableError(redactUrl(this.options.redisUrl), cause);
  }

  /** Resolves once Redis answers and completion events are being read, or rejects in time. */
  private async ready(): Promise<void> {
    if (!this.connecting) {
      const connecting = this.connect();
      this.connecting = connecting;
      // A failed attempt is forgotten so the next call tries again.
      connecting.catch(() => {
        if (this.connecting === connecting) this.connecting = undefined;
      });
    }
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      const ms = this.options.connectTimeoutMs;
      timer = setTimeout(() => reject(this.unavailable(new Error(`no connection within ${ms} ms`))), ms);
    });
    try {
      await Promise.race([this.connecting, timeout]);
    } catch (err) {
      throw this.unavailable(err);
    } finally {
      clearTimeout(timer);
    }
  }

  private async connect(): Promise<void> {
    await this.queue.waitUntilReady();
    // Read events from the stream's current end, fixed now, before the first job is added: a
    // QueueEvents left to start at '$' could miss a job that finishes before its first XREAD.
    const [last] = await this.commands.xrevrange(this.queue.keys.events as string, '+', '-', 'COUNT', 1);
    const events = new QueueEvents(this.options.queue, { connection: this.blocking, lastEventId: last?.[0] ?? '0-0' });
    this.events = events;
    events.on('completed', ({ jobId, returnvalue }) => this.dispatcher.completed(jobId, returnvalue));
    events.on('failed', ({ jobId, failedReason }) => this.dispatcher.failed(jobId, failedReason));
    events.on('error', (err) => this.log.warn({ err }, 'queue events error'));
    await events.waitUntilReady();
    this.log.debug({ redis: redactUrl(this.options.redisUrl), lastEventId: last?.[0] }, 'client connected');
  }

  /**
   * Rejects calls still pending with `ClientClosedError` and closes the Redis connections.
   * Safe to call twice. Await your calls first if you want their results.
   */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    this.dispatcher.close();
    // Connected, BullMQ closes in milliseconds; with Redis gone it may never return, so wait
    // briefly and let the connections, which no longer reconnect, end on their own.
    this.redis.stopReconnecting();
    await settleWithin(this.events?.close(), CLOSE_DEADLINE_MS);
    await settleWithin(this.queue.close(), CLOSE_DEADLINE_MS);
    await this.redis.close();
  }

  /** `await using client = new UserOpsClient()` closes it at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
