/**
 * The queue's database. A queue remembers the id (`meta.db_id`) of the database it was first served
 * from and refuses a consumer on any other file: two files written from one queue would each hold
 * part of the users. A backup keeps the id, so a restored file is welcome.
 *
 * The queue is asked before the file is created or migrated, so that a refusal leaves the file as it
 * was. A new database gets a fresh random id, and so does one from before identities (schema < 3)
 * when it is migrated: neither can be a bound queue's. Refused after the fact, a new file would have
 * to be deleted (perhaps one another process had opened meanwhile), and a migrated one would be
 * beyond the older build it came from. (A queue bound between that question and the open is still
 * refused, by {@link bindDatabase}, and the file stays: the safe side.)
 */
import { existsSync } from 'node:fs';

import type { Redis } from 'ioredis';

import { ConfigError } from '../protocol/index.js';
import { isWrongTypeError, userOpsKey } from '../redis.js';
import type { DatabaseBinding } from './writer-lease.js';

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
  return notAnIdKey(redis.get(databaseKey(target)), target);
}

/**
 * Turns Redis's WRONGTYPE (the key holds a hash, a list...) into a `ConfigError` naming the key:
 * Redis answered, so it is no outage to wait out or restart into.
 */
async function notAnIdKey<T>(command: Promise<T>, target: DatabaseTarget): Promise<T> {
  try {
    return await command;
  } catch (err) {
    if (!isWrongTypeError(err)) throw err;
    const key = databaseKey(target);
    throw new ConfigError(
      [{ path: 'USEROPS_QUEUE', message: `Redis key ${key} holds something other than a database id` }],
      `Redis key ${key} holds something other than a database id (${err.message}); something other than userops wrote it. ` +
        `Delete it, and the consumer binds the queue to its database again.`,
    );
  }
}

/**
 * Binds the queue to database `dbId` unless it is bound already. Returns why the consumer must
 * refuse to serve it (bound to another database), or `undefined`.
 */
export async function bindDatabase(redis: Redis, target: DatabaseTarget, dbId: string): Promise<ConfigError | undefined> {
  const key = databaseKey(target);
  if ((await notAnIdKey(redis.set(key, dbId, 'NX'), target)) === 'OK') return undefined;
  const theirs = await notAnIdKey(redis.get(key), target);
  return theirs === dbId ? undefined : refusal(target, String(theirs), dbId);
}

/**
 * The binding a running consumer's writer lease is taken under (writer-lease.ts): checked at every
 * renewal, because Redis that loses its data loses the binding too, and a consumer started on
 * another file would then bind the queue to it.
 */
export function databaseBinding(target: DatabaseTarget, dbId: string): DatabaseBinding {
  return { key: databaseKey(target), id: dbId, describeRefusal: (theirs) => refusal(target, theirs, dbId).message };
}

/**
 * Why the consumer must refuse the queue before opening its database (`mine`, from store.ts's
 * `fileDatabaseId`) for writing, or `undefined`. `theirs` is the queue's, `null` if none yet.
 */
export function earlyRefusal(target: DatabaseTarget, mine: string | null, theirs: string | null): ConfigError | undefined {
  if (theirs === null || mine === theirs) return undefined;
  return refusal(target, theirs, mine);
}

/** @param mine - the refused database's id; `null` for a database with none (not created yet, or from before identities) */
function refusal(target: DatabaseTarget, theirs: string, mine: string | null): ConfigError {
  const { queue, dbPath } = target;
  const [what, why] =
    mine !== null
      ? [`is database ${mine}`, '']
      : existsSync(dbPath)
        ? ['has no identity yet', ' (a schema from before identities: one is made when it is upgraded, so it could not be it)']
        : ['does not exist', ' (a new database could not be it)'];
  return new ConfigError(
    [{ path: 'USEROPS_DB', message: `${dbPath} ${what}, not the queue's database ${theirs}` }],
    `Queue ${queue} is served from database ${theirs}, but ${dbPath} ${what}${why}. ` +
      `Point USEROPS_DB at that database (or a backup of it), or use another queue. If the old database is gone for good, ` +
      `or this file is it from before the upgrade, delete the Redis key ${databaseKey(target)} to serve the queue from this one.`,
  );
}
