/**
 * Which build of better-sqlite3 this Node runs. Neither major works on every Node we support:
 * - 12.x wraps its objects in Node's own `node::ObjectWrap`. Built against Node 24.19+ headers,
 *   a statement freed by the garbage collector at the wrong moment aborts the whole process
 *   (`Assertion failed: (env) != nullptr` in `RemoveEnvironmentCleanupHook`; nodejs/node#65446).
 *   It did here, under load, in the bench on Node 24.21, the Docker image's Node line.
 * - 13.x is rebuilt on Node-API and has no such hook, but declares Node >= 22 and crashes at
 *   its first call on Node 20.
 * Both are optional dependencies (13.x under the alias `better-sqlite3-napi`), so that a service
 * that installs userops only for its client never fails to install over a native build it does
 * not use; the API is the same.
 */
import { createRequire } from 'node:module';

import type BetterSqlite3 from 'better-sqlite3';

import { ConfigError } from '../protocol/errors.js';

const require = createRequire(import.meta.url);

/** The package this Node loads: 13.x from Node 22 on, 12.x on Node 20. */
export const SQLITE_PACKAGE = Number(process.versions.node.split('.')[0]) >= 22 ? 'better-sqlite3-napi' : 'better-sqlite3';

function resolveDriver(): string {
  try {
    return require.resolve(SQLITE_PACKAGE);
  } catch (err) {
    const which = SQLITE_PACKAGE === 'better-sqlite3' ? 'better-sqlite3 12' : 'better-sqlite3 13 (as better-sqlite3-napi)';
    // A ConfigError (exit 2): the installation is wrong, and restarting cannot mend it.
    const message =
      `The consumer needs ${which} on Node ${process.versions.node}, and it is not installed: it is an optional ` +
      "dependency of userops, left out by --omit=optional or by a failed native build (see npm install's output)";
    throw Object.assign(new ConfigError([{ path: SQLITE_PACKAGE, message: 'not installed' }], message), { cause: err });
  }
}

/** Its entry point's path, for worker threads that load it themselves (checkpointer.ts). */
export const SQLITE_ENTRY = resolveDriver();

/** The `Database` class of {@link SQLITE_PACKAGE}. */
const Database = require(SQLITE_PACKAGE) as typeof BetterSqlite3;
export default Database;
