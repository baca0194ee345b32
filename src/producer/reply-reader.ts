/**
 * Reads one client's reply stream (see protocol/reply.ts) and hands each job's outcome on.
 *
 * One blocking XREAD at a time, always from the last entry read, so a reconnect resumes where it
 * left off. A reply missed anyway (the stream trimmed or expired, Redis restarted without it) is
 * caught by the client's reconciling, which reads the job itself.
 */
import { setTimeout as sleep } from 'node:timers/promises';

import type { Redis } from 'ioredis';
import type { Logger } from 'pino';

import { parseReplyFields } from '../protocol/index.js';
import { settleWithin } from '../redis.js';
import type { Outcomes } from './link.js';

/** Longest one XREAD blocks; bounds nothing a user waits on (stop() disconnects). */
const BLOCK_MS = 5000;
/** Pause after a failed read, so a broken connection is not hammered. */
const RETRY_MS = 200;

/** The loop that reads a client's replies. */
export class ReplyReader {
  /** Everything up to this entry has been handed on. The stream is this client's own, so from the start. */
  private lastId = '0-0';
  private stopped = false;
  private loop?: Promise<void>;

  /**
   * @param redis - a connection of its own (XREAD blocks it), retrying through outages
   * @param key - the client's reply stream
   */
  constructor(
    private readonly redis: Redis,
    private readonly key: string,
    private readonly outcomes: Outcomes,
    private readonly log: Logger,
  ) {}

  /** Starts reading. Idempotent. */
  start(): void {
    this.loop ??= this.run();
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      try {
        const streams = await this.redis.xread('BLOCK', BLOCK_MS, 'STREAMS', this.key, this.lastId);
        for (const [, entries] of streams ?? []) {
          for (const [id, fields] of entries) {
            this.lastId = id;
            this.deliver(id, fields);
          }
        }
        // Drop what has been read (all but the last entry), on the way to the next XREAD: replies
        // carry whole results, and a busy client's stream would otherwise hold a thousand of them.
        if (streams) void this.redis.xtrim(this.key, 'MINID', this.lastId).catch(() => undefined);
      } catch (err) {
        if (this.stopped) break;
        this.log.debug({ err }, 'reading replies failed; reading again');
        await sleep(RETRY_MS);
      }
    }
  }

  private deliver(id: string, fields: string[]): void {
    const reply = parseReplyFields(fields);
    if (!reply) {
      this.log.warn({ key: this.key, id }, 'ignored a reply stream entry that is not a userops reply');
      return;
    }
    if ('failed' in reply) {
      this.outcomes.failed(reply.jobId, reply.failed);
      return;
    }
    let value: unknown;
    try {
      value = JSON.parse(reply.returnvalue);
    } catch {
      // Left to the dispatcher, which fails the job's calls saying the result was not a result list.
      value = reply.returnvalue;
    }
    this.outcomes.completed(reply.jobId, value);
  }

  /** Stops reading: the blocked XREAD is cut by disconnecting (a QUIT would wait it out). Idempotent. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.redis.disconnect();
    await settleWithin(this.loop, 1000);
  }
}
