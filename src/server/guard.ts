import http, { type IncomingMessage } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { GuardConfig } from '../config/schema.js';
import { GuardError } from '../errors.js';
import type { Logger } from '../ops/logger.js';
import { dialUpstream, type DialResult } from '../proxy/dial.js';
import { Session, type SessionEnd } from '../proxy/session.js';
import { TrustedProxies, normalizeAddress, upstreamHeaders, withoutHopByHop, type ForwardContext } from './forwarded.js';
import { checkUpgrade, headerList } from './handshake.js';
import { createHttpPassThrough } from './http-proxy.js';
import { writeRefusal } from './reject.js';

export interface Guard {
  readonly port: number;
  readonly host: string;
  /** Open WebSocket sessions. */
  readonly sessions: ReadonlySet<Session>;
  /**
   * Stops listening, closes every open connection with 1001 at a frame boundary on both sides, and
   * resolves when all are gone or after `timeouts.drain`, when the rest are destroyed.
   */
  drain(): Promise<void>;
  /** Stops listening and destroys every open connection at once. */
  close(): Promise<void>;
}

/** Headers never forwarded on an upgrade: the offer is rebuilt from what the inspector understands. */
const EXTENSIONS = new Set(['sec-websocket-extensions']);

/**
 * Starts the listener: plain requests are passed through, upgrades are checked, dialled to the upstream
 * and, on a valid 101, handed to a Session that inspects every frame both ways.
 */
export async function startGuard(config: GuardConfig, logger: Logger): Promise<Guard> {
  const trusted = new TrustedProxies(config.trustedProxies);
  const passThrough = createHttpPassThrough(config, logger);
  const sessions = new Set<Session>();
  let nextId = 1;

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

  const refuse = (socket: Socket, err: GuardError, req?: IncomingMessage) => {
    const peer = normalizeAddress(socket.remoteAddress);
    const client = req ? trusted.clientAddress(peer, req.headers['x-forwarded-for']) : peer;
    logger.info({ code: err.code, status: err.status, ip: client, path: req?.url, detail: err.message }, 'upgrade refused');
    writeRefusal(socket, err);
  };

  server.on('request', (req, res) => passThrough(req, res, forwardContext(req)));

  server.on('connect', (req, socket: Socket) => {
    socket.on('error', () => socket.destroy());
    refuse(socket, new GuardError('BAD_METHOD', 'CONNECT', { Allow: 'GET' }), req);
  });

  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    if (err.code === 'ECONNRESET' || !socket.writable) {
      socket.destroy();
      return;
    }
    const code = err.code === 'HPE_HEADER_OVERFLOW'
      ? 'HEADERS_TOO_LARGE'
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'HANDSHAKE_TIMEOUT' : 'BAD_REQUEST';
    refuse(socket, new GuardError(code, err.code));
  });

  server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    socket.on('error', (err) => logger.debug({ err: err.message }, 'client socket error during handshake'));
    upgrade(req, socket, head).catch((err: unknown) => {
      if (socket.destroyed) logger.debug({ path: req.url }, 'client left before the upgrade completed');
      else if (err instanceof GuardError) refuse(socket, err, req);
      else {
        logger.error({ err }, 'upgrade failed');
        socket.destroy();
      }
    });
  });

  async function upgrade(req: IncomingMessage, socket: Socket, head: Buffer): Promise<void> {
    const { key, protocols } = checkUpgrade(req);
    const ctx = forwardContext(req);
    const headers = upstreamHeaders(req.rawHeaders, ctx, EXTENSIONS);
    // Only permessage-deflate is offered on: the inspector must understand every RSV bit in use (RFC 6455 §5.2).
    const deflate = config.compression === 'passthrough'
      ? headerList(req.headers['sec-websocket-extensions']).filter((e) => /^permessage-deflate\s*(;|$)/i.test(e))
      : [];
    if (deflate.length > 0) headers.push('Sec-WebSocket-Extensions', deflate.join(', '));
    headers.push('Connection', 'Upgrade', 'Upgrade', 'websocket');

    const aborted = new AbortController();
    const onGone = () => aborted.abort();
    socket.once('close', onGone);
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
    } finally {
      socket.off('close', onGone);
    }

    if (result.kind === 'refused') {
      relayRefusal(socket, result.response);
      return;
    }
    if (socket.destroyed) {
      result.socket.destroy();
      return;
    }
    const { response } = result;
    let answer = 'HTTP/1.1 101 Switching Protocols\r\n';
    for (let i = 0; i < response.rawHeaders.length; i += 2) answer += `${response.rawHeaders[i]}: ${response.rawHeaders[i + 1]}\r\n`;
    socket.write(`${answer}\r\n`);

    const session = new Session({
      id: nextId++,
      client: socket,
      upstream: result.socket,
      clientHead: head,
      upstreamHead: result.head,
      compressed: result.compressed,
      closeTimeoutMs: config.timeouts.close,
      logger,
    });
    sessions.add(session);
    // Only these two strings outlive the handshake: the request object is left to the garbage collector.
    const ip = trusted.clientAddress(ctx.peer, req.headers['x-forwarded-for']);
    const path = req.url;
    logger.debug({ session: session.id, ip, path }, 'connection open');
    session.once('end', (end: SessionEnd) => {
      sessions.delete(session);
      logger.info({ ...end, ip, path }, 'connection closed');
    });
  }

  /** The upstream refused the upgrade: relay its answer and close, never a tunnel (design.md §1). */
  function relayRefusal(socket: Socket, response: IncomingMessage): void {
    logger.info({ status: response.statusCode }, 'upstream refused the upgrade');
    if (socket.destroyed) {
      response.destroy();
      return;
    }
    let head = `HTTP/1.1 ${response.statusCode} ${response.statusMessage ?? ''}\r\n`;
    const headers = withoutHopByHop(response.rawHeaders);
    for (let i = 0; i < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`;
    socket.once('finish', () => socket.destroy());
    socket.write(`${head}Connection: close\r\n\r\n`);
    response.pipe(socket);
    response.once('error', () => socket.destroy());
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.listen.port, config.listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  logger.info({ listen: `${address.address}:${address.port}`, upstream: config.upstream.origin }, 'ws-guard listening');

  const stopListening = () =>
    new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeIdleConnections();
    });

  return {
    port: address.port,
    host: address.address,
    sessions,
    async drain() {
      const closed = stopListening();
      logger.info({ open: sessions.size, timeoutMs: config.timeouts.drain }, 'draining');
      for (const session of sessions) session.close('SHUTTING_DOWN', 'drain');
      const deadline = setTimeout(() => {
        for (const session of sessions) session.destroy();
        server.closeAllConnections();
      }, config.timeouts.drain);
      await closed;
      clearTimeout(deadline);
    },
    async close() {
      const closed = stopListening();
      for (const session of sessions) session.destroy();
      server.closeAllConnections();
      await closed;
    },
  };
}
