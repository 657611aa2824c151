import type { TokenBucket } from './bucket.js';
import type { SharedBucket } from './store.js';

/** The shared store's answer to a lease: tokens granted, tokens left there (below zero: a debt), when one is due. */
export interface Leased {
  granted: number;
  tokens: number;
  waitMs: number;
}

export interface LeaseOptions {
  /** Tokens this replica may use ahead of the shared store: held in advance plus passed on credit (store.batch). */
  batch: number;
  /** Reports `spent` tokens used on credit and asks for up to `want` more to hold. */
  lease: (spent: number, want: number) => Promise<Leased>;
  /** False while the shared store cannot be reached: this replica's own bucket decides meanwhile. */
  remote: () => boolean;
  /** This replica's own bucket for the same key, used while `remote()` is false. */
  fallback: TokenBucket;
  /** A lease that failed (the store then switches to its onError mode). */
  failed: (err: unknown) => void;
  now?: () => number;
}

/**
 * A message-rate bucket shared across replicas (limits.messages per user or ip) with no network round
 * trip per message. Each replica holds up to half of `batch` tokens leased from the shared store in
 * advance and asks for more when half of those are used; when it holds none (a burst outran the lease),
 * it passes up to the other half on credit and reports them with its next lease. So a replica is never
 * more than `batch` tokens ahead of the store: over any interval a key passes at most what one bucket
 * would, plus `batch` per replica (docs/scaling.md). One call to the store serves a quarter of `batch`
 * messages or more.
 *
 * When the store has said the bucket is empty, messages are refused until it says a token is due again.
 * When the replica holds nothing and its credit is used up while a lease is on its way, the answer is
 * "not yet" (`undecided`): the session stops reading the client for a moment instead of refusing a
 * message the store may still allow.
 */
export class LeaseBucket implements SharedBucket {
  private held = 0;
  /** Passed on credit, not yet reported. */
  private owed = 0;
  /** Reported by the lease on its way. */
  private reporting = 0;
  private leasing = false;
  private closedUntil = 0;
  private readonly holdCap: number;
  private readonly creditCap: number;
  private readonly now: () => number;
  users = 0;

  constructor(private readonly options: LeaseOptions) {
    this.holdCap = Math.ceil(options.batch / 2);
    this.creditCap = options.batch - this.holdCap;
    this.now = options.now ?? Date.now;
    this.lease();
  }

  take(now: number): boolean {
    if (!this.options.remote()) return this.options.fallback.take(now);
    if (this.held > 0) {
      this.held--;
      if (this.held <= this.holdCap / 2) this.lease();
      return true;
    }
    if (now < this.closedUntil) return false;
    if (this.owed + this.reporting >= this.creditCap) {
      this.lease();
      return false;
    }
    this.owed++;
    this.lease();
    return true;
  }

  waitMs(now: number): number {
    if (!this.options.remote()) return this.options.fallback.waitMs(now);
    if (this.held > 0) return 0;
    if (now < this.closedUntil) return this.closedUntil - now;
    return this.undecided(now) ? 1 : 0;
  }

  /** True when a refusal only means "the store has not answered the lease on its way yet". */
  undecided(now: number): boolean {
    return this.options.remote() && this.held === 0 && now >= this.closedUntil && this.owed + this.reporting >= this.creditCap;
  }

  release(): void {
    this.users--;
  }

  /** Nobody uses it and nothing is on its way: forgetting it drops at most the tokens it holds. */
  idle(): boolean {
    return this.users <= 0 && this.owed === 0 && !this.leasing;
  }

  /** One lease at a time: what was passed on credit meanwhile goes with the next. */
  private lease(): void {
    if (this.leasing || !this.options.remote()) return;
    const want = this.now() < this.closedUntil ? 0 : this.holdCap - this.held;
    if (want <= 0 && this.owed === 0) return;
    this.leasing = true;
    this.reporting = this.owed;
    this.owed = 0;
    let answer: Promise<Leased>;
    try {
      answer = this.options.lease(this.reporting, want);
    } catch (err) {
      answer = Promise.reject(err);
    }
    answer.then(
      ({ granted, tokens, waitMs }) => {
        this.leasing = false;
        this.reporting = 0;
        this.held += granted;
        // Messages passed on credit while this lease was on its way are paid from it first: tokens the
        // store has already counted, so no debt is reported where there was none.
        const paid = Math.min(this.held, this.owed);
        this.held -= paid;
        this.owed -= paid;
        this.closedUntil = tokens < 1 ? this.now() + waitMs : 0;
        if (this.owed > 0 || (this.closedUntil === 0 && this.held <= this.holdCap / 2)) this.lease();
      },
      (err: unknown) => {
        // The messages passed; the store's count of them is lost with the call (it refills meanwhile).
        this.leasing = false;
        this.reporting = 0;
        this.owed = 0;
        this.options.failed(err);
      },
    );
  }
}
