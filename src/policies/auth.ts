import type { JwtConfig } from '../config/schema.js';
import { GuardError } from '../errors.js';
import { claimHeaders, notAUser, userKey } from './identity.js';
import type { VerifyToken } from './jwt.js';
import type { Admission, Policy } from './policy.js';
import { findToken } from './token.js';

export interface AuthPolicyConfig {
  jwt: JwtConfig;
  verify: VerifyToken;
  /** Plain requests need the token too (`http: auth`). */
  onRequests: boolean;
}

/**
 * The token: exactly one, from a configured source (one token per request), verified. On an upgrade with
 * `onReject: close`, a refusal with a close code is answered with a 101 and that close code.
 */
export function authPolicy(config: AuthPolicyConfig): Policy {
  const { jwt, verify } = config;
  const admit = async (ctx: Admission) => {
    const found = findToken(ctx.req, jwt, ctx.target, ctx.protocolTokens);
    if (found === undefined) throw new GuardError('TOKEN_MISSING');
    ctx.identity = await verify(found.token);
  };
  return {
    name: 'auth',
    closeOnReject: jwt.onReject === 'close',
    onHandshake: admit,
    onRequest: config.onRequests ? (ctx) => (ctx.preflight ? undefined : admit(ctx)) : undefined,
  };
}

export interface IdentityPolicyConfig {
  jwt: JwtConfig;
  /** A limit of the route counts per user: the token must name one (403 otherwise). Upgrades only. */
  needsUser: boolean;
  onRequests: boolean;
}

/**
 * The verified claims as the upstream's identity headers (`forwardClaims`, percent-encoded) and `sub` as
 * the user of per-user limits. Runs after the auth policy; a request it let through without a token (a
 * preflight) carries no identity.
 */
export function identityPolicy(config: IdentityPolicyConfig): Policy {
  const admit = (ctx: Admission, needsUser: boolean) => {
    if (ctx.identity === undefined) return;
    const { claims } = ctx.identity;
    ctx.claimHeaders.push(...claimHeaders(claims, config.jwt.forwardClaims));
    const sub = userKey(claims);
    if ((sub === null || sub === undefined) && needsUser) throw notAUser();
    ctx.user = sub ?? undefined;
  };
  return {
    name: 'identity',
    closeOnReject: config.jwt.onReject === 'close',
    onHandshake: (ctx) => admit(ctx, config.needsUser),
    onRequest: config.onRequests ? (ctx) => admit(ctx, false) : undefined,
  };
}
