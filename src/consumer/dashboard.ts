/**
 * The bull-board dashboard, the one BullMQ users know, served by the consumer's HTTP server.
 *
 * bull-board needs a web framework adapter; Hono's is the lightest (hono and @hono/node-server
 * have no dependencies of their own, where Express brings some thirty) and mounts on node:http as
 * a plain request listener. Loaded only when the dashboard is turned on.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';

import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { HonoAdapter } from '@bull-board/hono';
import { getRequestListener } from '@hono/node-server';
import { serveStatic } from '@hono/node-server/serve-static';
import type { Queue } from 'bullmq';
import { Hono } from 'hono';

/** Basic-auth credentials the dashboard asks for. */
export interface DashboardAuth {
  user: string;
  password: string;
}

/** A node:http request handler. */
export type RequestListener = (req: IncomingMessage, res: ServerResponse) => Promise<void>;

/** The dashboard for `queue` under `basePath`, behind basic auth when `auth` is given. */
export function createDashboard(basePath: string, queue: Queue, auth: DashboardAuth | undefined): RequestListener {
  const adapter = new HonoAdapter(serveStatic).setBasePath(basePath);
  createBullBoard({ queues: [new BullMQAdapter(queue)], serverAdapter: adapter, options: { uiConfig: { boardTitle: 'userops' } } });
  const app = new Hono().route(basePath, adapter.registerPlugin());
  const listener = getRequestListener(app.fetch);
  const allowed = auth ? credentialsCheck(auth) : () => true;
  return async (req, res) => {
    if (!allowed(req.headers.authorization)) {
      res.writeHead(401, { 'WWW-Authenticate': 'Basic realm="userops dashboard", charset="UTF-8"', 'Content-Type': 'text/plain' });
      res.end('authentication required\n');
      return;
    }
    await listener(req, res);
  };
}

/**
 * A check of an `Authorization: Basic` header against `auth`, in constant time: both sides are
 * hashed first, so neither the length nor the first differing byte of a guess shows in the timing.
 */
function credentialsCheck(auth: DashboardAuth): (header: string | undefined) => boolean {
  const digest = (s: string) => createHash('sha256').update(s).digest();
  const user = digest(auth.user);
  const password = digest(auth.password);
  return (header) => {
    const match = /^Basic +([A-Za-z0-9+/=]+)$/i.exec(header ?? '');
    const decoded = Buffer.from(match?.[1] ?? '', 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    // Both compared every time, also when the user is wrong.
    const userOk = timingSafeEqual(digest(colon < 0 ? '' : decoded.slice(0, colon)), user);
    const passwordOk = timingSafeEqual(digest(colon < 0 ? '' : decoded.slice(colon + 1)), password);
    return match !== null && colon >= 0 && userOk && passwordOk;
  };
}
