import type { IncomingMessage } from 'node:http';
import { GuardError } from '../errors.js';
import type { JwtConfig } from '../config/schema.js';
import { headerCount } from '../server/handshake.js';

/** The subprotocol marker: `new WebSocket(url, ["bearer", token])` (design.md §3). */
export const BEARER_MARKER = 'bearer';

export interface FoundToken {
  token: string;
  source: JwtConfig['tokenSources'][number];
}

/**
 * Removes the `bearer` marker and the token after it from the offered subprotocols (they are for the
 * guard, not the app) and returns that token. Returns undefined when the marker is not offered.
 */
export function takeProtocolToken(protocols: string[]): string | undefined {
  const at = protocols.indexOf(BEARER_MARKER);
  if (at === -1) return undefined;
  const [, token] = protocols.splice(at, 2);
  return token ?? '';
}

function cookieValue(header: string | undefined, name: string): string | undefined {
  if (header === undefined) return undefined;
  for (const pair of header.split(';')) {
    const eq = pair.indexOf('=');
    if (eq !== -1 && pair.slice(0, eq).trim() === name) return pair.slice(eq + 1).trim().replace(/^"(.*)"$/, '$1');
  }
  return undefined;
}

/**
 * Finds the token in the configured sources, in their order. `protocolToken` is what
 * `takeProtocolToken` found. Ambiguous credentials (two Authorization headers) are refused rather than
 * guessed at.
 */
export function findToken(req: IncomingMessage, jwt: JwtConfig, protocolToken: string | undefined): FoundToken | undefined {
  for (const source of jwt.tokenSources) {
    let token: string | undefined;
    if (source === 'header') {
      // Node keeps only the first of duplicate Authorization headers; a second one is an attack or a bug.
      if (headerCount(req, 'authorization') > 1) throw new GuardError('TOKEN_INVALID', 'more than one Authorization header');
      const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(req.headers.authorization ?? '');
      token = m?.[1];
    } else if (source === 'protocol') {
      token = protocolToken;
    } else if (source === 'query') {
      token = new URL(req.url ?? '/', 'http://x').searchParams.get(jwt.queryParam) ?? undefined;
    } else {
      token = cookieValue(req.headers.cookie, jwt.cookie);
    }
    if (token !== undefined && token !== '') return { token, source };
  }
  return undefined;
}
