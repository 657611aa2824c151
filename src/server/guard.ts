import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import diagnostics_channel from 'node:diagnostics_channel';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import type { GuardConfig } from '../config/schema.js';
import { GuardError } from '../errors.js';
import { GuardEvents, routeName, type ConnectionMeta } from '../events.js';
import { Bans } from '../limits/bans.js';
import { HoldBudget } from '../limits/hold-budget.js';
import { MemoryStore } from '../limits/memory-store.js';
import type { LimitStore } from '../limits/store.js';
import type { Session, SessionEnd } from '../proxy/session.js';
import { TrustedProxies, normalizeAddress, type ForwardContext } from './forwarded.js';
import { answering } from './answering.js';
import { createRequestHandler } from './http-proxy.js';
import { RequestSlots } from '../policies/requests.js';
import { SlotWarnings } from '../policies/slots.js';
import { listen } from './listen.js';
import { createRouter, identityHeaderNames } from './routes.js';
import { createUpgradeHandler, type Handshake } from './upgrade.js';

export interface GuardOptions {
  /** Where the guard reports what happens; subscribe logs and metrics here before starting. */
  events?: GuardEvents;
  /** Connection counts and rates; the in-memory store by default. */
  store?: LimitStore;
  /** Session ids start after this (workers: each its own range, so an id names one connection in the group). */
  firstId?: number;
  /** Operator bans in force from the first connection on (store.redis: those kept in Redis, read before listening). */
  bans?: Bans;
}

/** One open connection as the admin listener lists it (GET /connections). */
export interface ConnectionInfo {
  id: number;
  user: string | null;
  ip: string;
  route: string;
  ageMs: number;
  messagesIn: number;
  messagesOut: number;
  bytesIn: number;
  bytesOut: number;
}

/** Which connections an operator closes: by session id, user (the canonical user key) or client address. */
export type ConnectionSelector = { id: number } | { user: string } | { ip: string };

export interface Guard {
  readonly events: GuardEvents;
  readonly port: number;
  readonly host: string;
  /** Open WebSocket sessions. */
  readonly sessions: ReadonlySet<Session>;
  /** Operator bans, checked by every route's ban policy; kept across reloads. */
  readonly bans: Bans;
  /** The open connections, for the admin listener. */
  connections(): ConnectionInfo[];
  /** Closes the matching connections with 4003 on both sides (CLOSED_BY_OPERATOR); how many. */
  closeConnections(selector: ConnectionSelector): number;
  /** Set once `drain` has begun. */
  readonly draining: boolean;
  /**
   * Applies a new config to new connections; open ones keep the settings they started with. The
   * listener's address cannot change without a restart: such a config is refused (throws), the old stays.
   */
  reload(config: GuardConfig): void;
  /**
   * Stops listening, closes every open connection with 1001 at a frame boundary on both sides (one that
   * opens meanwhile too), and resolves when every session has ended and every handshake in progress has
   * been answered, or after `timeouts.drain`, when the rest are destroyed.
   */
  drain(): Promise<void>;
  /** Stops listening and destroys every open connection at once. */
  close(): Promise<void>;
}

/** Published by node:http when a response is out, with its server. */
const RESPONSE_FINISHED = 'http.server.response.finish';
/** After the drain deadline, how long the destroyed connections get to report their end. */
const DESTROYED_GRACE_MS = 1000;

/** Whether `work` settled within `ms`. */
async function within(work: Promise<void>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<boolean>((resolve) => {
    timer = setTimeout(resolve, ms, false);
  });
  try {
    return await Promise.race([work.then(() => true), late]);
  } finally {
    clearTimeout(timer);
  }
}

interface Shared {
  events: GuardEvents;
  store: LimitStore;
  /** One budget for the process, kept across reloads (a reload may change its size). */
  holdBudget: HoldBudget;
  sessions: Set<Session>;
  /** Who each open session is, and since when. */
  meta: Map<Session, ConnectionMeta & { openedAt: number }>;
  bans: Bans;
  /** Plain requests in flight per route and address, kept across reloads. */
  inFlight: RequestSlots;
  pending: Set<Socket>;
  nextId: () => number;
  draining: () => boolean;
}

