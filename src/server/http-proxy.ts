import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import type { GuardConfig } from '../config/schema.js';
import { GuardError } from '../errors.js';
import type { GuardEvents } from '../events.js';
import { isFinalStatus, reasonPhrase, relayableHeaders } from '../proxy/answer.js';
import { createUpstreamPool, sendUpstream } from '../proxy/upstream-http.js';
import { admission, releaseAll } from '../policies/policy.js';
import { BodyLimit, isPreflight } from '../policies/requests.js';
import { pathRedactor } from './redact.js';
import { upstreamHeaders, type ForwardContext, type TrustedProxies } from './forwarded.js';
import { headerCount } from './handshake.js';
import type { Route } from './routes.js';
import { parseTarget, routingPath } from '../http/target.js';

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

export interface RequestDeps {
  config: GuardConfig;
  events: GuardEvents;
  trusted: TrustedProxies;
  route: (pathname: string) => Route;
  /** Header names filled from claims: client-sent copies never reach the upstream. */
  identityHeaders: ReadonlySet<string>;
}

/** One plain request in progress: what its refusal and its end report. */
interface Exchange {
  startedAt: number;
  method: string;
  path: string;
  ip: string;
  route: Route | undefined;
  user: string | undefined;
  /** Ends the upstream leg once one exists: a refusal after the dial (408, 413) must not leave it open. */
  abort?: () => void;
}

/**
 * Plain HTTP requests, through the route's policies in order (design.md §1): a well-formed target, the
 * route (`http: deny` → 404), the client address, the Origin, the token (`http: auth`), the request rate,
 * the requests in flight, the body size; then the upstream. CORS preflights skip Origin, token and rate:
 * they carry no credentials and are the app's to answer. Both bodies are streamed, never buffered, and a
 * slow reader on one side slows the other (undici pauses on a full response, reads the request body as the
 * upstream takes it). The upstream sees exactly the request the client
 * made, one for one: its target is checked like an upgrade's, its body carries explicit framing, and
 * `Expect` was already answered by Node's server.
 */
