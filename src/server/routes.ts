import type { GuardConfig, JwtConfig, LimitsConfig } from '../config/schema.js';
import type { LimitStore } from '../limits/store.js';
import type { Bans } from '../limits/bans.js';
import { authPolicy, identityPolicy } from '../policies/auth.js';
import { banPolicy } from '../policies/ban.js';
import { createJwtVerifier, type VerifyToken } from '../policies/jwt.js';
import { messageLimits, type SessionLimits } from '../policies/messages.js';
import { originPolicy, type OriginPolicyConfig } from '../policies/origin.js';
import type { Policy } from '../policies/policy.js';
import { handshakeRatePolicy, requestRatePolicy } from '../policies/rate.js';
import { bodySizePolicy, httpDenyPolicy, requestSlotsPolicy, type RequestSlots } from '../policies/requests.js';
import { connectionSlotsPolicy, type SlotPool, type SlotWarnings } from '../policies/slots.js';

export interface Route extends OriginPolicyConfig {
  /** The prefix that matched, '' for the top-level defaults. */
  path: string;
  auth: { jwt: JwtConfig; verify: VerifyToken } | undefined;
  /** The top-level limits with the route's own merged over them. */
  limits: LimitsConfig;
  /** The name of the route's own connection pool, when it sets `limits.connections`. */
  pool: string | undefined;
  /** The name of the route's own pool of requests in flight, when it sets `limits.requests.concurrent`; '' is the process's. */
  requestPool: string;
  /**
   * Plain HTTP on this route: `auth` checks the token like an upgrade (only where the route has auth;
   * without auth it is `pass`), `pass` forwards without a token, `deny` answers 404.
   */
  http: HttpMode;
  /** The route's policies, in the order the server runs them (design.md §1), for upgrades and plain requests. */
  policies: readonly Policy[];
  /** The per-message hooks of a new session on this route. */
  openSession: (ip: string, user: string | undefined) => SessionLimits;
}

/** What the policies of every route share: the limit store, the requests in flight, the slot warnings. */
export interface PolicyDeps {
  store: LimitStore;
  inFlight: RequestSlots;
  warnings: SlotWarnings;
  /** Operator bans (admin POST /connections/close with ban=), for the process. */
  bans: Bans;
}

type RouteSettings = Omit<Route, 'policies' | 'openSession'>;

/** Whether a limit of this route counts per user, so a token must name one. */
function needsUser(config: GuardConfig, route: RouteSettings): boolean {
  return config.limits.connections?.perUser !== undefined
    || route.limits.connections?.perUser !== undefined
    || route.limits.messages?.per === 'user';
}

/**
 * The policies of one route, built once (Caddy's provision → validate → serve): the order is that of
 * design.md §1 — `http: deny`, handshake rate, Origin, token, operator bans, request rate, connection slots, requests in
 * flight, body size. Each runs on the path it has a hook for.
 */
function compilePolicies(config: GuardConfig, route: RouteSettings, deps: PolicyDeps): Policy[] {
  const { limits } = route;
  const policies: Policy[] = [];
  if (route.http === 'deny') policies.push(httpDenyPolicy());
  if (limits.handshakes !== undefined) policies.push(handshakeRatePolicy(deps.store, route.path, limits.handshakes));
  policies.push(originPolicy(route));
  if (route.auth !== undefined) {
    const onRequests = route.http === 'auth';
    policies.push(authPolicy({ ...route.auth, onRequests }));
    policies.push(identityPolicy({ jwt: route.auth.jwt, needsUser: needsUser(config, route), onRequests }));
  }
  // After the token, so a banned user is known by name; before anything that takes a slot.
  policies.push(banPolicy(deps.bans));
  const { rate, burst, per, concurrent, body } = limits.requests;
  if (rate !== undefined && burst !== undefined) policies.push(requestRatePolicy(deps.store, route.path, { rate, burst, per }));
  const pools: SlotPool[] = [{ pool: '', limits: config.limits.connections ?? {} }];
  if (route.pool !== undefined) pools.push({ pool: route.pool, limits: limits.connections ?? {} });
  policies.push(connectionSlotsPolicy(deps.store, pools, deps.warnings));
  policies.push(requestSlotsPolicy(deps.inFlight, route.requestPool, concurrent));
  if (body !== undefined) policies.push(bodySizePolicy(body));
  return policies;
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
export function createRouter(config: GuardConfig, deps: PolicyDeps): (pathname: string) => Route {
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
  const build = (settings: RouteSettings): Route => ({
    ...settings,
    policies: compilePolicies(config, settings, deps),
    openSession: messageLimits(deps.store, settings.path, settings.limits),
  });
  const topAuth = compileAuth(config.auth);
  const fallback = build({
    path: '', auth: topAuth, origins: config.origins, allowNoOrigin: config.allowNoOrigin, limits: config.limits, pool: undefined, requestPool: '',
    http: httpMode(config.http, topAuth),
  });
  const routes: Route[] = config.routes.map((r) => {
    const auth = compileAuth(r.auth);
    return build({
      path: r.path,
      auth,
      origins: r.origins,
      allowNoOrigin: r.allowNoOrigin,
      limits: r.limits,
      pool: r.ownConnectionPool ? r.path : undefined,
      requestPool: r.ownRequestPool ? r.path : '',
      http: httpMode(r.http, auth),
    });
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
