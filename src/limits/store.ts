import type { Rate } from '../config/units.js';

/** The caps of one pool of connection slots; an absent cap is no cap. */
export interface PoolLimits {
  total?: number | undefined;
  perIp?: number | undefined;
  perUser?: number | undefined;
}

export interface SlotRequest {
  /** '' is the process-wide pool; a route with limits of its own has a pool named by its path. */
  pool: string;
  limits: PoolLimits;
}

/** Held slots; `release` gives every one of them back, and only once. */
export interface Lease {
  release(): void;
}

export type SlotVerdict =
  | { ok: true; lease: Lease; /** Per pool: slots in use after this one, over the total cap. */ usage: { pool: string; ratio: number }[] }
  | { ok: false; refused: 'total' | 'perIp' | 'perUser' };

/** A per-message rate bucket shared by the connections of one user or address. */
export interface SharedBucket {
  take(now: number): boolean;
  waitMs(now: number): number;
  /**
   * True when `take` refused only because a shared store has not confirmed earlier messages yet: the
   * session waits a moment instead of refusing (absent: every refusal is final).
   */
  undecided?(now: number): boolean;
  /** The connection no longer uses it. */
  release(): void;
}

/**
 * Where connection counts and rates live. The in-memory store serves one process; a cluster-wide store
 * (Redis) implements the same methods. `acquireSlots` and `takeHandshake` may go over the network, so
 * they return promises; `sharedBucket` hands out a bucket checked synchronously on every message, which a
 * distributed store keeps locally and reconciles in the background.
 */
export interface LimitStore {
  acquireSlots(requests: readonly SlotRequest[], ip: string, user: string | undefined): Promise<SlotVerdict>;
  /** 0 when the handshake may proceed, else the milliseconds until it could. */
  takeHandshake(key: string, rate: Rate, burst: number): Promise<number>;
  sharedBucket(key: string, rate: Rate, burst: number): SharedBucket;
}
