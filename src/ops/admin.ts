import { createHash, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import type { GuardConfig } from '../config/schema.js';
import { parseDuration } from '../config/units.js';
import { MAX_BAN_MS, type BanKind } from '../limits/bans.js';
import { normalizeAddress } from '../server/forwarded.js';
import type { ConnectionInfo, ConnectionSelector, Guard } from '../server/guard.js';
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

/** The largest POST /connections/close body read (a form with one selector and a ban fits many times). */
const MAX_BODY_BYTES = 8192;

/**
 * The operator kill switch behind GET /connections and POST /connections/close. Here it acts on this
 * process (`localOperator`); a shared transport (Redis pub/sub) can implement the same two calls to list
 * and close across replicas.
 */
export interface Operator {
  connections(): Promise<ConnectionInfo[]>;
  /** Closes the matching connections (4003 both sides), first banning the user or address for `banMs`. */
  close(selector: ConnectionSelector, banMs: number | undefined): Promise<CloseOutcome>;
}

export interface CloseOutcome {
  /** Connections closed by this process (or its workers). */
  closed: number;
  /** With store.redis: the ws-guard processes the order reached through Redis, this one included. */
  reached?: number;
}

/** The kill switch of one guard in this process. */
export function localOperator(guard: Pick<Guard, 'connections' | 'closeConnections' | 'bans'>): Operator {
  return {
    connections: () => Promise.resolve(guard.connections()),
    close(selector, banMs) {
      if (banMs !== undefined) {
        const kind: BanKind = 'user' in selector ? 'user' : 'ip';
        guard.bans.add(kind, 'user' in selector ? selector.user : (selector as { ip: string }).ip, banMs);
      }
      return Promise.resolve({ closed: guard.closeConnections(selector) });
    },
  };
}

/** A bearer token compared in constant time (both sides hashed first, so their lengths leak nothing either). */
function tokenMatches(header: string | undefined, token: string): boolean {
  const match = /^Bearer[ ]+(\S+)\s*$/i.exec(header ?? '');
  if (match === null) return false;
  const digest = (text: string) => createHash('sha256').update(text).digest();
  return timingSafeEqual(digest(match[1]!), digest(token));
}

class BadRequest extends Error {}

/** `user=`, `ip=` or `id=` (exactly one), and an optional `ban=` duration for user or ip. */
function closeRequest(params: URLSearchParams): { selector: ConnectionSelector; banMs: number | undefined } {
  for (const key of params.keys()) {
    if (!['user', 'ip', 'id', 'ban'].includes(key)) throw new BadRequest(`unknown parameter "${key}": expected user=, ip= or id=, and optionally ban=`);
  }
  const given = (['user', 'ip', 'id'] as const).filter((k) => params.has(k));
  if (given.length !== 1) throw new BadRequest('expected exactly one of user=, ip= or id=');
  const [key] = given as [ 'user' | 'ip' | 'id'];
  const value = params.get(key)!;
  if (value === '') throw new BadRequest(`${key}= is empty`);
  let selector: ConnectionSelector;
  if (key === 'id') {
    if (!/^[1-9][0-9]{0,15}$/.test(value)) throw new BadRequest(`id= expects a connection id, got "${value}"`);
    selector = { id: Number(value) };
  } else selector = key === 'user' ? { user: value } : { ip: normalizeAddress(value) };
  const ban = params.get('ban');
  if (ban === null) return { selector, banMs: undefined };
  if (key === 'id') throw new BadRequest('ban= needs user= or ip= (a connection id names no one to ban)');
  const banMs = parseDuration(ban);
  if (banMs === undefined || banMs <= 0 || banMs > MAX_BAN_MS) throw new BadRequest(`ban= expects a duration from 1s to 24h, like 10m; got "${ban}"`);
  return { selector, banMs };
}

function readBody(req: http.IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new BadRequest(`body over ${MAX_BODY_BYTES} bytes`));
        req.destroy();
      } else chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

export interface Admin {
  port: number;
  close(): Promise<void>;
}

/**
 * The admin listener (keep it off the public interface): `/healthz` says the process is alive,
 * `/readyz` says it should get traffic (listening, not draining, upstream accepting TCP), `/metrics` is
 * Prometheus text. With a token: `/connections` (GET) and `/connections/close` (POST), see docs/operations.md.
 */
export interface AdminSources {
  /** True once the guard (or the process group) is draining. */
  draining: () => boolean;
  /** The Prometheus text and its content type. */
  metrics: () => Promise<{ contentType: string; text: string }>;
  /** The kill switch; absent where this process cannot act on the connections (answered 501). */
  operator?: Operator | undefined;
  /** With store.onError: closed, whether the shared limit store answers (else every upgrade gets 503). */
  storeReady?: (() => boolean) | undefined;
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
  const json = (res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) => {
    res.writeHead(status, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store', ...headers }).end(`${JSON.stringify(body)}\n`);
  };
  /**
   * GET /connections and POST /connections/close: only with `admin: { listen, token }` (they list and
   * disconnect users: personal data and a kill switch), and only with that token.
   */
  const operate = async (req: http.IncomingMessage, res: http.ServerResponse, path: string, query: string) => {
    const method = path === '/connections' ? 'GET' : 'POST';
    if (req.method !== method && !(method === 'GET' && req.method === 'HEAD')) {
      return json(res, 405, { error: `${path} answers ${method} only` }, { Allow: method });
    }
    const token = address.token;
    if (token === undefined) {
      return json(res, 404, { error: `${path} needs a token: configure admin: { listen: host:port, token: \"\${ADMIN_TOKEN}\" }` });
    }
    if (!tokenMatches(req.headers.authorization, token)) {
      return json(res, 401, { error: 'a valid admin token is required (Authorization: Bearer <token>)' }, { 'WWW-Authenticate': 'Bearer realm="ws-guard-admin"' });
    }
    const operator = sources.operator;
    if (operator === undefined) return json(res, 501, { error: `${path} is not served by this process` });
    // With workers, one that does not answer in time fails the request: 503 naming it (a retry is safe).
    const unavailable = (err: unknown) => {
      logger?.warn({ err, path }, 'admin: operator request failed');
      json(res, 503, { error: oneLine(err) });
    };
    if (method === 'GET') return operator.connections().then((connections) => json(res, 200, { connections }), unavailable);
    let request: ReturnType<typeof closeRequest>;
    try {
      const params = new URLSearchParams(query);
      for (const [k, v] of new URLSearchParams(await readBody(req))) params.append(k, v);
      request = closeRequest(params);
    } catch (err) {
      if (!(err instanceof BadRequest)) throw err;
      return json(res, 400, { error: err.message });
    }
    return operator.close(request.selector, request.banMs).then((outcome) => {
      logger?.warn({ ...request.selector, banMs: request.banMs, ...outcome }, 'admin: connections closed by an operator');
      json(res, 200, outcome);
    }, unavailable);
  };
  const answer = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const [path = '/', query = ''] = (req.url ?? '/').split('?');
    if (path === '/connections' || path === '/connections/close') return operate(req, res, path, query);
    if (req.method !== 'GET' && req.method !== 'HEAD') return text(res, 405, 'GET only\n');
    if (path === '/healthz') return text(res, 200, 'ok\n');
    if (path === '/readyz') {
      if (sources.draining()) return text(res, 503, 'draining\n');
      if (sources.storeReady?.() === false) return text(res, 503, 'limit store unreachable (store.onError: closed)\n');
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
    return text(res, 404, `not found: /healthz /readyz /metrics${address.token === undefined ? '' : ' /connections /connections/close'}\n`);
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
