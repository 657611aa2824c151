import type { Readable } from 'node:stream';
import { Pool, type Dispatcher } from 'undici';
import { GuardError } from '../errors.js';

/**
 * The upstream leg of plain HTTP requests: one undici pool per config, kept alive between requests.
 * Both bodies stream: the request body is handed to undici as the client's stream (with its length, or
 * chunked), and the response body is passed on chunk by chunk, with backpressure both ways.
 */

export interface UpstreamPoolOptions {
  /** http://host:port */
  origin: string;
  connectTimeoutMs: number;
  /** For the response head once the request (and its body) went out, and between response body chunks. */
  headersTimeoutMs: number;
}

export function createUpstreamPool(o: UpstreamPoolOptions): Pool {
  return new Pool(o.origin, {
    connect: { timeout: o.connectTimeoutMs },
    headersTimeout: o.headersTimeoutMs,
    bodyTimeout: o.headersTimeoutMs,
    // One request at a time per connection: a slow answer never holds up another client's.
    pipelining: 1,
  });
}

/** What the caller does with the upstream's answer. */
export interface UpstreamAnswer {
  /** The final response head: status, reason and raw headers (latin1, as Node's parser gives them). Return false to refuse it. */
  onHead(status: number, reason: string, rawHeaders: string[]): boolean;
  /** A body chunk; return false to pause, then call `resume` when the client can take more. */
  onData(chunk: Buffer, resume: () => void): boolean;
  onEnd(): void;
  /** The request failed; `err` is the refusal, from `upstreamError` (one place maps undici's codes). */
  onError(err: GuardError): void;
}

export interface UpstreamRequest {
  method: string;
  path: string;
  /** Flat [name, value, ...]; no hop-by-hop headers, no Transfer-Encoding; Content-Length when the body has one. */
  headers: string[];
  /** The client's body as a stream, or null for none. */
  body: Readable | null;
}

/**
 * undici's error codes → the answers of design.md §3: a deadline is 504, an answer its parser refused (or a
 * 101 to a plain request, an interim 100 out of place) is 502 UPSTREAM_BAD_RESPONSE, anything else on the
 * way is 502 UPSTREAM_UNREACHABLE. A request undici cannot send (a header it refuses) is the client's: 400.
 */
export function upstreamError(err: unknown): GuardError {
  const { code, message, name } = err as { code?: string; message?: string; name?: string };
  // undici's parser errors carry an HPE_ code, or none when the status line itself is not HTTP.
  if (name === 'HTTPParserError' || code?.startsWith('HPE_')) return new GuardError('UPSTREAM_BAD_RESPONSE', code ?? message);
  switch (code) {
    case 'UND_ERR_CONNECT_TIMEOUT':
      return new GuardError('UPSTREAM_TIMEOUT', 'connect');
    case 'UND_ERR_HEADERS_TIMEOUT':
      return new GuardError('UPSTREAM_TIMEOUT', 'response');
    case 'UND_ERR_BODY_TIMEOUT':
      return new GuardError('UPSTREAM_TIMEOUT', 'body');
    case 'UND_ERR_INVALID_ARG':
    case 'UND_ERR_NOT_SUPPORTED':
    case 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH':
      return new GuardError('BAD_REQUEST', message);
    case 'UND_ERR_HEADERS_OVERFLOW':
    case 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH':
      return new GuardError('UPSTREAM_BAD_RESPONSE', code);
    case 'UND_ERR_SOCKET':
      // 'bad upgrade': a 101 to a request that asked for none, which would make the connection a tunnel.
      if (message === 'bad upgrade' || message === 'bad response') return new GuardError('UPSTREAM_BAD_RESPONSE', message);
      return new GuardError('UPSTREAM_UNREACHABLE', message);
    default:
      return new GuardError('UPSTREAM_UNREACHABLE', code ?? message ?? 'unknown error');
  }
}

/**
 * Sends one request through the pool. Returns the function that aborts it (the client left, or the guard
 * refused it mid-way); after an abort no callback is called.
 */
export function sendUpstream(pool: Dispatcher, request: UpstreamRequest, answer: UpstreamAnswer): () => void {
  let abortUndici: ((reason?: Error) => void) | undefined;
  /** undici hands `resume` to onHeaders only; the same function resumes the body. */
  let resumeUndici: (() => void) | undefined;
  let done = false;
  /** The final status, once its head was handed on. */
  let status: number | undefined;
  const finish = () => {
    const was = done;
    done = true;
    return !was;
  };
  const handler: Dispatcher.DispatchHandler = {
    onConnect(abort) {
      if (done) abort(new Error('aborted by ws-guard'));
      else abortUndici = abort;
    },
    onHeaders(code, rawHeaders, resume, statusText) {
      if (done) return false;
      // Interim answers (102, 103) are not relayed: the client gets the final one.
      if (code >= 100 && code < 200) return true;
      resumeUndici = resume;
      status = code;
      const headers: string[] = [];
      for (const h of rawHeaders as unknown as Buffer[]) headers.push(h.toString('latin1'));
      if (!answer.onHead(code, statusText, headers)) {
        done = true;
        abortUndici?.(new Error('answer refused'));
        return false;
      }
      return true;
    },
    onData(chunk) {
      if (done) return false;
      return answer.onData(chunk, () => {
        if (!done) resumeUndici?.();
      });
    },
    onComplete() {
      if (finish()) answer.onEnd();
    },
    onError(err) {
      if (!finish()) return;
      // A 204 or 304 has no body whatever its Content-Length says (RFC 9110 §6.4.1): undici reports the
      // missing body as a mismatch, but the answer is complete once its head is out.
      if ((status === 204 || status === 304) && (err as { code?: string }).code === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH') answer.onEnd();
      else answer.onError(upstreamError(err));
    },
  };
  pool.dispatch({ method: request.method as Dispatcher.HttpMethod, path: request.path, headers: request.headers, body: request.body }, handler);
  return () => {
    if (!finish()) return;
    abortUndici?.(new Error('aborted by ws-guard'));
  };
}
