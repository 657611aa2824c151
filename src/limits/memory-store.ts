import type { Rate } from '../config/units.js';
import { TokenBucket } from './bucket.js';
import type { LimitStore, SharedBucket, SlotRequest, SlotVerdict } from './store.js';

interface Pool {
  total: number;
  perIp: Map<string, number>;
  perUser: Map<string, number>;
}

/** Handshake buckets are forgotten once full again; this many trigger an early sweep. */
const SWEEP_AT = 50_000;

function bump(map: Map<string, number>, key: string, by: number): void {
  const n = (map.get(key) ?? 0) + by;
  if (n <= 0) map.delete(key);
  else map.set(key, n);
}

/** The default store: exact counts for one process, synchronous under the hood. */
export class MemoryStore implements LimitStore {
  private readonly pools = new Map<string, Pool>();
  private readonly handshakes = new Map<string, TokenBucket>();
  private readonly shared = new Map<string, { bucket: TokenBucket; users: number }>();
  private readonly now: () => number;
  private readonly sweeper: NodeJS.Timeout;

  constructor(now: () => number = Date.now) {
    this.now = now;
    this.sweeper = setInterval(() => this.sweep(), 60_000);
    this.sweeper.unref();
  }

  private pool(name: string): Pool {
    let pool = this.pools.get(name);
    if (pool === undefined) {
      pool = { total: 0, perIp: new Map(), perUser: new Map() };
      this.pools.set(name, pool);
    }
    return pool;
  }

  async acquireSlots(requests: readonly SlotRequest[], ip: string, user: string | undefined): Promise<SlotVerdict> {
    // Check every pool before taking from any, so a refusal leaves no slot behind.
    for (const { pool: name, limits } of requests) {
      const pool = this.pool(name);
      if (limits.total !== undefined && pool.total >= limits.total) return { ok: false, refused: 'total' };
      if (limits.perIp !== undefined && (pool.perIp.get(ip) ?? 0) >= limits.perIp) return { ok: false, refused: 'perIp' };
      if (limits.perUser !== undefined && user !== undefined && (pool.perUser.get(user) ?? 0) >= limits.perUser) {
        return { ok: false, refused: 'perUser' };
      }
    }
    const taken = requests.map(({ pool: name }) => this.pool(name));
    for (const pool of taken) {
      pool.total++;
      bump(pool.perIp, ip, 1);
      if (user !== undefined) bump(pool.perUser, user, 1);
    }
    let released = false;
    return {
      ok: true,
      usage: requests.map(({ pool, limits }, i) => ({ pool, ratio: limits.total ? taken[i]!.total / limits.total : 0 })),
      lease: {
        release: () => {
          if (released) return;
          released = true;
          for (const pool of taken) {
            pool.total--;
            bump(pool.perIp, ip, -1);
            if (user !== undefined) bump(pool.perUser, user, -1);
          }
        },
      },
    };
  }

  async takeHandshake(key: string, rate: Rate, burst: number): Promise<number> {
    const now = this.now();
    let bucket = this.handshakes.get(key);
    if (bucket === undefined) {
      if (this.handshakes.size >= SWEEP_AT) this.sweep();
      bucket = new TokenBucket(rate, burst, now);
      this.handshakes.set(key, bucket);
    }
    return bucket.take(now) ? 0 : bucket.waitMs(now);
  }

  sharedBucket(key: string, rate: Rate, burst: number): SharedBucket {
    let entry = this.shared.get(key);
    if (entry === undefined) {
      entry = { bucket: new TokenBucket(rate, burst, this.now()), users: 0 };
      this.shared.set(key, entry);
    }
    entry.users++;
    const { bucket } = entry;
    let released = false;
    return {
      take: (now) => bucket.take(now),
      waitMs: (now) => bucket.waitMs(now),
      release: () => {
        if (released) return;
        released = true;
        // The last connection of a user keeps its bucket until it is full again: reconnecting must not reset it.
        entry.users--;
      },
    };
  }

  /** Forgets buckets nobody would notice losing: full handshake buckets, shared buckets unused and full. */
  private sweep(): void {
    const now = this.now();
    for (const [key, bucket] of this.handshakes) if (bucket.isFull(now)) this.handshakes.delete(key);
    for (const [key, entry] of this.shared) if (entry.users === 0 && entry.bucket.isFull(now)) this.shared.delete(key);
  }

  /** Pool counts, for tests and the usage gauge. */
  count(pool = ''): { total: number; ips: number; users: number } {
    const p = this.pools.get(pool);
    return { total: p?.total ?? 0, ips: p?.perIp.size ?? 0, users: p?.perUser.size ?? 0 };
  }

  close(): void {
    clearInterval(this.sweeper);
  }
}
