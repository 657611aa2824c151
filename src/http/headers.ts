import { createHash } from 'node:crypto';
import type { IncomingMessage } from 'node:http';

/*
 * Header rules shared by the request path, the upgrade path, the policies and the upstream leg. Nothing
 * here knows about routes or policies, so every layer may use it (docs/architecture.md, layering).
 */

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

/** RFC 6455 §4.2.2: the accept value the server must answer for `key`. */
export function acceptFor(key: string): string {
  return createHash('sha1').update(key + GUID).digest('base64');
}

/** How many header lines named `name` (lower case) the request had; `req.headers` hides repeats. */
export function headerCount(req: IncomingMessage, name: string): number {
  let n = 0;
  for (let i = 0; i < req.rawHeaders.length; i += 2) if (req.rawHeaders[i]!.toLowerCase() === name) n++;
  return n;
}

/** Splits a comma-separated header list (all copies of it) into trimmed, non-empty entries. */
export function headerList(value: string | string[] | undefined): string[] {
  if (value === undefined) return [];
  const text = Array.isArray(value) ? value.join(',') : value;
  return text.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
}

/** RFC 9110 §7.6.1 hop-by-hop headers, plus the legacy Proxy-Connection. */
const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization',
  'te', 'trailer', 'transfer-encoding', 'upgrade',
]);

/**
 * Headers a Connection header cannot make hop-by-hop: the handshake's own, and the message framing, which
 * must never disappear while the body it frames is forwarded (RFC 9112 §11.2, request smuggling).
 */
const PROTECTED = new Set(['host', 'sec-websocket-key', 'sec-websocket-version', 'content-length']);

/**
 * Headers that say who the client is or what it asked for; believed only from a trusted proxy, removed
 * otherwise (the first three are then rebuilt). Frameworks honour the others (X-Real-IP for the address,
 * X-Original-URL and X-Rewrite-URL for the route, X-Forwarded-Prefix/-Port for URLs): from a client they
 * would make the app see another client or target than the guard checked.
 */
export const FORWARDING = new Set([
  'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'forwarded',
  'x-real-ip', 'x-client-ip', 'true-client-ip', 'x-original-url', 'x-rewrite-url', 'x-forwarded-prefix', 'x-forwarded-port',
]);

/**
 * `X_Auth_Sub` for `X-Auth-Sub`: CGI and WSGI servers (gunicorn, Django, Flask) read `-` and `_` in a name
 * as the same character, so such a header would reach the app as the identity or forwarding header the
 * guard sets. It is removed like the header it imitates.
 */
function disguised(lower: string, drop: ReadonlySet<string>): boolean {
  if (!lower.includes('_')) return false;
  const read = lower.replaceAll('_', '-');
  return drop.has(read) || FORWARDING.has(read);
}

/** The headers without hop-by-hop ones (and those the Connection header names), nor any in `drop`. */
export function withoutHopByHop(rawHeaders: string[], drop: ReadonlySet<string> = new Set()): string[] {
  const named = new Set<string>();
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (rawHeaders[i]!.toLowerCase() === 'connection') {
      for (const token of rawHeaders[i + 1]!.split(',')) {
        const name = token.trim().toLowerCase();
        if (!PROTECTED.has(name)) named.add(name);
      }
    }
  }
  const out: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const lower = rawHeaders[i]!.toLowerCase();
    if (!HOP_BY_HOP.has(lower) && !named.has(lower) && !drop.has(lower) && !disguised(lower, drop)) out.push(rawHeaders[i]!, rawHeaders[i + 1]!);
  }
  return out;
}
