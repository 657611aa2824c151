import { SignJWT } from 'jose';
import type { JwtConfig } from '../config/schema.js';

/** Mints a development token from the configured shared secret (HS* only: ws-guard never holds private keys). */
export async function mintToken(jwt: JwtConfig, claims: { sub: string; ttlMs: number }): Promise<string> {
  const alg = jwt.algorithms[0];
  if (jwt.secret === undefined || alg === undefined || !alg.startsWith('HS')) {
    throw new Error('minting needs auth.jwt.secret with an HS* algorithm');
  }
  let token = new SignJWT({ sub: claims.sub })
    .setProtectedHeader({ alg, typ: 'JWT' })
    .setIssuedAt()
    .setExpirationTime(Math.floor((Date.now() + claims.ttlMs) / 1000));
  if (jwt.issuer !== undefined) token = token.setIssuer(Array.isArray(jwt.issuer) ? jwt.issuer[0]! : jwt.issuer);
  if (jwt.audience !== undefined) token = token.setAudience(jwt.audience);
  return token.sign(new TextEncoder().encode(jwt.secret));
}

/** The config as `check` prints it: secrets masked, key files named by path only, routes without auth as `auth: false`. */
export function printable(value: unknown, key = ''): unknown {
  if (['secret', 'token', 'password', 'sentinelPassword'].includes(key) && typeof value === 'string') return '********';
  // A route's auth is resolved: absent means no authentication there, which YAML would print as nothing at all.
  if (key === 'routes' && Array.isArray(value)) {
    return value.map((route: Record<string, unknown>) => printable({ ...route, auth: route.auth ?? false }));
  }
  // Files read into the config (public key, TLS certificate and key) are shown by their path.
  if (value !== null && typeof value === 'object' && 'path' in value && ('pem' in value)) return (value as { path: string }).path;
  if (value instanceof URL) {
    if (value.password === '') return value.href;
    const masked = new URL(value.href);
    masked.password = '********';
    return masked.href;
  }
  if (Array.isArray(value)) return value.map((v) => printable(v));
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, printable(v, k)]));
  }
  return value;
}
