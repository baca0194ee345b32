/**
 * The wire protocol shared by producer and consumer: op names and schemas, the job envelope, and
 * the error catalogue. Everything that crosses the queue is defined here and nowhere else.
 */
export * from './envelope.js';
export * from './errors.js';
export * from './ops.js';
export * from './reply.js';
export * from './validate.js';