/** Everything derived from one config. A reload builds a new one; the listener switches to it at once. */
function createRuntime(config: GuardConfig, shared: Shared) {
  const trusted = new TrustedProxies(config.trustedProxies);
  const identityHeaders = identityHeaderNames(config);
  const proto = config.listen.tls ? 'https' : 'http';
  const forwardContext = (req: IncomingMessage): ForwardContext => {
    const peer = normalizeAddress(req.socket.remoteAddress);
    return { peer, trusted: trusted.has(peer), proto, host: req.headers.host };
  };
  const warnings = new SlotWarnings((pool, ratio, warnAt) => shared.events.emit('slotsWarning', { pool, ratio, warnAt }));
  const route = createRouter(config, { store: shared.store, inFlight: shared.inFlight, warnings, bans: shared.bans });
  const upgrades = createUpgradeHandler({
    config,
    events: shared.events,
    trusted,
    route,
    identityHeaders,
    forwardContext,
    holdBudget: shared.holdBudget,
    draining: shared.draining,
    pending: shared.pending,
    nextId: shared.nextId,
    onSession(session, meta) {
      shared.sessions.add(session);
      shared.meta.set(session, { ...meta, openedAt: Date.now() });
      session.once('end', (end: SessionEnd) => {
        shared.sessions.delete(session);
        shared.meta.delete(session);
        shared.events.emit('closed', { ...end, ...meta });
      });
    },
  });
  const requests = createRequestHandler({
    config, events: shared.events, trusted, route, identityHeaders,
  });
  return {
    config,
    upgrades,
    request: (req: IncomingMessage, res: ServerResponse) => requests.handle(req, res, forwardContext(req)),
    requests,
  };
}

/**
 * Starts the listener: plain requests are passed through, upgrades are checked, dialled to the upstream
 * and, on a valid 101, handed to a Session that inspects every frame both ways.
 */
