import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { GuardConfig } from '../config/schema.js';
import { ERRORS, GuardError } from '../errors.js';
import { closeFrame } from '../frames/close.js';
import type { ConnectionMeta, GuardEvents } from '../events.js';
import type { Identity } from '../policies/jwt.js';
import { BEARER_MARKER, takeProtocolTokens } from '../policies/token.js';
import type { HoldBudget } from '../limits/hold-budget.js';
import type { SessionLimits } from '../policies/messages.js';
import { admission, releaseAll } from '../policies/policy.js';
import { SLOT_RETRY_AFTER_S } from '../policies/slots.js';
import { deflateOffers, dialUpstream, type DialResult } from '../proxy/dial.js';
import { takeLeg, type Leg } from '../proxy/handle-leg.js';
import { Session } from '../proxy/session.js';
import { reasonPhrase, relayableHeaders } from '../proxy/answer.js';
import { type TrustedProxies, upstreamHeaders, type ForwardContext } from './forwarded.js';
import { acceptFor, checkUpgrade } from './handshake.js';
import { pathRedactor } from './redact.js';
import { writeRefusal } from './reject.js';
import type { Route } from './routes.js';
import { parseTarget, routingPath } from '../http/target.js';
import { answering } from './answering.js';

export interface UpgradeDeps {
  config: GuardConfig;
  events: GuardEvents;
  trusted: TrustedProxies;
  route: (pathname: string) => Route;
  /** Header names filled from claims: client-sent copies never reach the upstream. */
  identityHeaders: ReadonlySet<string>;
  forwardContext: (req: IncomingMessage) => ForwardContext;
  /** Bytes of compressed messages held while measured, all sessions of the process together. */
  holdBudget: HoldBudget;
  /** True once the guard is draining: new upgrades are refused with 503, and one dialled meanwhile is closed with 1001. */
  draining: () => boolean;
  /** Sockets between the upgrade event and their session (or refusal): the listener's shutdown ends them. */
  pending: Set<Socket>;
  /** Session ids, unique for the life of the process (a reload keeps counting). */
  nextId: () => number;
  /** Called with each new session, which the caller tracks. */
  onSession: (session: Session, meta: ConnectionMeta) => void;
}

/*
 * Listeners that outlive the handshake are made here, outside the handshake's functions: a closure made
 * inside one would keep that function's whole scope (the request, its headers, the dial's controller)
 * alive for as long as the connection lasts, about 1.6 KiB per idle connection.
 */
/** http.Server sockets are half-open: a client that sent FIN is gone though its socket is not destroyed. */
function clientGone(socket: Socket): boolean {
  return socket.destroyed || socket.readableEnded;
}

function destroySelf(this: Socket): void {
  this.destroy();
}

function releaser(release: () => void, perMessage: SessionLimits): () => void {
  return () => {
    release();
    perMessage.release();
  };
}

/** One function that gives back everything in `releases`, once. */
function once(releases: (() => void)[]): () => void {
  return () => {
    for (const release of releases.splice(0)) release();
  };
}

/** One handshake in progress: what the refusal and the open events report. */
export interface Handshake {
  startedAt: number;
  ip: string;
  req: IncomingMessage | undefined;
  route: Route | undefined;
}

/**
 * One upgrade, through the checks of design.md §1 in order: a well-formed handshake, its route, the
 * client address, the Origin, the token; then the dial, and on a valid 101 a Session.
 */
