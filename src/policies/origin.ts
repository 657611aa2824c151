import type { IncomingMessage } from 'node:http';
import { GuardError } from '../errors.js';
import { headerCount } from '../http/headers.js';
import type { Policy } from './policy.js';

/** One allowlist entry: an exact origin, or every subdomain of a domain (`https://*.example.org`). */
export interface OriginPattern {
  scheme: string;
  /** Lower-case host; for a wildcard, the domain under it. */
  host: string;
  /** The port as it appears in a serialized origin: '' for the scheme's default. */
  port: string;
  wildcard: boolean;
}

const PATTERN = /^(?<scheme>[a-z][a-z0-9+.-]*):\/\/(?<wild>\*\.)?(?<rest>[^/?#*]+)$/i;

/** Parses an allowlist entry; undefined when it is not an origin (a path, a `*` in the wrong place, ...). */
export function parseOriginPattern(text: string): OriginPattern | undefined {
  const m = PATTERN.exec(text.trim().replace(/\/$/, ''));
  if (!m?.groups) return undefined;
  let url: URL;
  try {
    url = new URL(`${m.groups.scheme}://${m.groups.rest}`);
  } catch {
    return undefined;
  }
  if (url.username || url.password) return undefined;
  return { scheme: url.protocol.slice(0, -1), host: url.hostname, port: url.port, wildcard: m.groups.wild !== undefined };
}

function matches(pattern: OriginPattern, origin: URL): boolean {
  if (origin.protocol.slice(0, -1) !== pattern.scheme || origin.port !== pattern.port) return false;
  // A wildcard covers subdomains only: `*.example.org` is neither `example.org` nor `example.org.evil.com`.
  return pattern.wildcard ? origin.hostname.endsWith(`.${pattern.host}`) : origin.hostname === pattern.host;
}

export interface OriginPolicyConfig {
  origins: readonly OriginPattern[] | undefined;
  allowNoOrigin: boolean;
}

/**
 * The Origin allowlist (RFC 6455 §10.2), the real form of "CORS for WebSockets": browsers always send
 * Origin on a WebSocket handshake, so a page from another site is refused before the upstream is dialled.
 * No list means any origin.
 */
export function checkOrigin(req: IncomingMessage, config: OriginPolicyConfig): void {
  if (config.origins === undefined) return;
  if (headerCount(req, 'origin') > 1) throw new GuardError('ORIGIN_DENIED', 'more than one Origin header');
  const value = req.headers.origin;
  if (value === undefined) {
    if (config.allowNoOrigin) return;
    throw new GuardError('ORIGIN_DENIED', 'no Origin header');
  }
  // RFC 6454 §7.3: "null" is sent by sandboxed and opaque origins, which no allowlist entry can name.
  if (value.trim() === 'null') throw new GuardError('ORIGIN_DENIED', 'Origin null');
  let origin: URL;
  try {
    origin = new URL(value.trim());
  } catch {
    throw new GuardError('ORIGIN_DENIED', 'malformed Origin');
  }
  if ((origin.pathname !== '/' && origin.pathname !== '') || origin.search || origin.username || value.trim().endsWith('/')) {
    throw new GuardError('ORIGIN_DENIED', 'malformed Origin');
  }
  if (!config.origins.some((pattern) => matches(pattern, origin))) {
    throw new GuardError('ORIGIN_DENIED', origin.origin);
  }
}

/** The Origin allowlist as a policy: on every upgrade, and on every plain request but a CORS preflight. */
export function originPolicy(config: OriginPolicyConfig): Policy {
  return {
    name: 'origin',
    onHandshake: (ctx) => checkOrigin(ctx.req, config),
    onRequest: (ctx) => {
      if (!ctx.preflight) checkOrigin(ctx.req, config);
    },
  };
}
