import net from 'node:net';
import type { GuardConfig } from '../config/schema.js';

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
const FORWARDING = new Set([
  'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'forwarded',
  'x-real-ip', 'x-client-ip', 'true-client-ip', 'x-original-url', 'x-rewrite-url', 'x-forwarded-prefix', 'x-forwarded-port',
]);

/** `::ffff:127.0.0.1` and `127.0.0.1` are the same client. */
export function normalizeAddress(address: string | undefined): string {
  if (!address) return '';
  return address.startsWith('::ffff:') && net.isIPv4(address.slice(7)) ? address.slice(7) : address;
}

export class TrustedProxies {
  private readonly list = new net.BlockList();
  private readonly empty: boolean;

  constructor(entries: GuardConfig['trustedProxies']) {
    for (const { address, prefix, family } of entries) this.list.addSubnet(address, prefix, family);
    this.empty = entries.length === 0;
  }

  has(address: string): boolean {
    if (this.empty) return false;
    const family = net.isIP(address);
    return family !== 0 && this.list.check(address, family === 4 ? 'ipv4' : 'ipv6');
  }

  /**
   * The client's address: the peer itself, unless the peer is a trusted proxy; then the right-most
   * X-Forwarded-For entry that is not a trusted proxy (entries further left are the client's own claims).
   */
  clientAddress(peer: string, xff: string | string[] | undefined): string {
    if (!this.has(peer) || xff === undefined) return peer;
    const hops = (Array.isArray(xff) ? xff.join(',') : xff).split(',');
    let address = peer;
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = normalizeAddress(hops[i]!.trim());
      if (net.isIP(hop) === 0) return address;
      address = hop;
      if (!this.has(hop)) return hop;
    }
    return address;
  }
}

export interface ForwardContext {
  peer: string;
  trusted: boolean;
  proto: 'http' | 'https';
  host: string | undefined;
}

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

/**
 * The request headers for the upstream, as a flat raw list (names keep their case and order): hop-by-hop
 * headers and `drop` removed, X-Forwarded-* appended to when the peer is a trusted proxy and set from
 * scratch when it is not.
 */
export function upstreamHeaders(rawHeaders: string[], ctx: ForwardContext, drop?: ReadonlySet<string>): string[] {
  const kept = withoutHopByHop(rawHeaders, drop);
  const out: string[] = [];
  let xff: string | undefined;
  let proto: string | undefined;
  let forwardedHost: string | undefined;
  for (let i = 0; i < kept.length; i += 2) {
    const name = kept[i]!;
    const value = kept[i + 1]!;
    const lower = name.toLowerCase();
    if (!FORWARDING.has(lower)) out.push(name, value);
    else if (!ctx.trusted) continue;
    else if (lower === 'x-forwarded-for') xff = xff === undefined ? value : `${xff}, ${value}`;
    else if (lower === 'x-forwarded-proto') proto ??= value;
    else if (lower === 'x-forwarded-host') forwardedHost ??= value;
    else out.push(name, value);
  }
  out.push('X-Forwarded-For', xff === undefined ? ctx.peer : `${xff}, ${ctx.peer}`);
  out.push('X-Forwarded-Proto', proto ?? ctx.proto);
  const host = forwardedHost ?? ctx.host;
  if (host !== undefined) out.push('X-Forwarded-Host', host);
  return out;
}
