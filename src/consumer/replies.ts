/**
 * Sends each job's outcome to the reply stream of the client that sent it (see
 * protocol/reply.ts), a group's replies in one round trip.
 */
import type { Redis } from 'ioredis';

import { type Reply, REPLY_STREAM_MAXLEN, REPLY_STREAM_TTL_MS, replyFields } from '../protocol/index.js';

/** A reply and the client it goes to. */
export interface Addressed {
  replyId: string;
  reply: Reply;
}

/** Writes replies to clients' reply streams. */
export class ReplySender {
  /**
   * @param redis - a connection that queues commands through a reconnect, so a reply sent during a
   *   blip still arrives
   * @param keyOf - the reply stream key of a client's reply id
   */
  constructor(
    private readonly redis: Redis,
    private readonly keyOf: (replyId: string) => string,
  ) {}

  /** Appends each reply to its client's stream and renews the streams' TTL. Rejects if Redis refused any. */
  async send(replies: readonly Addressed[]): Promise<void> {
    if (replies.length === 0) return;
    const pipeline = this.redis.pipeline();
    const keys = new Set<string>();
    for (const { replyId, reply } of replies) {
      const key = this.keyOf(replyId);
      pipeline.xadd(key, 'MAXLEN', '~', REPLY_STREAM_MAXLEN, '*', ...replyFields(reply));
      keys.add(key);
    }
    for (const key of keys) pipeline.pexpire(key, REPLY_STREAM_TTL_MS);
    for (const [err] of (await pipeline.exec()) ?? []) if (err) throw err;
  }
}
