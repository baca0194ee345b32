/**
 * Schema migrations, versioned with `PRAGMA user_version`. Append only: migration N brings the
 * schema from version N-1 to N. Never edit a migration that has shipped.
 */
import type { Database } from 'better-sqlite3';

import { ConfigError } from '../protocol/index.js';

const MIGRATIONS: readonly string[] = [
  // 1: users and the job ledger.
  `
  CREATE TABLE users (
    id         INTEGER PRIMARY KEY,
    nickname   TEXT    NOT NULL UNIQUE,
    full_name  TEXT    NOT NULL,
    email      TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
  ) STRICT;

  -- One row per applied job: a job delivered again returns these results and applies nothing.
  CREATE TABLE ledger (
    job_id     TEXT    PRIMARY KEY,
    results    TEXT    NOT NULL,
    applied_at INTEGER NOT NULL
  ) STRICT;
  CREATE INDEX ledger_applied_at ON ledger (applied_at);
  `,
  // 2: the ledger remembers what each job carried. A job id alone is not proof of the same job:
  // BullMQ's default ids are a counter that starts again if Redis loses its data.
  `
  ALTER TABLE ledger ADD COLUMN payload_hash TEXT NOT NULL DEFAULT '';
  `,
  // 3: the database's identity, so a queue served from one file refuses a consumer on another.
  `
  CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
  INSERT INTO meta (key, value) VALUES ('db_id', lower(hex(randomblob(16))));
  `,
  // 4: the ledger's row count, kept by triggers. count(*) costs ~10 ms per million rows, and a
  // week's ledger can hold tens of millions: too long to block the writer at every metrics scrape.
  `
  CREATE TABLE ledger_count (n INTEGER NOT NULL) STRICT;
  INSERT INTO ledger_count (n) SELECT count(*) FROM ledger;
  CREATE TRIGGER ledger_count_insert AFTER INSERT ON ledger BEGIN UPDATE ledger_count SET n = n + 1; END;
  CREATE TRIGGER ledger_count_delete AFTER DELETE ON ledger BEGIN UPDATE ledger_count SET n = n - 1; END;
  `,
];

/** The schema version this build writes. */
export const SCHEMA_VERSION = MIGRATIONS.length;

/**
 * Throws if schema `version` was written by a newer build, which this one would misread. A
 * `ConfigError`: the wrong build for this file (exit 2), which restarting cannot mend.
 */
export function assertSupported(version: number): void {
  if (version > SCHEMA_VERSION) {
    const message = `Database schema version ${version} is newer than this build supports (${SCHEMA_VERSION}); upgrade userops`;
    throw new ConfigError([{ path: 'USEROPS_DB', message: `schema version ${version}, newer than ${SCHEMA_VERSION}` }], message);
  }
}

/**
 * Brings the database up to {@link SCHEMA_VERSION}, each step in its own transaction. Refuses a
 * database written by a newer build, which this one would misread.
 */
export function migrate(db: Database): { from: number; to: number } {
  const from = db.pragma('user_version', { simple: true }) as number;
  assertSupported(from);
  for (let version = from; version < SCHEMA_VERSION; version++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[version] as string);
      db.pragma(`user_version = ${version + 1}`);
    })();
  }
  return { from, to: SCHEMA_VERSION };
}
