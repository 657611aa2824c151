import { EventEmitter } from 'node:events';
import type { CloseReason, ErrorCode } from './errors.js';

/** How a session ended, for the audit trail. */
export interface SessionEnd {
  id: number;
  /** Who started the closing: the client, the upstream, or the guard (with the error code). */
  closedBy: 'client' | 'upstream' | 'guard';
  closeCode: number;
  reason: CloseReason | null;
  detail: string | undefined;
  messagesIn: number;
  messagesOut: number;
  bytesIn: number;
  bytesOut: number;
  durationMs: number;
}

/** Who a connection is, as far as the guard knows it once the handshake is checked. */
export interface ConnectionMeta {
  ip: string;
  /** Request path with token query parameters redacted. */
  path: string;
  /** The matched route's prefix, '' for the top-level settings (logs and metrics say `/`: see routeName). */
  route: string;
  user: string | undefined;
}

/**
 * How logs and metrics name a route: its prefix, and `/` for the top-level settings, which apply to every
 * path no route covers (a configured `/` route covers them all, so the two never meet).
 */
export function routeName(route: string): string {
  return route || '/';
}

export interface RefusedEvent {
  code: ErrorCode;
  status: number;
  /** Set when the refusal was a 101 followed by this close code (`onReject: close`). */
  closeCode?: number | undefined;
  ip: string;
  path: string | undefined;
  route: string | undefined;
  detail: string;
  durationMs: number;
}

export interface RequestDone {
  method: string;
  /** Request path with token query parameters redacted. */
  path: string;
  /** The matched route, undefined when the request was refused before a route was known. */
  route: string | undefined;
  ip: string;
  user: string | undefined;
  /** The status that went out; undefined when the connection ended before any answer. */
  status: number | undefined;
  durationMs: number;
}

/** The shared limit store (store.redis) went down or came back up. */
export interface StoreTransition {
  state: 'up' | 'down';
  /** Why it went down, or what was written back when it came up. */
  reason: string;
  /** What admission does while it is down. */
  onError: 'local' | 'open' | 'closed';
}

export interface SlotsEvent {
  pool: string;
  ratio: number;
  warnAt: number;
}

/**
 * What the core reports. Logs and metrics subscribe to these; the core never calls them (design.md §4,
 * the undici diagnostics model), so either can be left out without touching the proxy.
 */
export type GuardEventMap = {
  /** Every listener of the process is up: emitted by whoever starts them (the CLI), not by startGuard. */
  listening: [{ address: string; upstream: string }];
  refused: [RefusedEvent];
  /** The upstream answered the upgrade with something other than 101; it was relayed. */
  upstreamRefused: [{ status: number; ip: string; path: string }];
  opened: [ConnectionMeta & { session: number; durationMs: number }];
  closed: [SessionEnd & ConnectionMeta];
  /** Slot usage of a pool crossed its warnAt mark upwards. */
  slotsWarning: [SlotsEvent];
  draining: [{ open: number; timeoutMs: number }];
  /** A plain HTTP request the guard answered itself: a policy refused it, or the upstream failed. */
  requestRefused: [RefusedEvent & { method: string }];
  /** A plain HTTP request is over (answered, refused, or the client left): one per request. */
  requestDone: [RequestDone];
  /** The shared limit store went down (admission follows store.onError) or came back (counts written back). */
  store: [StoreTransition];
  /** A bug: something threw that should not have. The connection concerned was dropped. */
  internalError: [{ err: unknown; where: string }];
};

export class GuardEvents extends EventEmitter<GuardEventMap> {}
