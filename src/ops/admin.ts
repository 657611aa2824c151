import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import type { GuardConfig } from '../config/schema.js';
import { listen } from '../server/listen.js';
import type { Logger } from './logger.js';

/** How long one upstream TCP probe may take, and how long its answer is reused (probes are cheap, not free). */
const PROBE_TIMEOUT_MS = 1000;
const PROBE_CACHE_MS = 1000;

function probeUpstream(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(PROBE_TIMEOUT_MS, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

export interface Admin {
  port: number;
  close(): Promise<void>;
}

/**
 * The admin listener (keep it off the public interface): `/healthz` says the process is alive,
 * `/readyz` says it should get traffic (listening, not draining, upstream accepting TCP), `/metrics` is
 * Prometheus text.
 */
export interface AdminSources {
  /** True once the guard (or the process group) is draining. */
  draining: () => boolean;
  /** The Prometheus text and its content type. */
  metrics: () => Promise<{ contentType: string; text: string }>;
}

/** An error as one line of an HTTP answer. */
function oneLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).replace(/\s+/g, ' ').trim();
}

/**
 * Answers each request; nothing it does may reject or throw out of the request handler, where it would
 * end the process (with workers: the primary, and every worker with it).
 */
export async function startAdmin(config: GuardConfig, sources: AdminSources, logger?: Logger): Promise<Admin> {
  const address = config.admin!;
  let probe: { at: number; ok: Promise<boolean> } | undefined;
  const upstreamUp = () => {
    if (probe === undefined || Date.now() - probe.at > PROBE_CACHE_MS) {
      probe = { at: Date.now(), ok: probeUpstream(config.upstream.host, config.upstream.port) };
    }
    return probe.ok;
  };

  const text = (res: http.ServerResponse, status: number, body: string, type = 'text/plain; charset=utf-8') => {
    res.writeHead(status, { 'Content-Type': type, 'Cache-Control': 'no-store' }).end(body);
  };
  const answer = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') return text(res, 405, 'GET only\n');
    if (path === '/healthz') return text(res, 200, 'ok\n');
    if (path === '/readyz') {
      if (sources.draining()) return text(res, 503, 'draining\n');
      return (await upstreamUp()) ? text(res, 200, 'ready\n') : text(res, 503, 'upstream unreachable\n');
    }
    if (path === '/metrics') {
      let metrics: { contentType: string; text: string };
      try {
        metrics = await sources.metrics();
      } catch (err) {
        // A failed scrape is the scraper's to see (Prometheus records it as down), not a reason to stop.
        logger?.warn({ err }, 'metrics collection failed');
        return text(res, 503, `metrics unavailable: ${oneLine(err)}\n`);
      }
      return text(res, 200, metrics.text, metrics.contentType);
    }
    return text(res, 404, 'not found: /healthz /readyz /metrics\n');
  };
  const server = http.createServer((req, res) => {
    answer(req, res).catch((err: unknown) => {
      logger?.error({ err, path: req.url }, 'admin request failed');
      if (res.headersSent) res.destroy();
      else text(res, 500, 'internal error\n');
    });
  });
  await listen(server, address.host, address.port, 'admin');
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        // The process is leaving: a scrape's keep-alive connection must not hold it for keepAliveTimeout.
        server.closeAllConnections();
      }),
  };
}
