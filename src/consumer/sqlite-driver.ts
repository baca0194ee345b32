/**
 * Which build of better-sqlite3 this Node runs. Neither major works on every Node we support:
 * - 12.x wraps its objects in Node's own `node::ObjectWrap`. Built against Node 24.19+ headers,
 *   a statement freed by the garbage collector at the wrong moment aborts the whole process
 *   (`Assertion failed: (env) != nullptr` in `RemoveEnvironmentCleanupHook`; nodejs/node#65446).
 *   It did here, under load, in the bench on Node 24.21, the Docker image's Node line.
 * - 13.x is rebuilt on Node-API and has no such hook, but declares Node >= 22 and crashes at
 *   its first call on Node 20.
 * Both are installed (13.x under the alias `better-sqlite3-napi`); the API is the same.
 */
import { createRequire } from 'node:module';

import type BetterSqlite3 from 'better-sqlite3';

const require = createRequire(import.meta.url);

/** The package this Node loads: 13.x from Node 22 on, 12.x on Node 20. */
export const SQLITE_PACKAGE = Number(process.versions.node.split('.')[0]) >= 22 ? 'better-sqlite3-napi' : 'better-sqlite3';

/** Its entry point's path, for worker threads that load it themselves (checkpointer.ts). */
export const SQLITE_ENTRY = require.resolve(SQLITE_PACKAGE);

/** The `Database` class of {@link SQLITE_PACKAGE}. */
const Database = require(SQLITE_PACKAGE) as typeof BetterSqlite3;
export default Database;
