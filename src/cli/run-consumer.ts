/**
 * `userops consumer`: runs the daemon in this process and owns its signals. The only place that
 * handles SIGTERM/SIGINT: finish the job in hand, close everything, exit 0 within the grace time.
 */
import { dirname, join } from 'node:path';

import { consumerConfig } from '../config.js';
import { UserOpsConsumer } from '../consumer/consumer.js';
import { findOnPath, isPortOpen, type PrivateRedis, startPrivateRedis } from '../consumer/private-redis.js';
import { createLogger } from '../logger.js';
import { ConfigError } from '../protocol/errors.js';
import { DEFAULT_REDIS_URL } from '../redis.js';

/** Past this, shutdown gives up waiting and exits non-zero: inside the grace the compose file (15 s) and the systemd unit (12 s) give it before SIGKILL. */
const SHUTDOWN_DEADLINE_MS = 9000;

/** Runs until a signal arrives; resolves once started. */
export async function runConsumer(): Promise<void> {
  const config = consumerConfig();
  const logger = createLogger(config.logLevel);
  let privateRedis: PrivateRedis | undefined;
  let redisUrl = config.redisUrl;
  if (redisUrl === undefined) {
    if (await isPortOpen('127.0.0.1', 6379)) {
      redisUrl = DEFAULT_REDIS_URL;
    } else {
      const binary = findOnPath('redis-server');
      if (!binary) {
        throw new ConfigError(
          [{ path: 'REDIS_URL', message: 'unset' }],
          'REDIS_URL is not set, nothing answers on 127.0.0.1:6379, and redis-server is not on PATH. ' +
            'Set REDIS_URL to your Redis, or install redis-server (e.g. apt-get install redis-server).',
        );
      }
      privateRedis = await startPrivateRedis(binary, join(dirname(config.dbPath), 'redis'), 6379, logger);
      redisUrl = privateRedis.url;
    }
  }

  const consumer = new UserOpsConsumer({
    redisUrl,
    queue: config.queue,
    dbPath: config.dbPath,
    logger,
    maxOpsPerJob: config.maxOpsPerJob,
    maxJobBytes: config.maxJobBytes,
    ledgerRetentionMs: config.ledgerRetentionMs,
    http: config.http,
  });
  const shutdown = async (): Promise<void> => {
    await consumer.close();
    await privateRedis?.stop();
  };

  let signalled = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (signalled) {
      logger.warn({ signal }, 'second signal: exiting now');
      process.exit(130);
    }
    signalled = true;
    logger.info({ signal }, 'shutting down: finishing the job in hand');
    setTimeout(() => {
      logger.error({ deadlineMs: SHUTDOWN_DEADLINE_MS }, 'shutdown took too long; exiting');
      process.exit(1);
    }, SHUTDOWN_DEADLINE_MS).unref();
    shutdown().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'error during shutdown');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);

  try {
    await consumer.start();
  } catch (err) {
    await shutdown();
    throw err;
  }
}
