import { GuardError } from '../errors.js';
import type { LimitStore, PoolLimits } from '../limits/store.js';
import type { Policy } from './policy.js';

const SLOT_REFUSALS = { total: 'CONNECTIONS_FULL', perIp: 'CONNECTIONS_PER_IP', perUser: 'CONNECTIONS_PER_USER' } as const;
/** What a refused connection slot asks the client to wait: slots free up as others close, not on a clock. */
export const SLOT_RETRY_AFTER_S = '5';

/**
 * Which pools are at or over their warnAt mark, for all routes of one config: the process-wide pool is
 * shared by every route. One warning when usage crosses the mark upwards, not one per connection above it.
 */
export class SlotWarnings {
  private readonly warned = new Set<string>();

  constructor(private readonly warn: (pool: string, ratio: number, warnAt: number) => void) {}

  observe(pool: string, ratio: number, warnAt: number): void {
    if (ratio < warnAt) this.warned.delete(pool);
    else if (!this.warned.has(pool)) {
      this.warned.add(pool);
      this.warn(pool, ratio, warnAt);
    }
  }
}

export interface SlotPool {
  /** '' for the process-wide pool, else the route's path. */
  pool: string;
  limits: PoolLimits & { warnAt?: number | undefined };
}

/**
 * Connection slots (total, per IP, per user) in every pool the route counts in, taken together or not at
 * all; the lease is given back when the connection ends (or its dial fails).
 */
export function connectionSlotsPolicy(store: LimitStore, pools: readonly SlotPool[], warnings: SlotWarnings): Policy {
  const requests = pools.map(({ pool, limits }) => ({ pool, limits }));
  const warnAt = new Map(pools.map(({ pool, limits }) => [pool, limits.warnAt ?? 1]));
  return {
    name: 'connection-slots',
    async onHandshake(ctx) {
      const verdict = await store.acquireSlots(requests, ctx.ip, ctx.user);
      if (!verdict.ok) throw new GuardError(SLOT_REFUSALS[verdict.refused], undefined, { 'Retry-After': SLOT_RETRY_AFTER_S });
      ctx.releases.push(() => verdict.lease.release());
      for (const { pool, ratio } of verdict.usage) warnings.observe(pool, ratio, warnAt.get(pool) ?? 1);
    },
  };
}
