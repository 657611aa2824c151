import type { TokenBucket } from './bucket.js';
import type { SharedBucket } from './store.js';

/** What the shared store answered for tokens spent: those left (below zero: a debt) and when one is due. */
export interface Spent {
  tokens: number;
  waitMs: number;
}

export interface CreditOptions {
  /** Messages this replica may pass before the store has confirmed them (store.batch). */
  batch: number;
  /** Subtracts `n` spent tokens in the shared store. */
  spend: (n: number) => Promise<Spent>;
  /** False while the shared store cannot be reached: this replica's own bucket decides meanwhile. */
  remote: () => boolean;
  /** This replica's own bucket for the same key, used while `remote()` is false. */
  fallback: TokenBucket;
  /** A spend that failed (the store then switches to its onError mode). */
  failed: (err: unknown) => void;
  /** Runs `fn` once the current batch of reads is handled, so messages read together are spent together. */
  defer?: (fn: () => void) => void;
  now?: () => number;
}

/**
 * A message-rate bucket shared across replicas (limits.messages per user or ip) without a network round
 * trip per message. A message is passed on credit and the credit is spent in the shared store afterwards,
 * in batches; at most `batch` messages are unconfirmed per replica at any moment. When the store answers
 * that no token is left (or that the bucket is in debt), this replica refuses until the store says one is
 * due again. Over any interval a key therefore passes at most what one bucket would, plus `batch` per
 * replica: the tokens a replica passed on credit but had not yet had confirmed (docs/scaling.md).
 *
 * When `batch` messages are unconfirmed the answer is "not yet": the session stops reading the client for
 * a moment instead of refusing a message the store may still allow.
 */
export class CreditBucket implements SharedBucket {
  private owed = 0;
  private inFlight = 0;
  private closedUntil = 0;
  private flushQueued = false;
  users = 0;
  private readonly defer: (fn: () => void) => void;
  private readonly now: () => number;

  constructor(private readonly options: CreditOptions) {
    this.defer = options.defer ?? ((fn) => setImmediate(fn));
    this.now = options.now ?? Date.now;
  }

  take(now: number): boolean {
    if (!this.options.remote()) return this.options.fallback.take(now);
    if (now < this.closedUntil || this.owed + this.inFlight >= this.options.batch) return false;
    this.owed++;
    this.queueFlush();
    return true;
  }

  waitMs(now: number): number {
    if (!this.options.remote()) return this.options.fallback.waitMs(now);
    if (now < this.closedUntil) return this.closedUntil - now;
    return this.undecided(now) ? 1 : 0;
  }

  /** True when a refusal only means "the store has not confirmed the last batch yet". */
  undecided(now: number): boolean {
    return this.options.remote() && now >= this.closedUntil && this.owed + this.inFlight >= this.options.batch;
  }

  release(): void {
    this.users--;
  }

  /** Nothing unconfirmed and nobody using it: forgetting it loses nothing the store does not keep. */
  idle(): boolean {
    return this.users <= 0 && this.owed === 0 && this.inFlight === 0 && !this.flushQueued;
  }

  private queueFlush(): void {
    if (this.flushQueued || this.inFlight > 0) return;
    this.flushQueued = true;
    this.defer(() => {
      this.flushQueued = false;
      this.flush();
    });
  }

  private flush(): void {
    const n = this.owed;
    if (n === 0) return;
    this.owed = 0;
    this.inFlight = n;
    let spent: Promise<Spent>;
    try {
      spent = this.options.spend(n);
    } catch (err) {
      spent = Promise.reject(err);
    }
    spent.then(
      ({ tokens, waitMs }) => {
        this.inFlight = 0;
        this.closedUntil = tokens < 1 ? this.now() + waitMs : 0;
        if (this.owed > 0) this.queueFlush();
      },
      (err: unknown) => {
        // The messages passed; the store's count of them is lost with the call (reconciled by the refill).
        this.inFlight = 0;
        this.owed = 0;
        this.options.failed(err);
      },
    );
  }
}
