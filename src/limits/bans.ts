/**
 * Operator bans (admin `POST /connections/close` with `ban=`): a user or a client address refused new
 * upgrades and requests until a moment passes. In this process only; a shared store (Redis pub/sub) can
 * replay the same `add` calls in every replica later.
 *
 * Memory is bounded: at most `cap` bans are kept; adding one more evicts the ban that ends soonest (the
 * least harmful one to forget), and expired bans are dropped as they are met.
 */
export type BanKind = 'user' | 'ip';

/** The longest ban an operator can set: a ban is an emergency brake, not an access list. */
export const MAX_BAN_MS = 24 * 60 * 60 * 1000;
export const MAX_BANS = 10_000;

export class Bans {
  private readonly until = new Map<string, number>();

  constructor(private readonly cap = MAX_BANS, private readonly now: () => number = Date.now) {}

  /** Bans `key` for `ms` (at most MAX_BAN_MS); a longer ban already in place stays. */
  add(kind: BanKind, key: string, ms: number): void {
    const name = `${kind}:${key}`;
    const end = this.now() + Math.min(ms, MAX_BAN_MS);
    const current = this.until.get(name);
    if (current !== undefined && current >= end) return;
    this.until.delete(name);
    if (this.until.size >= this.cap) this.evict();
    this.until.set(name, end);
  }

  /** How long `key` stays banned, in ms; 0 when it is not. */
  remaining(kind: BanKind, key: string | undefined): number {
    if (key === undefined) return 0;
    const name = `${kind}:${key}`;
    const end = this.until.get(name);
    if (end === undefined) return 0;
    const left = end - this.now();
    if (left > 0) return left;
    this.until.delete(name);
    return 0;
  }

  get size(): number {
    return this.until.size;
  }

  private evict(): void {
    const now = this.now();
    let soonest: string | undefined;
    let soonestEnd = Infinity;
    for (const [name, end] of this.until) {
      if (end <= now) this.until.delete(name);
      else if (end < soonestEnd) {
        soonest = name;
        soonestEnd = end;
      }
    }
    if (this.until.size >= this.cap && soonest !== undefined) this.until.delete(soonest);
  }
}
