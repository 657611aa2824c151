import type { IncomingMessage } from 'node:http';
import type { Target } from '../http/target.js';
import type { Identity } from './jwt.js';

/**
 * The policy model (design.md §4): each policy is built once per route when the config is loaded (its
 * factory validates what it needs), then serves. The server runs a route's policies in order, for an
 * upgrade (`onHandshake`) and for a plain request (`onRequest`) alike, and does not know what any of them
 * does: a policy admits by returning and refuses by throwing a GuardError, which the server turns into
 * the answer in one place (an HTTP status, or a 101 and a close code where `closeOnReject` says so).
 */
export interface Admission {
  req: IncomingMessage;
  target: Target;
  /** The client address (trusted proxies applied). */
  ip: string;
  /** Upgrade only: the tokens that followed `bearer` markers in Sec-WebSocket-Protocol (already removed). */
  protocolTokens: readonly string[];
  /** Plain request only: a CORS preflight, which carries no credentials and is the app's to answer. */
  preflight: boolean;
  /** Set by the token policy. */
  identity: Identity | undefined;
  /** Who the token names (per-user limits), when it names someone. */
  user: string | undefined;
  /** Headers the upstream request gets from verified claims (flat name, value list). */
  claimHeaders: string[];
  /** What the policies took and the end of the connection or request gives back (slots), each once. */
  releases: (() => void)[];
}

export interface Policy {
  readonly name: string;
  /** A refusal with a close code from this policy is a 101 and a close frame, not a status (`onReject: close`). */
  readonly closeOnReject?: boolean;
  onHandshake?(ctx: Admission): void | Promise<void>;
  onRequest?(ctx: Admission): void | Promise<void>;
}

export function admission(req: IncomingMessage, target: Target, ip: string, protocolTokens: readonly string[], preflight: boolean): Admission {
  return { req, target, ip, protocolTokens, preflight, identity: undefined, user: undefined, claimHeaders: [], releases: [] };
}

/** Gives back everything the policies took, once. */
export function releaseAll(ctx: Admission): void {
  const releases = ctx.releases.splice(0);
  for (const release of releases) release();
}