export async function startGuard(config: GuardConfig, options: GuardOptions = {}): Promise<Guard> {
  const events = options.events ?? new GuardEvents();
  const sessions = new Set<Session>();
  const meta = new Map<Session, ConnectionMeta & { openedAt: number }>();
  const pending = new Set<Socket>();
  let draining = false;
  let lastId = options.firstId ?? 0;
  const shared: Shared = {
    events, store: options.store ?? new MemoryStore(), holdBudget: new HoldBudget(config.limits.holdBudget),
    sessions, meta, bans: options.bans ?? new Bans(), inFlight: new RequestSlots(), pending, nextId: () => ++lastId, draining: () => draining,
  };
  let runtime = createRuntime(config, shared);

  const serverOptions = {
    // The handshake deadline (design.md §3 timeouts.handshake) is Node's own headers timeout, answered 408.
    headersTimeout: config.timeouts.handshake,
    requestTimeout: 0,
    connectionsCheckingInterval: Math.min(1000, Math.max(100, Math.floor(config.timeouts.handshake / 4))),
  };
  const tls = config.listen.tls;
  const server = tls
    ? https.createServer({ ...serverOptions, cert: tls.cert.pem, key: tls.key.pem })
    : http.createServer(serverOptions);

  /** A refusal before any request was parsed (CONNECT, malformed heads, timeouts). */
  const early = (socket: Socket, req?: IncomingMessage): Handshake => ({
    startedAt: Date.now(), ip: normalizeAddress(socket.remoteAddress), req, route: undefined,
  });

  /**
   * Every listener's work runs through here: a fault while handling one connection (a bug, or input no
   * check foresaw) ends that connection with a log line and an answer where one can still be written,
   * never the process and the connections of everyone else (design.md §1, totality).
   */
  const contained = (where: string, socket: Socket, work: () => void, res?: ServerResponse) => {
    try {
      work();
    } catch (err) {
      events.emit('internalError', { err, where });
      if (res !== undefined && !res.headersSent) {
        res.shouldKeepAlive = false;
        res.writeHead(500, { 'Content-Type': 'text/plain; charset=utf-8', Connection: 'close', 'X-WS-Guard-Error': 'INTERNAL_ERROR' });
        res.end('internal error in ws-guard\n');
      } else socket.destroy();
    }
  };

  server.on('request', (req, res) => contained('request', req.socket, () => runtime.request(req, res), res));

  server.on('connect', (req, socket: Socket) => contained('connect', socket, () => {
    socket.on('error', () => socket.destroy());
    runtime.upgrades.refuse(socket, new GuardError('BAD_METHOD', 'CONNECT', { Allow: 'GET' }), early(socket, req));
  }));

  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => contained('clientError', socket, () => {
    // An answer already going out on this connection cannot be followed by a refusal without corrupting it.
    if (err.code === 'ECONNRESET' || !socket.writable || answering(socket)?.headersSent) {
      socket.destroy();
      return;
    }
    const code = err.code === 'HPE_HEADER_OVERFLOW'
      ? 'HEADERS_TOO_LARGE'
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'HANDSHAKE_TIMEOUT' : 'BAD_REQUEST';
    runtime.upgrades.refuse(socket, new GuardError(code, err.code), early(socket));
  }));

  server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    contained('upgrade', socket, () => runtime.upgrades.handle(req, socket, head));
  });

  await listen(server, config.listen.host, config.listen.port, 'listen');
  const address = server.address() as AddressInfo;

  const stopListening = () =>
    new Promise<void>((resolve) => {
      // A keep-alive connection outlives its response on a closing server (until keepAliveTimeout, 5 s):
      // close each one the moment its last response is out, so a request in flight delays the exit no more.
      const closeOnceIdle = (message: unknown) => {
        if ((message as { server?: unknown }).server === server) setImmediate(() => server.closeIdleConnections());
      };
      diagnostics_channel.subscribe(RESPONSE_FINISHED, closeOnceIdle);
      server.close(() => {
        diagnostics_channel.unsubscribe(RESPONSE_FINISHED, closeOnceIdle);
        resolve();
      });
      server.closeIdleConnections();
    });
  /**
   * Resolves once every session has ended (its audit event emitted) and every handshake has been
   * answered or dropped. Waited for only once the listener has closed, so none can begin after.
   */
  const settled = () =>
    new Promise<void>((resolve) => {
      const check = () => {
        if (sessions.size > 0 || pending.size > 0) return;
        events.off('closed', check);
        resolve();
      };
      events.on('closed', check);
      for (const socket of pending) socket.once('close', check);
      check();
    });
  const destroyPending = () => {
    for (const socket of pending) socket.destroy();
  };

  return {
    events,
    port: address.port,
    host: address.address,
    sessions,
    bans: shared.bans,
    connections() {
      const now = Date.now();
      return [...meta].map(([session, m]) => ({
        id: session.id, user: m.user ?? null, ip: m.ip, route: routeName(m.route), ageMs: now - m.openedAt, ...session.counts,
      }));
    },
    closeConnections(selector) {
      let closed = 0;
      for (const [session, m] of meta) {
        const match = 'id' in selector ? session.id === selector.id : 'user' in selector ? m.user === selector.user : m.ip === selector.ip;
        // One already closing (an earlier order, or its peer) is not closed again, nor counted as closed by this order.
        if (!match || session.ending) continue;
        session.close('CLOSED_BY_OPERATOR', 'admin POST /connections/close');
        closed++;
      }
      return closed;
    },
    get draining() {
      return draining;
    },
    reload(next) {
      const { listen } = runtime.config;
      if (next.listen.host !== listen.host || next.listen.port !== listen.port || Boolean(next.listen.tls) !== Boolean(listen.tls)) {
        throw new Error('listen (address or TLS on/off) changes only with a restart');
      }
      if (next.listen.tls && server instanceof https.Server) {
        server.setSecureContext({ cert: next.listen.tls.cert.pem, key: next.listen.tls.key.pem });
      }
      server.headersTimeout = next.timeouts.handshake;
      shared.holdBudget.limit = next.limits.holdBudget;
      const old = runtime;
      runtime = createRuntime(next, shared);
      old.requests.retire();
    },
    async drain() {
      draining = true;
      const timeoutMs = runtime.config.timeouts.drain;
      events.emit('draining', { open: sessions.size, timeoutMs });
      // The listener closes once its sockets have, which is before the upstream legs and the audit events.
      const done = stopListening().then(settled);
      for (const session of sessions) session.close('SHUTTING_DOWN', 'drain');
      if (await within(done, timeoutMs)) {
        runtime.requests.retire();
        return;
      }
      for (const session of sessions) session.destroy();
      destroyPending();
      server.closeAllConnections();
      runtime.requests.destroy();
      // Destroyed sockets report their close a loop turn later, then the audit events follow; the exit
      // waits for those a moment, but never hangs on a leg that does not report.
      await within(done, DESTROYED_GRACE_MS);
    },
    async close() {
      const closed = stopListening();
      runtime.requests.destroy();
      for (const session of sessions) session.destroy();
      destroyPending();
      server.closeAllConnections();
      await closed;
    },
  };
}
