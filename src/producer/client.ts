/**
 * The producer library: typed calls that become jobs on the queue and promises that settle with
 * each op's own result.
 */
import { type Logger, pino } from 'pino';

import { coerceError, type OpName, type OpValues, parseArgs, type User, ValidationError } from '../protocol/index.js';
import { Dispatcher } from './dispatcher.js';
import { QueueLink } from './link.js';
import { type ClientOptions, type ResolvedClientOptions, resolveClientOptions } from './options.js';

/** A job in flight this long is looked up in Redis in case its reply was missed. */
const RECONCILE_AFTER_MS = 3000;

/** How long close() tries to withdraw jobs still waiting: one round trip, unless Redis is in trouble. */
const CLOSE_WITHDRAW_MS = 2000;

/** Arguments of {@link UserOpsClient.createUser}. */
export interface CreateUserInput {
  nickname: string;
  fullName: string;
  email: string;
}

/** Fields {@link UserOpsClient.updateUser} can change; give at least one. */
export interface UpdateUserInput {
  // `| undefined` so that callers under exactOptionalPropertyTypes may pass a field they may not have.
  fullName?: string | undefined;
  email?: string | undefined;
}

/** Paging of {@link UserOpsClient.listUsers}: users in nickname order, after `after`. */
export interface ListUsersInput {
  /** At most this many users (1-1000). @defaultValue 100 */
  limit?: number | undefined;
  /** Start after this nickname; pass the last nickname of the previous page (`page.at(-1)?.nickname`). */
  after?: string | undefined;
}

/**
 * Enqueues user operations for the single-writer consumer and resolves with their results.
 *
 * Connects on the first call (and keeps trying while Redis is down). Every method validates its input before anything is sent and
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
  private readonly link: QueueLink;
  private readonly dispatcher: Dispatcher;
  private readonly reconciler: NodeJS.Timeout;
  private closing?: Promise<void>;

  /** @param options - validated here; throws `ConfigError` naming the bad option */
  constructor(options: ClientOptions = {}) {
    this.options = resolveClientOptions(options);
    this.log = (this.options.logger ?? pino({ level: 'silent' })).child({ component: 'client', queue: this.options.queue });
    this.dispatcher = new Dispatcher(
      this.options,
      (jobId, payload) => this.link.add(jobId, payload),
      (jobId) => this.link.withdraw(jobId),
      this.log,
    );
    this.link = new QueueLink(this.options, this.dispatcher, this.log);
    // Replies can be missed (a trimmed or expired stream, a Redis restart): jobs in flight for a
    // while are looked up in Redis directly, so no call waits for a reply that will never come.
    this.reconciler = setInterval(() => {
      this.link.reconcile(this.dispatcher.jobsOlderThan(RECONCILE_AFTER_MS)).catch((err: unknown) => this.log.debug({ err }, 'reconcile failed'));
    }, RECONCILE_AFTER_MS);
    this.reconciler.unref();
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
    // Merged below, the first argument would silently win: a caller trying to rename would get a
    // success and no rename.
    if (Object.hasOwn(changes, 'nickname')) {
      return Promise.reject(new ValidationError([{ path: 'changes.nickname', message: 'unknown key nickname (a nickname cannot be changed; the user to change is the first argument)' }]));
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

  /**
   * Rejects calls still pending with `ClientClosedError` and closes the Redis connections. Jobs
   * sent and not yet taken by a consumer are withdrawn first, so their calls end with
   * `applied: false`; those a consumer already took end with `applied: 'unknown'`. Safe to call
   * twice. Await your calls first if you want their results.
   */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    clearInterval(this.reconciler);
    await this.dispatcher.close(CLOSE_WITHDRAW_MS);
    await this.link.close();
  }

  /** `await using client = new UserOpsClient()` closes it at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