export function createRequestHandler(deps: RequestDeps) {
  const { config, events } = deps;
  const logPath = pathRedactor(config);
  const pool = createUpstreamPool({
    origin: config.upstream.origin, connectTimeoutMs: config.timeouts.upstreamConnect, headersTimeoutMs: config.timeouts.upstreamHeaders,
  });
  const dropped = new Set([...deps.identityHeaders, 'content-length', 'expect']);

  /** The one place a refusal of a plain request becomes an answer. */
  const refuse = (req: IncomingMessage, res: ServerResponse, ex: Exchange, err: GuardError) => {
    events.emit('requestRefused', {
      code: err.code, status: err.status, method: ex.method, ip: ex.ip, path: ex.path, route: ex.route?.path,
      detail: err.message, durationMs: Date.now() - ex.startedAt,
    });
    ex.abort?.();
    if (res.headersSent) {
      res.destroy();
      return;
    }
    // The request's body may be unread: the connection cannot carry another request after this answer.
    res.shouldKeepAlive = false;
    res.writeHead(err.status, { 'Content-Type': 'text/plain; charset=utf-8', Connection: 'close', 'X-WS-Guard-Error': err.code, ...err.headers });
    res.end(`${err.message}\n`);
    // A body still arriving is read and dropped, so the answer is not lost to a reset; the close ends it.
    req.resume();
  };

  async function serve(req: IncomingMessage, res: ServerResponse, ctx: ForwardContext, ex: Exchange): Promise<void> {
    const target = parseTarget(req.url);
    if (target === null) throw new GuardError('BAD_REQUEST', 'request target is not an origin-form path in visible ASCII');
    const pathname = routingPath(target.path);
    if (pathname === null) throw new GuardError('BAD_REQUEST', 'ambiguous request target');
    // Node keeps the first of several Host lines while all of them would be forwarded: the app could pick
    // another host than the one the guard sent as X-Forwarded-Host (RFC 9112 §3.2: exactly one).
    if (headerCount(req, 'host') > 1) throw new GuardError('BAD_REQUEST', 'more than one Host header');
    // An IP literal without its closing bracket is no host (RFC 3986 §3.2.2); undici cannot send it either.
    const host = req.headers.host;
    if (host !== undefined && host.startsWith('[') && !host.includes(']')) throw new GuardError('BAD_REQUEST', 'malformed Host');
    const framing = bodyFraming(req);
    const route = deps.route(pathname);
    ex.route = route;
    const admitted = admission(req, target, ex.ip, [], isPreflight(req.method, req.headers));
    // What the policies take (a slot in flight) comes back when the answer is over, however it ends.
    let over = false;
    res.once('close', () => {
      over = true;
      releaseAll(admitted);
    });
    try {
      for (const policy of route.policies) {
        if (policy.onRequest === undefined) continue;
        await policy.onRequest(admitted);
        // The client left while a policy waited: what the policies took goes back, nothing is dialled.
        if (over) {
          releaseAll(admitted);
          return;
        }
      }
    } finally {
      ex.user = admitted.user;
    }
    const claims = admitted.claimHeaders;
    forward(req, res, ctx, ex, framing, claims);
  }

  function forward(
    req: IncomingMessage, res: ServerResponse, ctx: ForwardContext, ex: Exchange, framing: [string, string] | null, claims: string[],
  ): void {
    const headers = upstreamHeaders(req.rawHeaders, ctx, dropped);
    headers.push(...claims);
    // Chunked needs no header: undici sends a stream of unknown length chunked, and states it itself.
    if (framing !== null && framing[0] === 'Content-Length') headers.push(...framing);
    const limit = ex.route?.limits.requests.body;
    let body: Readable | null = null;
    if (framing !== null && limit === undefined) body = req;
    else if (framing !== null && limit !== undefined) {
      // The chunk that would cross the limit is never forwarded: the upstream sees at most `limit` bytes of
      // an unfinished body, then its connection is cut, so it never runs the request.
      const meter = new BodyLimit(limit, () => {
        req.unpipe(meter);
        refuse(req, res, ex, new GuardError('BODY_TOO_LARGE', `more than ${limit} bytes`));
      });
      body = req.pipe(meter);
    }

    let relaying = false;
    ex.abort = sendUpstream(pool, { method: req.method ?? 'GET', path: req.url ?? '/', headers, body }, {
      onHead(status, reason, rawHeaders) {
        if (!isFinalStatus(status)) {
          refuse(req, res, ex, new GuardError('UPSTREAM_BAD_RESPONSE', `status ${status}`));
          return false;
        }
        try {
          res.writeHead(status, reasonPhrase(status, reason), relayableHeaders(rawHeaders, status));
        } catch (err) {
          refuse(req, res, ex, new GuardError('UPSTREAM_BAD_RESPONSE', (err as Error).message));
          return false;
        }
        relaying = true;
        return true;
      },
      onData(chunk, resume) {
        if (res.write(chunk)) return true;
        res.once('drain', resume);
        return false;
      },
      onEnd() {
        res.end();
      },
      onError(err) {
        // Mid-body, the answer cannot be replaced: the client's connection ends, as the upstream's did.
        if (relaying) res.destroy();
        else refuse(req, res, ex, err);
      },
    });
    // A client that leaves mid-request must not leave the upstream request hanging.
    res.once('close', () => {
      if (!res.writableFinished) ex.abort?.();
    });
  }

  function handle(req: IncomingMessage, res: ServerResponse, ctx: ForwardContext): void {
    const ex: Exchange = {
      startedAt: Date.now(),
      method: req.method ?? '',
      path: logPath(req.url),
      ip: deps.trusted.clientAddress(ctx.peer, req.headers['x-forwarded-for']),
      route: undefined,
      user: undefined,
    };
    // A write that fails after the answer began can only end this client's connection.
    res.on('error', () => res.destroy());
    // The whole body must arrive within timeouts.request, counted from the request head (408).
    const deadline = req.complete ? undefined : setTimeout(() => {
      if (!req.complete) refuse(req, res, ex, new GuardError('REQUEST_TIMEOUT', `${config.timeouts.request} ms`));
    }, config.timeouts.request);
    const stop = () => clearTimeout(deadline);
    req.once('end', stop);
    req.once('close', stop);
    res.once('close', () => {
      stop();
      events.emit('requestDone', {
        method: ex.method, path: ex.path, route: ex.route?.path, ip: ex.ip, user: ex.user,
        status: res.headersSent ? res.statusCode : undefined, durationMs: Date.now() - ex.startedAt,
      });
    });
    serve(req, res, ctx, ex)
      .catch((err: unknown) => {
        if (err instanceof GuardError) {
          refuse(req, res, ex, err);
          return;
        }
        events.emit('internalError', { err, where: 'request' });
        refuse(req, res, ex, new GuardError('INTERNAL_ERROR'));
      })
      .catch((err: unknown) => {
        events.emit('internalError', { err, where: 'request refusal' });
        res.destroy();
      });
  }

  return {
    handle,
    /** After a reload: requests in flight finish, then the pool's connections close. */
    retire: () => void pool.close().catch(() => {}),
    /** On close: every upstream connection ends now. */
    destroy: () => void pool.destroy().catch(() => {}),
  };
}