export function createUpgradeHandler(deps: UpgradeDeps) {
  const { config, events, trusted } = deps;
  const dropped = new Set(['sec-websocket-extensions', 'sec-websocket-protocol', ...deps.identityHeaders]);
  const logPath = pathRedactor(config);
  const { pending } = deps;
  /*
   * One listener for every socket of this handler, taken off once the session owns the socket: a `once`
   * wrapper made per socket would stay for the life of the connection (its state object, bound function
   * and closure, about 0.3 KiB each).
   */
  function forgetPending(this: Socket): void {
    pending.delete(this);
  }

  /** A refusal answered with an HTTP status (or, with `closeCode`, with a 101 and a close frame). */
  const report = (err: GuardError, hs: Handshake, closeCode?: number) => {
    events.emit('refused', {
      code: err.code, status: err.status, closeCode, ip: hs.ip, path: hs.req && logPath(hs.req.url),
      route: hs.route?.path, detail: err.message, durationMs: Date.now() - hs.startedAt,
    });
  };

  const refuse = (socket: Socket, err: GuardError, hs: Handshake) => {
    report(err, hs);
    writeRefusal(socket, err);
  };

  async function upgrade(req: IncomingMessage, socket: Socket, head: Buffer, hs: Handshake): Promise<void> {
    const { key, protocols } = checkUpgrade(req);
    const target = parseTarget(req.url);
    if (target === null) throw new GuardError('BAD_REQUEST', 'request target is not an origin-form path in visible ASCII');
    const pathname = routingPath(target.path);
    if (pathname === null) throw new GuardError('BAD_REQUEST', 'ambiguous request target');
    const route = deps.route(pathname);
    hs.route = route;
    if (deps.draining()) throw new GuardError('SHUTTING_DOWN', undefined, { 'Retry-After': SLOT_RETRY_AFTER_S });
    // The `bearer` entries are the guard's, on a route with auth: never offered to the app.
    const protocolTokens = route.auth === undefined ? [] : takeProtocolTokens(protocols);
    const tokenInProtocol = protocolTokens.length > 0;
    const ctx = admission(req, target, hs.ip, protocolTokens, false);
    try {
      for (const policy of route.policies) {
        if (policy.onHandshake === undefined) continue;
        try {
          await policy.onHandshake(ctx);
        } catch (err) {
          if (policy.closeOnReject && err instanceof GuardError && err.closeCode !== undefined) {
            releaseAll(ctx);
            report(err, hs, err.closeCode);
            acceptThenClose(socket, err, key, tokenInProtocol ? BEARER_MARKER : protocols[0]);
            return;
          }
          throw err;
        }
        // A client that left while a policy waited (a JWKS fetch can take seconds) gets nothing more.
        if (clientGone(socket)) {
          releaseAll(ctx);
          socket.destroy();
          return;
        }
      }
    } catch (err) {
      releaseAll(ctx);
      throw err;
    }
    // Every exit from here on gives back what the policies took: the session's end, or any failure before it exists.
    const release = once(ctx.releases.splice(0));
    try {
      await connect(req, socket, head, {
        hs, key, protocols, route, identity: ctx.identity, identityHeaders: ctx.claimHeaders, tokenInProtocol, user: ctx.user,
      }, release);
    } catch (err) {
      release();
      throw err;
    }
  }

  interface Admitted {
    hs: Handshake;
    key: string;
    protocols: string[];
    route: Route;
    identity: Identity | undefined;
    identityHeaders: string[];
    tokenInProtocol: boolean;
    user: string | undefined;
  }

  /** Dials the upstream for an admitted handshake and, on a valid 101, starts the session. */
  async function connect(req: IncomingMessage, socket: Socket, head: Buffer, admitted: Admitted, release: () => void): Promise<void> {
    const { hs, key, protocols, route, identity, identityHeaders, tokenInProtocol, user } = admitted;
    const { ip } = hs;
    const { limits } = route;
    const headers = upstreamHeaders(req.rawHeaders, deps.forwardContext(req), dropped);
    const deflate = deflateOffers(req.headers['sec-websocket-extensions'], config.compression);
    if (deflate.length > 0) headers.push('Sec-WebSocket-Extensions', deflate.join(', '));
    if (protocols.length > 0) headers.push('Sec-WebSocket-Protocol', protocols.join(', '));
    headers.push(...identityHeaders, 'Connection', 'Upgrade', 'Upgrade', 'websocket');

    const aborted = new AbortController();
    const onGone = () => aborted.abort();
    socket.once('close', onGone);
    socket.once('end', onGone);
    let result: DialResult;
    try {
      result = await dialUpstream({
        host: config.upstream.host,
        port: config.upstream.port,
        path: req.url ?? '/',
        headers,
        key,
        offeredProtocols: protocols,
        offeredDeflate: deflate.length > 0,
        connectTimeoutMs: config.timeouts.upstreamConnect,
        responseTimeoutMs: config.timeouts.upstreamResponse,
        signal: aborted.signal,
      });
    } catch (err) {
      // The client left while the upstream was dialled: there is no one left to answer.
      if (aborted.signal.aborted) {
        release();
        socket.destroy();
        return;
      }
      throw err;
    } finally {
      socket.off('close', onGone);
      socket.off('end', onGone);
    }

    if (result.kind === 'refused') {
      release();
      events.emit('upstreamRefused', { status: result.response.statusCode ?? 0, ip, path: logPath(req.url) });
      relayRefusal(socket, result.response);
      return;
    }
    if (clientGone(socket)) {
      release();
      result.socket.destroy();
      socket.destroy();
      return;
    }
    const { response } = result;
    let answer = 'HTTP/1.1 101 Switching Protocols\r\n';
    for (let i = 0; i < response.rawHeaders.length; i += 2) answer += `${response.rawHeaders[i]}: ${response.rawHeaders[i + 1]}\r\n`;
    // Browsers fail a handshake whose offer is answered with no protocol: name the marker they offered.
    if (tokenInProtocol && response.headers['sec-websocket-protocol'] === undefined) answer += `Sec-WebSocket-Protocol: ${BEARER_MARKER}\r\n`;
    // Node decodes header bytes as latin1: written back the same way, obs-text reaches the client unchanged.
    socket.write(`${answer}\r\n`, 'latin1');

    const expiresAt = identity !== undefined && route.auth?.jwt.expiry === 'close' ? identity.expiresAt : undefined;
    const perMessage = route.openSession(ip, user);
    pending.delete(socket);
    // The session listens for both from here on: the handshake's listeners would only cost memory.
    socket.off('close', forgetPending);
    socket.off('error', destroySelf);
    // From here the sockets become the session's legs: a fault before it runs (or while it is handed over)
    // closes them, so nothing is left open that no one tracks (design.md §1).
    const legs: Leg[] = [];
    try {
      const client = takeLeg(socket);
      legs.push(client);
      const upstream = takeLeg(result.socket);
      legs.push(upstream);
      const session = new Session({
        id: deps.nextId(),
        client,
        upstream,
        clientHead: head,
        upstreamHead: result.head,
        compressed: result.compressed,
        clientNoContextTakeover: result.clientNoContextTakeover,
        holdBudget: deps.holdBudget,
        closeTimeoutMs: config.timeouts.close,
        expiresAt,
        messageLimits: {
          maxMessageBytes: limits.messageSize ?? Infinity,
          maxFragments: limits.maxFragments ?? Infinity,
          onMessageStart: perMessage.onMessageStart,
          onControlFrame: perMessage.onControlFrame,
        },
        idleTimeoutMs: limits.idleTimeout,
        maxLifetimeMs: limits.maxLifetime,
      });
      session.once('end', releaser(release, perMessage));
      const meta: ConnectionMeta = { ip, path: logPath(req.url), route: route.path, user };
      events.emit('opened', { ...meta, session: session.id, durationMs: Date.now() - hs.startedAt });
      deps.onSession(session, meta);
      // The drain began while the upstream was being dialled: this session ends like every other one.
      if (deps.draining()) session.close('SHUTTING_DOWN', 'drain');
    } catch (err) {
      for (const leg of legs) leg.destroy();
      result.socket.destroy();
      socket.destroy();
      throw err;
    }
  }

  /**
   * `onReject: close`: browsers cannot read an HTTP status from a failed WebSocket, only a close code. The
   * guard answers the handshake itself (the upstream is never dialled), then closes with 4001/4003.
   */
  function acceptThenClose(socket: Socket, err: GuardError, key: string, protocol: string | undefined) {
    let answer = `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptFor(key)}\r\n`;
    if (protocol !== undefined) answer += `Sec-WebSocket-Protocol: ${protocol}\r\n`;
    socket.write(`${answer}\r\n`);
    socket.end(closeFrame(err.closeCode!, ERRORS[err.code].message, false));
    // Whatever the client sends now is read and dropped; the timer ends a client that never closes.
    socket.resume();
    socket.once('end', () => socket.destroy());
    setTimeout(() => socket.destroy(), config.timeouts.close).unref();
  }

  /** The upstream refused the upgrade: relay its answer and close, never a tunnel (design.md §1). */
  function relayRefusal(socket: Socket, response: IncomingMessage): void {
    if (socket.destroyed) {
      response.destroy();
      return;
    }
    // dialUpstream let only a final status through; the reason and headers are the upstream's, checked here.
    const status = response.statusCode!;
    let head = `HTTP/1.1 ${status} ${reasonPhrase(status, response.statusMessage)}\r\n`;
    const headers = relayableHeaders(response.rawHeaders, status);
    for (let i = 0; i < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`;
    socket.once('finish', () => socket.destroy());
    // Reading the client is how its departure is noticed: then the upstream's answer is dropped too.
    socket.resume();
    socket.once('end', () => socket.destroy());
    socket.once('close', () => response.destroy());
    socket.write(`${head}Connection: close\r\n\r\n`, 'latin1');
    response.pipe(socket);
    response.once('error', () => socket.destroy());
  }

  return {
    refuse,
    handle(req: IncomingMessage, socket: Socket, head: Buffer): void {
      pending.add(socket);
      socket.on('close', forgetPending);
      // Errors of a socket that goes away mid-handshake end it; they are not the guard's to report.
      socket.on('error', destroySelf);
      const ip = trusted.clientAddress(deps.forwardContext(req).peer, req.headers['x-forwarded-for']);
      const hs: Handshake = { startedAt: Date.now(), ip, req, route: undefined };
      // Answers go out in request order (RFC 9112 §9.3.2): an upgrade pipelined behind a request whose answer
      // is still being written can get neither a 101 nor a refusal without cutting into that answer.
      if (answering(socket) !== undefined) {
        report(new GuardError('BAD_REQUEST', 'upgrade pipelined behind an unfinished answer'), hs);
        socket.destroy();
        return;
      }
      upgrade(req, socket, head, hs)
        .catch((err: unknown) => {
          // A fault is reported even when the client is gone by then (or its socket became a session's leg).
          if (!(err instanceof GuardError)) events.emit('internalError', { err, where: 'upgrade' });
          if (socket.destroyed) return;
          if (err instanceof GuardError) {
            refuse(socket, err, hs);
            return;
          }
          // An answer only while nothing has been written: after the 101 the bytes would be a frame.
          if (socket.bytesWritten === 0 && socket.writableLength === 0) refuse(socket, new GuardError('INTERNAL_ERROR'), hs);
          else socket.destroy();
        })
        .catch((err: unknown) => {
          events.emit('internalError', { err, where: 'upgrade refusal' });
          socket.destroy();
        });
    },
  };
}
