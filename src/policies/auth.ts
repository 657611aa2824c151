import type { JwtConfig } from '../config/schema.js';
import { GuardError } from '../errors.js';
import { claimHeaders, notAUser, userKey } from './identity.js';
import type { VerifyToken } from './jwt.js';
import type { Admission, Policy } from './policy.js';
import { findToken } from './token.js';

export interface AuthPolicyConfig {
  jwt: JwtConfig;
  verify: VerifyToken;
  /** A limit of the route counts per user: a token must name one (403 otherwise). Upgrades only. */
  needsUser: boolean;
  /** Plain requests need the token too (`http: auth`). */
  onRequests: boolean;
}

/**
 * The token: exactly one, from a configured source, verified; its claims become the forwarded identity
 * headers and its `sub` the user of per-user limits. On an upgrade with `onReject: close`, a refusal
 * with a close code is answered with a 101 and that close code.
 */
export function authPolicy(config: AuthPolicyConfig): Policy {
  const { jwt, verify } = config;
  const admit = async (ctx: Admission, needsUser: boolean) => {
    const found = findToken(ctx.req, jwt, ctx.target, ctx.protocolTokens);
    if (found === undefined) throw new GuardError('TOKEN_MISSING');
    const identity = await verify(found.token);
    ctx.identity = identity;
    ctx.claimHeaders.push(...claimHeaders(identity.claims, jwt.forwardClaims));
    const sub = userKey(identity.claims);
    if ((sub === null || sub === undefined) && needsUser) throw notAUser();
    ctx.user = sub ?? undefined;
  };
  return {
    name: 'auth',
    closeOnReject: jwt.onReject === 'close',
    onHandshake: (ctx) => admit(ctx, config.needsUser),
    onRequest: config.onRequests ? (ctx) => (ctx.preflight ? undefined : admit(ctx, false)) : undefined,
  };
}
