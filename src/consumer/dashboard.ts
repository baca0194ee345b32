/**
 * The bull-board dashboard, the one BullMQ users know, served by the consumer's HTTP server.
 *
 * bull-board needs a web framework adapter; Hono's is the lightest (hono and @hono/node-server
 * have no dependencies of their own, where Express brings some thirty) and mounts on node:http as
 * a plain request listener. Loaded only when the dashboard is turned on.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { isIP } from 'node:net';

import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { HonoAdapter } from '@bull-board/hono';
import { getRequestListener } from '@hono/node-server';
import { serveStatic } from '@hono/node-server/serve-static';
import type { Queue } from 'bullmq';
import { Hono } from 'hono';
import type { Logger } from 'pino';

/** Basic-auth credentials the dashboard asks for. */
export interface DashboardAuth {
  user: string;
  password: string;
}

/** A node:http request handler. */
export type RequestListener = (req: IncomingMessage, res: ServerResponse) => Promise<void>;

/**
 * Headers on every dashboard answer. Job data holds people's names and addresses, which a browser's
 * cache must not keep, and no other site may frame the page to trick a click on its actions.
 */
const SECURITY_HEADERS = {
  'Cache-Control': 'no-store',
  'X-Frame-Options': 'DENY',
  'Content-Security-Policy': "frame-ancestors 'none'",
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
};

/**
 * The dashboard for `queue` under `basePath`, behind basic auth when `auth` is given. Requests that
 * would change the queue are refused unless they come from the dashboard's own pages, and without
 * `auth` only requests addressed to an IP address or `localhost` are answered at all.
 */
export function createDashboard(basePath: string, queue: Queue, auth: DashboardAuth | undefined, log: Logger): RequestListener {
  const adapter = new HonoAdapter(serveStatic).setBasePath(basePath);
  createBullBoard({ queues: [new BullMQAdapter(queue)], serverAdapter: adapter, options: { uiConfig: { boardTitle: 'userops' } } });
  const app = new Hono().route(basePath, adapter.registerPlugin());
  const listener = getRequestListener(app.fetch);
  const allowed = auth ? credentialsCheck(auth) : () => true;
  const refuse = (res: ServerResponse, status: number, body: string, headers: Record<string, string> = {}) => {
    res.writeHead(status, { ...SECURITY_HEADERS, ...headers, 'Content-Type': 'text/plain' });
    res.end(`${body}\n`);
  };
  return async (req, res) => {
    // A page of any site can point its own name at 127.0.0.1 (DNS rebinding) and then read an open
    // dashboard as its own origin; it cannot make the browser send another Host.
    if (!auth && !isAddressedByIp(req.headers.host)) {
      refuse(res, 403, 'a dashboard without credentials answers only requests addressed to an IP address or localhost');
      return;
    }
    if (!allowed(req.headers.authorization)) {
      refuse(res, 401, 'authentication required', { 'WWW-Authenticate': 'Basic realm="userops dashboard", charset="UTF-8"' });
      return;
    }
    const crossSite = crossSiteWrite(req);
    if (crossSite) {
      log.warn({ method: req.method, path: req.url, from: crossSite }, 'dashboard refused a request from another site to change the queue');
      refuse(res, 403, `refused: a request to change the queue from another site (${crossSite})`);
      return;
    }
    for (const [name, value] of Object.entries(SECURITY_HEADERS)) res.setHeader(name, value);
    await listener(req, res);
  };
}

/**
 * Why a request that would change the queue looks like it comes from another site's page, or
 * `undefined`. A browser sends the basic-auth password it has cached with any request to the
 * dashboard's origin, a form or a fetch from another page included (cross-site request forgery);
 * bull-board's API reads a `text/plain` POST as JSON, and such a POST needs no CORS preflight.
 * Browsers tell where a request comes from: `Sec-Fetch-Site` (every current one), and `Origin` on
 * every cross-origin POST or PUT. A request with neither (curl, a script) is no page's.
 */
export function crossSiteWrite(req: IncomingMessage): string | undefined {
  if (req.method === 'GET' || req.method === 'HEAD') return undefined;
  const site = req.headers['sec-fetch-site'];
  if (site !== undefined && site !== 'same-origin') return `Sec-Fetch-Site: ${site}`;
  const origin = req.headers.origin;
  if (origin !== undefined && originHost(origin) !== req.headers.host) return `Origin: ${origin}`;
  return undefined;
}

/** The host (with port) of an `Origin` header, or `undefined` for `null` and anything unparsable. */
function originHost(origin: string): string | undefined {
  try {
    return new URL(origin).host;
  } catch {
    return undefined;
  }
}

/** Whether a `Host` header names an IP address or `localhost`, not a DNS name someone else controls. */
function isAddressedByIp(host: string | undefined): boolean {
  const name = /^\[([^\]]+)\](?::\d+)?$/.exec(host ?? '')?.[1] ?? (host ?? '').replace(/:\d+$/, '');
  return isIP(name) !== 0 || name.toLowerCase() === 'localhost';
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
