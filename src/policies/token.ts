import type { IncomingMessage } from 'node:http';
import { GuardError } from '../errors.js';
import type { JwtConfig } from '../config/schema.js';
import { headerCount } from '../http/headers.js';
import { queryValues, type Target } from '../http/target.js';

/** The subprotocol marker: `new WebSocket(url, ["bearer", token])` (design.md §3). */
export const BEARER_MARKER = 'bearer';

export interface FoundToken {
  token: string;
  source: JwtConfig['tokenSources'][number];
}

/**
 * Removes every `bearer` marker and the entry after each from the offered subprotocols (they are for the
 * guard, never for the app) and returns the tokens that followed them, in order ('' for a marker at the
 * end of the list).
 */
export function takeProtocolTokens(protocols: string[]): string[] {
  const tokens: string[] = [];
  for (let at = protocols.indexOf(BEARER_MARKER); at !== -1; at = protocols.indexOf(BEARER_MARKER, at)) {
    const [, token] = protocols.splice(at, 2);
    tokens.push(token ?? '');
  }
  return tokens;
}

/**
 * What any cookie parser might strip around a name or value: JavaScript's and Python's whitespace (Python
 * also strips U+0085, which `trim()` keeps), controls and the latin1 range they read header bytes as.
 * Stripping the union means a name the app reads as the token cookie is always counted here.
 */
const COOKIE_PADDING = /^[\s\x00-\x20\x7f-\xa0]+|[\s\x00-\x20\x7f-\xa0]+$/g;

/** Every value of the cookie `name`, across all Cookie headers (Node joins them with `; `). */
function cookieValues(header: string | undefined, name: string): string[] {
  if (header === undefined) return [];
  const values: string[] = [];
  for (const pair of header.split(';')) {
    const eq = pair.indexOf('=');
    if (eq !== -1 && pair.slice(0, eq).replace(COOKIE_PADDING, '') === name) {
      values.push(pair.slice(eq + 1).replace(COOKIE_PADDING, '').replace(/^"(.*)"$/, '$1'));
    }
  }
  return values;
}

const BEARER = /^Bearer[ \t]+(\S+)$/i;

/** A credential found in the request; `token` is undefined when the guard cannot read it as a token. */
interface Credential {
  token: string | undefined;
  source: FoundToken['source'];
}

/**
 * Finds the one token of a request. Every place a token can travel is searched (the Authorization
 * header, the `bearer` subprotocol pairs, the query parameter, the cookie), whether or not
 * `tokenSources` accepts it there: an app behind the guard may read any of them, so a request carrying
 * two tokens (even the same one twice) is refused instead of letting the guard check one while the app
 * uses the other. A single token is accepted only from a configured source.
 */
export function findToken(req: IncomingMessage, jwt: JwtConfig, target: Target, protocolTokens: readonly string[]): FoundToken | undefined {
  const found: Credential[] = [];
  const authorizations = headerCount(req, 'authorization');
  if (authorizations > 1) throw new GuardError('TOKEN_INVALID', 'more than one Authorization header');
  // Any Authorization header is a credential the app may read (`Bearer <a> <b>`, `JWT <a>`, `Basic ...`):
  // it counts as one, and only the exact `Bearer <token>` form can be the token the guard verifies.
  const authorization = authorizations === 1 ? req.headers.authorization!.trim() : '';
  if (authorization !== '') found.push({ token: BEARER.exec(authorization)?.[1], source: 'header' });
  for (const token of protocolTokens) found.push({ token, source: 'protocol' });
  for (const token of queryValues(target.query, jwt.queryParam)) found.push({ token, source: 'query' });
  for (const token of cookieValues(req.headers.cookie, jwt.cookie)) found.push({ token, source: 'cookie' });

  // An empty value (`?access_token=`) carries no identity for the guard or the app.
  const tokens = found.filter((f) => f.token !== '');
  if (tokens.length > 1) throw new GuardError('TOKEN_INVALID', `more than one token (${tokens.map((f) => f.source).join(', ')})`);
  const [only] = tokens;
  if (only === undefined || !jwt.tokenSources.includes(only.source)) return undefined;
  if (only.token === undefined) throw new GuardError('TOKEN_INVALID', 'Authorization is not "Bearer <token>"');
  return { token: only.token, source: only.source };
}
