import type { GuardConfig, JwtConfig, LimitsConfig } from '../config/schema.js';
import { createJwtVerifier, type VerifyToken } from '../policies/jwt.js';
import type { OriginPolicyConfig } from '../policies/origin.js';

export interface Route extends OriginPolicyConfig {
  /** The prefix that matched, '' for the top-level defaults. */
  path: string;
  auth: { jwt: JwtConfig; verify: VerifyToken } | undefined;
  /** The top-level limits with the route's own merged over them. */
  limits: LimitsConfig;
  /** The name of the route's own connection pool, when it sets `limits.connections`. */
  pool: string | undefined;
}

/** `/chat` covers `/chat`, `/chat/` and `/chat/room`, not `/chatroom`. */
function covers(prefix: string, pathname: string): boolean {
  if (!pathname.startsWith(prefix)) return false;
  return prefix.endsWith('/') || pathname.length === prefix.length || pathname[prefix.length] === '/';
}

/**
 * Compiles the routes once: each gets its policy settings and a JWT verifier (shared with the top level
 * when the route did not change auth), so a handshake only looks its route up.
 */
export function createRouter(config: GuardConfig): (pathname: string) => Route {
  const verifiers = new Map<JwtConfig, VerifyToken>();
  const compileAuth = (auth: { jwt: JwtConfig } | undefined): Route['auth'] => {
    if (auth === undefined) return undefined;
    let verify = verifiers.get(auth.jwt);
    if (verify === undefined) {
      verify = createJwtVerifier(auth.jwt);
      verifiers.set(auth.jwt, verify);
    }
    return { jwt: auth.jwt, verify };
  };
  const fallback: Route = {
    path: '', auth: compileAuth(config.auth), origins: config.origins, allowNoOrigin: config.allowNoOrigin, limits: config.limits, pool: undefined,
  };
  const routes: Route[] = config.routes.map((r) => ({
    path: r.path,
    auth: compileAuth(r.auth),
    origins: r.origins,
    allowNoOrigin: r.allowNoOrigin,
    limits: r.limits,
    pool: r.ownConnectionPool ? r.path : undefined,
  }));
  return (pathname) => routes.find((r) => covers(r.path, pathname)) ?? fallback;
}

/** Every header name any route fills from claims: client-sent copies of these are always removed. */
export function identityHeaderNames(config: GuardConfig): Set<string> {
  const names = new Set<string>();
  for (const auth of [config.auth, ...config.routes.map((r) => r.auth)]) {
    for (const header of Object.values(auth?.jwt.forwardClaims ?? {})) names.add(header.toLowerCase());
  }
  return names;
}
