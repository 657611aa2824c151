import net from 'node:net';
import type { GuardConfig } from '../config/schema.js';
import { FORWARDING, withoutHopByHop } from '../http/headers.js';

export { withoutHopByHop };

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
