import http, { type IncomingMessage } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { GuardConfig } from '../config/schema.js';
import { GuardError } from '../errors.js';
import { MemoryStore } from '../limits/memory-store.js';
import type { LimitStore } from '../limits/store.js';
import { GuardEvents } from '../events.js';
import type { Session, SessionEnd } from '../proxy/session.js';
import { TrustedProxies, normalizeAddress, type ForwardContext } from './forwarded.js';
import { createHttpPassThrough } from './http-proxy.js';
import { createRouter, identityHeaderNames } from './routes.js';
import { createUpgradeHandler } from './upgrade.js';

export interface GuardOptions {
  /** Where the guard reports what happens; subscribe logs and metrics here before starting. */
  events?: GuardEvents;
  /** Connection counts and rates; the in-memory store by default. */
  store?: LimitStore;
}

export interface Guard {
  readonly events: GuardEvents;
  readonly port: number;
  readonly host: string;
  /** Open WebSocket sessions. */
  readonly sessions: ReadonlySet<Session>;
  /** Set once `drain` has begun. */
  readonly draining: boolean;
  /**
   * Stops listening, closes every open connection with 1001 at a frame boundary on both sides, and
   * resolves when all are gone or after `timeouts.drain`, when the rest are destroyed.
   */
  drain(): Promise<void>;
  /** Stops listening and destroys every open connection at once. */
  close(): Promise<void>;
}

/**
 * Starts the listener: plain requests are passed through, upgrades are checked, dialled to the upstream
 * and, on a valid 101, handed to a Session that inspects every frame both ways.
 */
export async function startGuard(config: GuardConfig, options: GuardOptions = {}): Promise<Guard> {
  const events = options.events ?? new GuardEvents();
  const store = options.store ?? new MemoryStore();
  const trusted = new TrustedProxies(config.trustedProxies);
  const identityHeaders = identityHeaderNames(config);
  const passThrough = createHttpPassThrough(config, events, identityHeaders);
  const sessions = new Set<Session>();
  let draining = false;

  const server = http.createServer({
    // The handshake deadline (design.md §3 timeouts.handshake) is Node's own headers timeout, answered 408.
    headersTimeout: config.timeouts.handshake,
    requestTimeout: 0,
    connectionsCheckingInterval: Math.min(1000, Math.max(100, Math.floor(config.timeouts.handshake / 4))),
  });

  const forwardContext = (req: IncomingMessage): ForwardContext => {
    const peer = normalizeAddress(req.socket.remoteAddress);
    return { peer, trusted: trusted.has(peer), proto: 'http', host: req.headers.host };
  };

  const upgrades = createUpgradeHandler({
    config,
    events,
    trusted,
    route: createRouter(config),
    identityHeaders,
    forwardContext,
    store,
    draining: () => draining,
    onSession(session, meta) {
      sessions.add(session);
      session.once('end', (end: SessionEnd) => {
        sessions.delete(session);
        events.emit('closed', { ...end, ...meta });
      });
    },
  });
  /** A refusal before any request was parsed (CONNECT, malformed heads, timeouts). */
  const early = (socket: Socket, req?: IncomingMessage) => ({
    startedAt: Date.now(), ip: normalizeAddress(socket.remoteAddress), req, route: undefined,
  });

  server.on('request', (req, res) => passThrough(req, res, forwardContext(req)));

  server.on('connect', (req, socket: Socket) => {
    socket.on('error', () => socket.destroy());
    upgrades.refuse(socket, new GuardError('BAD_METHOD', 'CONNECT', { Allow: 'GET' }), early(socket, req));
  });

  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    if (err.code === 'ECONNRESET' || !socket.writable) {
      socket.destroy();
      return;
    }
    const code = err.code === 'HPE_HEADER_OVERFLOW'
      ? 'HEADERS_TOO_LARGE'
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'HANDSHAKE_TIMEOUT' : 'BAD_REQUEST';
    upgrades.refuse(socket, new GuardError(code, err.code), early(socket));
  });

  server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => upgrades.handle(req, socket, head));

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.listen.port, config.listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  events.emit('listening', { address: `${address.address}:${address.port}`, upstream: config.upstream.origin });

  const stopListening = () =>
    new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeIdleConnections();
    });

  return {
    events,
    port: address.port,
    host: address.address,
    sessions,
    get draining() {
      return draining;
    },
    async drain() {
      draining = true;
      const closed = stopListening();
      events.emit('draining', { open: sessions.size, timeoutMs: config.timeouts.drain });
      for (const session of sessions) session.close('SHUTTING_DOWN', 'drain');
      const deadline = setTimeout(() => {
        for (const session of sessions) session.destroy();
        upgrades.destroyPending();
        server.closeAllConnections();
      }, config.timeouts.drain);
      await closed;
      clearTimeout(deadline);
    },
    async close() {
      const closed = stopListening();
      for (const session of sessions) session.destroy();
      upgrades.destroyPending();
      server.closeAllConnections();
      await closed;
    },
  };
}
