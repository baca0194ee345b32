/**
 * The consumer's HTTP server: `/healthz` (liveness), `/readyz` (readiness, part by part),
 * `/metrics` (Prometheus) and, when asked for, the bull-board dashboard under `/dashboard`.
 *
 * Plain node:http: three read-only endpoints need no framework. The dashboard brings its own
 * (see dashboard.ts) and is loaded only when turned on.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

import type { Queue } from 'bullmq';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';

import { ConfigError } from '../protocol/index.js';
import { settleWithin } from '../redis.js';
import type { DashboardAuth, RequestListener } from './dashboard.js';
import type { Readiness } from './health.js';

/** Where the dashboard is served. */
export const DASHBOARD_PATH = '/dashboard';

/** How long `close()` lets requests in flight finish before cutting their connections. */
const CLOSE_GRACE_MS = 1000;

/** What the server serves from. */
export interface HttpServerDeps {
  readiness(): Promise<Readiness>;
  registry: Registry;
  /** The queue the dashboard shows. */
  queue: Queue;
  log: Logger;
}

/** Where and what to serve; see `ConsumerOptions.http`. */
export interface HttpServerOptions {
  port: number;
  host: string;
  dashboard?: { auth?: DashboardAuth } | undefined;
}

/** A listening server; `close()` is idempotent. */
export class HttpServer {
  private closing?: Promise<void>;

  private constructor(
    private readonly server: Server,
    private readonly log: Logger,
  ) {}

  /**
   * Listens on `options.host:options.port` (port 0: any free port, see {@link address}). Throws a
   * `ConfigError` naming USEROPS_HTTP_PORT / USEROPS_HTTP_HOST when it cannot listen there.
   */
  static async start(options: HttpServerOptions, deps: HttpServerDeps): Promise<HttpServer> {
    const dashboard = options.dashboard
      ? (await import('./dashboard.js')).createDashboard(DASHBOARD_PATH, deps.queue, options.dashboard.auth, deps.log)
      : undefined;
    const server = createServer((req, res) => {
      route(req, res, deps, dashboard).catch((err: unknown) => {
        deps.log.error({ err, path: req.url }, 'http request failed');
        if (!res.headersSent) send(res, 500, 'text/plain', 'internal error\n');
        else res.destroy();
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port, options.host, () => {
        server.off('error', reject);
        resolve();
      });
    }).catch((err: NodeJS.ErrnoException) => {
      const where = `${options.host}:${options.port}`;
      throw new ConfigError(
        [{ path: 'USEROPS_HTTP_PORT', message: `cannot listen on ${where}: ${err.code ?? err.message}` }],
        `The HTTP server cannot listen on ${where} (${err.code ?? err.message}). Set USEROPS_HTTP_PORT to a free port ` +
          '(0 turns the server off) or USEROPS_HTTP_HOST to an address of this host.',
      );
    });
    server.on('error', (err) => deps.log.error({ err }, 'http server error'));
    return new HttpServer(server, deps.log);
  }

  /** The address listened on. */
  get address(): { host: string; port: number } {
    const { address, port } = this.server.address() as AddressInfo;
    return { host: address, port };
  }

  /** Stops listening and ends keep-alive connections; requests in flight get a moment to finish. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
      this.server.closeIdleConnections();
      if (!(await settleWithin(closed, CLOSE_GRACE_MS))) this.server.closeAllConnections();
      await closed;
      this.log.info('http server closed');
    })();
    return this.closing;
  }
}

async function route(req: IncomingMessage, res: ServerResponse, deps: HttpServerDeps, dashboard: RequestListener | undefined): Promise<void> {
  const path = (req.url ?? '/').split('?', 1)[0];
  // The dashboard has its own routes and methods (retrying a job is a PUT).
  if (dashboard && (path === DASHBOARD_PATH || path?.startsWith(`${DASHBOARD_PATH}/`))) {
    await dashboard(req, res);
    return;
  }
  if (path !== '/healthz' && path !== '/readyz' && path !== '/metrics') {
    send(res, 404, 'text/plain', 'not found\n');
    return;
  }
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.setHeader('Allow', 'GET, HEAD');
    send(res, 405, 'text/plain', 'method not allowed\n');
    return;
  }
  switch (path) {
    case '/healthz':
      // Answering at all is the proof: the event loop runs.
      sendJson(res, 200, { alive: true, uptimeSeconds: Math.round(process.uptime()) });
      return;
    case '/readyz': {
      const readiness = await deps.readiness();
      sendJson(res, readiness.ready ? 200 : 503, readiness);
      return;
    }
    case '/metrics':
      send(res, 200, deps.registry.contentType, await deps.registry.metrics());
      return;
  }
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  send(res, status, 'application/json', `${JSON.stringify(body)}\n`);
}

function send(res: ServerResponse, status: number, contentType: string, body: string): void {
  res.writeHead(status, { 'Content-Type': contentType, 'Cache-Control': 'no-store' });
  res.end(body);
}
