import { createPublicKey, type KeyObject } from 'node:crypto';
import {
  createLocalJWKSet, createRemoteJWKSet, jwtVerify, type JWTPayload, type JWTVerifyGetKey,
} from 'jose';
import type { JwtConfig } from '../config/schema.js';
import { GuardError } from '../errors.js';

export interface Identity {
  claims: JWTPayload;
  /** When the token stops being valid (exp plus the clock tolerance), in ms since the epoch. */
  expiresAt: number;
}

export type VerifyToken = (token: string) => Promise<Identity>;

/**
 * Keys from a JWKS URL that keep working while the endpoint is down: jose refetches on an unknown kid
 * (with a cooldown) and when the cache is older than its maximum age; if that refetch fails, the last set
 * it fetched still verifies the tokens its keys signed. URLs inside tokens (jku, x5u) are never fetched.
 */
function remoteKeys(jwt: JwtConfig & { jwksUrl: URL }): JWTVerifyGetKey {
  const remote = createRemoteJWKSet(jwt.jwksUrl, {
    timeoutDuration: jwt.jwksTimeout,
    cooldownDuration: jwt.jwksCooldown,
    cacheMaxAge: jwt.jwksCacheMaxAge,
  });
  return async (header, token) => {
    try {
      return await remote(header, token);
    } catch (err) {
      // The getter fails either because no key matches (a verdict) or because the fetch failed (an outage).
      const code = (err as { code?: string }).code;
      const last = remote.jwks();
      if (last === undefined || code === 'ERR_JWKS_NO_MATCHING_KEY' || code === 'ERR_JWKS_MULTIPLE_MATCHING_KEYS') throw err;
      return createLocalJWKSet(last)(header, token);
    }
  };
}

function keyFor(jwt: JwtConfig): Uint8Array | KeyObject | JWTVerifyGetKey {
  if (jwt.secret !== undefined) return new TextEncoder().encode(jwt.secret);
  // A KeyObject, never PEM text: only a typed public key stops it being misused as an HMAC secret.
  if (jwt.publicKey !== undefined) return createPublicKey(jwt.publicKey.pem);
  return remoteKeys(jwt as JwtConfig & { jwksUrl: URL });
}

/** Builds the verifier once per config; every handshake then only verifies. */
export function createJwtVerifier(jwt: JwtConfig): VerifyToken {
  const key = keyFor(jwt);
  const required = new Set(jwt.requiredClaims);
  const options = {
    algorithms: jwt.algorithms,
    issuer: jwt.issuer,
    audience: jwt.audience,
    requiredClaims: ['exp', ...jwt.requiredClaims],
    clockTolerance: jwt.clockTolerance / 1000,
  };

  return async (token) => {
    if (token.length > jwt.maxTokenLength) throw new GuardError('TOKEN_INVALID', `token longer than ${jwt.maxTokenLength} bytes`);
    try {
      const { payload } = typeof key === 'function' ? await jwtVerify(token, key, options) : await jwtVerify(token, key, options);
      return { claims: payload, expiresAt: payload.exp! * 1000 + jwt.clockTolerance };
    } catch (err) {
      throw refusalFor(err, required);
    }
  };
}

/** jose's error codes → the answers of design.md §3: claims that are valid but not enough are a 403. */
function refusalFor(err: unknown, required: ReadonlySet<string>): GuardError {
  const { code, claim, reason } = err as { code?: string; claim?: string; reason?: string };
  if (code === 'ERR_JWT_EXPIRED') return new GuardError('TOKEN_EXPIRED');
  if (code === 'ERR_JWT_CLAIM_VALIDATION_FAILED' && reason === 'missing' && claim !== undefined && required.has(claim)) {
    return new GuardError('CLAIMS_INSUFFICIENT', `claim ${claim} missing`);
  }
  if (code === 'ERR_JWT_CLAIM_VALIDATION_FAILED') return new GuardError('TOKEN_INVALID', `claim ${claim}: ${reason}`);
  return new GuardError('TOKEN_INVALID', code ?? (err instanceof Error ? err.name : 'unknown error'));
}
