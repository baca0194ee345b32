/**
 * `userops/consumer`: run the single-writer consumer from your own program.
 *
 * @example
 * ```ts
 * import { UserOpsConsumer } from 'userops/consumer';
 * const consumer = new UserOpsConsumer({ dbPath: './data/userops.db' });
 * await consumer.start();
 * process.once('SIGTERM', () => void consumer.close());
 * ```
 */
export { UserOpsConsumer } from './consumer.js';
export type { ConsumerOptions } from './options.js';
export type { ConsumerRole, ConsumerState, Readiness } from './health.js';
export type { ConsumerMetrics } from './metrics.js';
export { Store } from './store.js';
export { SCHEMA_VERSION } from './migrations.js';
