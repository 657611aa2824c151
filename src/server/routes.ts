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
  /**
   * Plain HTTP on this route: `auth` checks the token like an upgrade (only where the route has auth;
   * without auth it is `pass`), `pass` forwards without a token, `deny` answers 404.
   */
  http: HttpMode;
}

export type HttpMode = 'auth' | 'pass' | 'deny';

/** The route's `http`, else the top level's, else `auth` where there is auth (docs/configuration.md). */
function httpMode(configured: HttpMode | undefined, auth: Route['auth']): HttpMode {
  const mode = configured ?? 'auth';
  return mode === 'auth' && auth === undefined ? 'pass' : mode;
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
  const topAuth = compileAuth(config.auth);
  const fallback: Route = {
    path: '', auth: topAuth, origins: config.origins, allowNoOrigin: config.allowNoOrigin, limits: config.limits, pool: undefined,
    http: httpMode(config.http, topAuth),
  };
  const routes: Route[] = config.routes.map((r) => {
    const auth = compileAuth(r.auth);
    return {
      path: r.path,
      auth,
      origins: r.origins,
      allowNoOrigin: r.allowNoOrigin,
      limits: r.limits,
      pool: r.ownConnectionPool ? r.path : undefined,
      http: httpMode(r.http, auth),
    };
  });
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
