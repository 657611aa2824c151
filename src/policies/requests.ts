import { GuardError } from '../errors.js';
import type { Policy } from './policy.js';
import { Transform, type TransformCallback } from 'node:stream';

/**
 * Plain HTTP requests in flight, counted per key (a route and a client address). Counted in this
 * process: with workers each has its own count (docs/limits.md).
 */
export class RequestSlots {
  private readonly inFlight = new Map<string, number>();

  /** Takes a slot under `key` if fewer than `limit` are taken; returns its release (idempotent), or undefined. */
  acquire(key: string, limit: number): (() => void) | undefined {
    const held = this.inFlight.get(key) ?? 0;
    if (held >= limit) return undefined;
    this.inFlight.set(key, held + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const now = (this.inFlight.get(key) ?? 1) - 1;
      if (now <= 0) this.inFlight.delete(key);
      else this.inFlight.set(key, now);
    };
  }

  /** Slots held under `key` (tests, metrics). */
  held(key: string): number {
    return this.inFlight.get(key) ?? 0;
  }
}

/**
 * Passes a request body through while it stays within `limit` bytes. The chunk that would cross the limit
 * is not passed on: `onOver` is called instead, once, and nothing after it is passed either, so the
 * upstream never sees more than the limit.
 */
export class BodyLimit extends Transform {
  private seen = 0;
  private over = false;

  constructor(private readonly limit: number, private readonly onOver: () => void) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    if (this.over) {
      callback();
      return;
    }
    this.seen += chunk.length;
    if (this.seen > this.limit) {
      this.over = true;
      callback();
      this.onOver();
      return;
    }
    callback(null, chunk);
  }
}

/** Whether a declared Content-Length is already past the limit (answered 413 before the upstream is dialled). */
export function declaredTooLarge(contentLength: string | undefined, limit: number | undefined): boolean {
  if (limit === undefined || contentLength === undefined) return false;
  return Number(contentLength) > limit;
}

/** A CORS preflight (Fetch §3.2.2): OPTIONS with Access-Control-Request-Method. It carries no credentials. */
export function isPreflight(method: string | undefined, headers: Record<string, unknown>): boolean {
  return method === 'OPTIONS' && headers['access-control-request-method'] !== undefined;
}

/** `http: deny`: a plain request on this route is answered 404 and the upstream never dialled. */
export function httpDenyPolicy(): Policy {
  return {
    name: 'http-deny',
    onRequest() {
      throw new GuardError('HTTP_DENIED');
    },
  };
}

/** Requests in flight per client address on a route (429); the slot comes back when the answer is over. */
export function requestSlotsPolicy(slots: RequestSlots, route: string, concurrent: number): Policy {
  return {
    name: 'requests-in-flight',
    onRequest(ctx) {
      const release = slots.acquire(`${route}|${ctx.ip}`, concurrent);
      if (release === undefined) throw new GuardError('REQUESTS_IN_FLIGHT', ctx.ip, { 'Retry-After': '1' });
      ctx.releases.push(release);
    },
  };
}

/** A declared body over the limit is refused (413) before the upstream is dialled; a chunked one is metered on the way (BodyLimit). */
export function bodySizePolicy(limit: number): Policy {
  return {
    name: 'body-size',
    onRequest(ctx) {
      const length = ctx.req.headers['content-length'];
      if (declaredTooLarge(length, limit)) throw new GuardError('BODY_TOO_LARGE', `Content-Length ${length}`);
    },
  };
}
