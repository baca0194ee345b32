/**
 * A private redis-server for a developer's machine: when no Redis is configured or running, the
 * daemon starts one so the whole product runs with one command, and stops it on exit.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { connect } from 'node:net';
import { delimiter, join } from 'node:path';
import { accessSync, constants } from 'node:fs';

import type { Logger } from 'pino';

/** Finds an executable on PATH, or `undefined`. */
export function findOnPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here; keep looking
    }
  }
  return undefined;
}

/** True if something accepts TCP connections on host:port within `timeoutMs`. */
export function isPortOpen(host: string, port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (open: boolean) => {
      socket.destroy();
      resolve(open);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/** A redis-server child process owned by the daemon. */
export interface PrivateRedis {
  url: string;
  /** Stops the server (it rewrites nothing: AOF is already on disk) and waits for it to exit. */
  stop(): Promise<void>;
}

/**
 * Starts redis-server on 127.0.0.1:`port` with AOF on, its files under `dir`, and waits until it
 * accepts connections. Producers on this machine then find it at the default URL.
 */
export async function startPrivateRedis(binary: string, dir: string, port: number, logger: Logger): Promise<PrivateRedis> {
  mkdirSync(dir, { recursive: true });
  const child: ChildProcess = spawn(
    binary,
    [
      '--bind', '127.0.0.1', '--port', String(port), '--dir', dir,
      '--appendonly', 'yes', '--appendfsync', 'everysec', '--save', '',
      // A queue must never lose jobs to eviction: refuse writes instead when memory runs out.
      '--maxmemory-policy', 'noeviction',
      '--daemonize', 'no', '--logfile', join(dir, 'redis.log'),
    ],
    { stdio: 'ignore' },
  );
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const spawnError = new Promise<never>((_, reject) => child.once('error', reject));
  const deadline = Date.now() + 10_000;
  while (!(await Promise.race([isPortOpen('127.0.0.1', port), spawnError]))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`redis-server did not start on 127.0.0.1:${port}; see ${join(dir, 'redis.log')}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  logger.info({ port, dir, redisPid: child.pid }, 'started a private redis-server (REDIS_URL unset, none running)');
  let stopping: Promise<void> | undefined;
  return {
    url: `redis://127.0.0.1:${port}`,
    stop() {
      stopping ??= (async () => {
        if (child.exitCode === null) child.kill('SIGTERM');
        await exited;
        logger.info('private redis-server stopped');
      })();
      return stopping;
    },
  };
}
