import type { JWTPayload } from 'jose';
import { GuardError } from '../errors.js';

/**
 * Bytes a forwarded claim keeps as they are: printable ASCII except `%`. Everything else (control
 * characters, `%` itself, every byte of a non-ASCII character's UTF-8 form) is percent-encoded, so any
 * claim fits an HTTP header and the encoding is reversible without ambiguity: `%` never stands for itself.
 */
const KEPT = /^[\x20-\x24\x26-\x7e]*$/;

function hex(byte: number): string {
  return `%${byte < 16 ? '0' : ''}${byte.toString(16).toUpperCase()}`;
}

/**
 * A claim value as a header value (docs/auth.md, "Forwarded identity"): the claim's text (a string as it
 * is, anything else as JSON) in UTF-8, percent-encoded outside printable ASCII, `%` included. Spaces at
 * either end are encoded too, since header parsers strip them. `Łukasz` is sent as `%C5%81ukasz`; the
 * app decodes with `urllib.parse.unquote` / `decodeURIComponent`. An ASCII value without `%` is unchanged.
 */
export function headerValue(text: string): string {
  if (KEPT.test(text) && !text.startsWith(' ') && !text.endsWith(' ')) return text;
  // Buffer.from replaces lone surrogates with U+FFFD: JSON allows them, UTF-8 (and encodeURIComponent) does not.
  const bytes = Buffer.from(text, 'utf8');
  let out = '';
  for (let i = 0; i < bytes.length; i++) {
    const byte = bytes[i]!;
    const edge = byte === 0x20 && (i === 0 || i === bytes.length - 1);
    out += byte >= 0x20 && byte <= 0x7e && byte !== 0x25 && !edge ? String.fromCharCode(byte) : hex(byte);
  }
  return out;
}

/** Why a token that names no one is refused, when something needs a user (a header, a per-user limit). */
export function notAUser(): GuardError {
  return new GuardError('CLAIMS_INSUFFICIENT', 'no user: claim sub is missing or not a string, boolean or safe integer');
}

/**
 * Whether JSON.stringify gives back the number the token's text held: integers beyond 2^53 (and
 * Infinity, from `1e400`) were already rounded when the payload was parsed, so `9007199254740993` would
 * be forwarded as `...992`, another user.
 */
function exact(value: unknown): boolean {
  if (typeof value === 'number') return Number.isSafeInteger(value) || (Number.isFinite(value) && !Number.isInteger(value));
  if (Array.isArray(value)) return value.every(exact);
  if (typeof value === 'object' && value !== null) return Object.values(value).every(exact);
  return true;
}

/**
 * The headers `forwardClaims` sets on the upstream request, from verified claims only. A claim that is
 * absent (or null) sets no header; objects and arrays are sent as JSON, except `sub`, which must name a
 * user: an object or array there is refused (403).
 */
export function claimHeaders(claims: JWTPayload, forwardClaims: Readonly<Record<string, string>>): string[] {
  const out: string[] = [];
  for (const [claim, header] of Object.entries(forwardClaims)) {
    const value = claim === 'sub' ? userKey(claims) : claims[claim];
    if (claim === 'sub' && value === null) throw notAUser();
    if (value === undefined || value === null) continue;
    if (!exact(value)) throw new GuardError('CLAIMS_INSUFFICIENT', `claim ${claim} holds a number too large to forward exactly`);
    out.push(header, headerValue(typeof value === 'string' ? value : JSON.stringify(value)));
  }
  return out;
}

/**
 * Who the token names, as the key of per-user limits: `sub` in a canonical string form whatever its JSON
 * scalar type (`"12345"` and `12345` are the same user). Undefined when the token has no `sub`; null when
 * it has one that names no one (null, an object, an array, a number JSON could not carry exactly). The
 * caller refuses both where a per-user limit needs a user, instead of letting the connection silently
 * escape the limit.
 */
export function userKey(claims: JWTPayload): string | null | undefined {
  const sub: unknown = claims.sub;
  if (sub === undefined) return undefined;
  if (typeof sub === 'string') return sub;
  if (typeof sub === 'boolean' || (typeof sub === 'number' && Number.isSafeInteger(sub))) return JSON.stringify(sub);
  return null;
}
