import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { GuardConfig } from '../config/schema.js';
import { GuardError } from '../errors.js';
import type { GuardEvents } from '../events.js';
import { isFinalStatus, reasonPhrase, relayableHeaders, upstreamFailure } from '../proxy/answer.js';
import { armUpstreamDeadlines } from '../proxy/deadlines.js';
import { pathRedactor } from './redact.js';
import { upstreamHeaders, type ForwardContext } from './forwarded.js';
import { headerCount } from './handshake.js';
import { parseTarget, routingPath } from './target.js';

/**
 * The framing of the body the client sent, as Node's parser read it, for the upstream request. The
 * client's own framing headers are never forwarded: the guard states the framing it actually used, so the
 * upstream cannot read the body as anything but this request's body (request smuggling, RFC 9112 §11.2).
 * Null when there is no body.
 */
function bodyFraming(req: IncomingMessage): [string, string] | null {
  const codings = req.headers['transfer-encoding'];
  if (codings !== undefined) {
    // Node's parser only dechunks; any other coding would reach the app unannounced (RFC 9112 §6.1: 501).
    if (codings.trim().toLowerCase() !== 'chunked') throw new GuardError('TRANSFER_CODING', codings);
    return ['Transfer-Encoding', 'chunked'];
  }
  const length = req.headers['content-length'];
  if (length === undefined) return null;
  if (!/^\d+$/.test(length.trim())) throw new GuardError('BAD_REQUEST', 'invalid Content-Length');
  return ['Content-Length', length.trim()];
}

/**
 * Plain HTTP requests go to the upstream and back as streams: neither body is buffered, and a slow
 * reader on one side slows the other through `pipe`. The upstream sees exactly the request the client
 * made, one for one: its target is checked like an upgrade's, its body carries explicit framing, and
 * `Expect` was already answered by Node's server.
 */
export function createHttpPassThrough(config: GuardConfig, events: GuardEvents, identityHeaders: ReadonlySet<string>) {
  const logPath = pathRedactor(config);
  const agent = new http.Agent({ keepAlive: true, maxFreeSockets: 64 });
  const dropped = new Set([...identityHeaders, 'content-length', 'expect']);

  return function passThrough(req: IncomingMessage, res: ServerResponse, ctx: ForwardContext): void {
    const refuse = (err: GuardError) => {
      events.emit('httpError', { code: err.code, status: err.status, method: req.method ?? '', path: logPath(req.url), ip: ctx.peer, detail: err.message });
      if (res.headersSent) {
        res.destroy();
        return;
      }
      // The request's body may be unread: the connection cannot carry another request after this answer.
      res.shouldKeepAlive = false;
      res.writeHead(err.status, { 'Content-Type': 'text/plain; charset=utf-8', Connection: 'close', 'X-WS-Guard-Error': err.code, ...err.headers });
      res.end(`${err.message}\n`);
    };

    // A write that fails after the answer began can only end this client's connection.
    res.on('error', () => res.destroy());
    const target = parseTarget(req.url);
    if (target === null || routingPath(target.path) === null) {
      refuse(new GuardError('BAD_REQUEST', target === null ? 'request target is not an origin-form path in visible ASCII' : 'ambiguous request target'));
      return;
    }
    // Node keeps the first of several Host lines while all of them would be forwarded: the app could pick
    // another host than the one the guard sent as X-Forwarded-Host (RFC 9112 §3.2: exactly one).
    if (headerCount(req, 'host') > 1) {
      refuse(new GuardError('BAD_REQUEST', 'more than one Host header'));
      return;
    }
    let framing: [string, string] | null;
    try {
      framing = bodyFraming(req);
    } catch (err) {
      refuse(err as GuardError);
      return;
    }
    const headers = upstreamHeaders(req.rawHeaders, ctx, dropped);
    if (framing !== null) headers.push(...framing);

    const upstreamReq = http.request({
      host: config.upstream.host,
      port: config.upstream.port,
      method: req.method,
      path: req.url,
      headers,
      agent,
    });
    const fail = (err: GuardError) => {
      disarm();
      upstreamReq.destroy();
      refuse(err);
    };
    const { upstreamConnect, upstreamResponse } = config.timeouts;
    const disarm = armUpstreamDeadlines(upstreamReq, upstreamConnect, upstreamResponse, (what) => {
      fail(new GuardError('UPSTREAM_TIMEOUT', what));
    });

    let relayed: IncomingMessage | undefined;
    upstreamReq.on('error', (err: NodeJS.ErrnoException) => {
      // Bytes after a complete answer (a 204 or 304 "with a body", more than Content-Length) break only
      // the upstream connection: the pipe still delivers the whole answer to the client.
      if (relayed?.complete) return;
      fail(upstreamFailure(err));
    });
    // A 101 to a request that asked for no upgrade would turn the pooled connection into a tunnel.
    upstreamReq.on('upgrade', (_res: IncomingMessage, socket: Socket) => {
      socket.destroy();
      fail(new GuardError('UPSTREAM_BAD_RESPONSE', '101 to a request without Upgrade'));
    });
    upstreamReq.on('response', (upstreamRes) => {
      disarm();
      const status = upstreamRes.statusCode;
      if (!isFinalStatus(status)) {
        upstreamRes.destroy();
        fail(new GuardError('UPSTREAM_BAD_RESPONSE', `status ${status}`));
        return;
      }
      try {
        res.writeHead(status, reasonPhrase(status, upstreamRes.statusMessage), relayableHeaders(upstreamRes.rawHeaders, status));
      } catch (err) {
        upstreamRes.destroy();
        fail(new GuardError('UPSTREAM_BAD_RESPONSE', (err as Error).message));
        return;
      }
      relayed = upstreamRes;
      upstreamRes.pipe(res);
      upstreamRes.on('error', () => res.destroy());
    });
    // A client that leaves mid-request must not leave the upstream request hanging.
    res.on('close', () => {
      disarm();
      if (!res.writableFinished) upstreamReq.destroy();
    });
    if (framing === null) upstreamReq.end();
    else req.pipe(upstreamReq);
  };
}
