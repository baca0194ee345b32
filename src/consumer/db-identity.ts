/**
 * The queue's database. A queue remembers the id (`meta.db_id`) of the database it was first served
 * from and refuses a consumer on any other file: two files written from one queue would each hold
 * part of the users. A backup keeps the id, so a restored file is welcome.
 *
 * A database file that does not exist yet is asked about before it is created: a new database gets
 * a fresh random id, so it can never be a bound queue's. Asking first lets a refusal leave no new
 * file behind without ever deleting one; deleting after the refusal could remove a file another
 * process had opened meanwhile on the same path. (A queue bound between that question and the file's
 * creation is still refused, by {@link bindDatabase}, and that file stays: the safe side.)
 */
import type { Redis } from 'ioredis';

import { ConfigError } from '../protocol/index.js';
import { userOpsKey } from '../redis.js';

/** Which queue a consumer serves, and from which file. */
export interface DatabaseTarget {
  redisUrl: string;
  queue: string;
  dbPath: string;
}

function databaseKey(target: DatabaseTarget): string {
  return userOpsKey(target.redisUrl, target.queue, 'db');
}

/** The id of the database the queue is served from, or `null` while it is bound to none. */
export function queueDatabaseId(redis: Redis, target: DatabaseTarget): Promise<string | null> {
  return redis.get(databaseKey(target));
}

/**
 * Binds the queue to database `dbId` unless it is bound already. Returns why the consumer must
 * refuse to serve it (bound to another database), or `undefined`.
 */
export async function bindDatabase(redis: Redis, target: DatabaseTarget, dbId: string): Promise<ConfigError | undefined> {
  const key = databaseKey(target);
  if ((await redis.set(key, dbId, 'NX')) === 'OK') return undefined;
  const theirs = await redis.get(key);
  return theirs === dbId ? undefined : refusal(target, String(theirs), dbId);
}

/** Why a consumer refuses to create a new database for a queue already served from `theirs`. */
export function newDatabaseRefusal(target: DatabaseTarget, theirs: string): ConfigError {
  return refusal(target, theirs, undefined);
}

/** @param mine - the refused database's id; `undefined` for a database not created yet */
function refusal(target: DatabaseTarget, theirs: string, mine: string | undefined): ConfigError {
  const { queue, dbPath } = target;
  return new ConfigError(
    [{ path: 'USEROPS_DB', message: mine === undefined ? `no database at ${dbPath}; the queue's is ${theirs}` : `database ${mine} is not the queue's database ${theirs}` }],
    `Queue ${queue} is served from database ${theirs}, but ${dbPath} ${mine === undefined ? 'does not exist (a new database could not be it)' : `is database ${mine}`}. ` +
      `Point USEROPS_DB at that database (or a backup of it), or use another queue. If the old database is gone for good, ` +
      `delete the Redis key ${databaseKey(target)} to serve the queue from this one.`,
  );
}
