/**
 * `userops`: the producer library. Enqueue user operations for the single-writer consumer and
 * await their results; errors arrive as the typed classes exported here.
 */
export { UserOpsClient } from './producer/client.js';
export type { CreateUserInput, ListUsersInput, UpdateUserInput } from './producer/client.js';
export type { ClientOptions } from './producer/options.js';
export {
  ClientClosedError,
  ConfigError,
  ErrorCode,
  JobFailedError,
  OpTimeoutError,
  OverloadedError,
  RedisUnavailableError,
  UserExistsError,
  UserNotFoundError,
  UserOpsError,
  ValidationError,
} from './protocol/errors.js';
export type { AppliedState, ValidationIssue, WireError } from './protocol/errors.js';
export type { JobPayload, JobResults, OpResult, WireOp } from './protocol/envelope.js';
export { DEFAULT_QUEUE, PROTOCOL_VERSION } from './protocol/envelope.js';
export type { OpName, User } from './protocol/ops.js';
