/**
 * The process-wide budget for bytes the guard holds back: compressed client messages wait, whole, until
 * their inflated size is measured (design.md §2), and without a budget every connection could make the
 * guard hold about twice `messageSize`. Past the budget, a connection that wants to hold more stops being
 * read (TCP backpressure) until others give bytes back.
 *
 * Bytes already read are always accepted (they cannot be un-read), so the total may pass the limit by at
 * most one read per connection (64 KiB). Progress is guaranteed: were every holder waiting, none could
 * ever finish its message, so one of them (the one that would wait last, or the oldest waiter once the
 * others are gone) goes on alone, up to its own message's cap. The worst case is therefore
 * limit + connections × 64 KiB + one message's cap (docs/limits.md).
 */
export class HoldBudget {
  private used = 0;
  /** Connections holding at least one byte. */
  private holders = 0;
  /** Paused connections, oldest first, each with the function that reads it again. */
  private readonly waiting = new Set<() => void>();

  constructor(public limit: number) {}

  /** Bytes held now, all connections together. */
  get held(): number {
    return this.used;
  }

  get exceeded(): boolean {
    return this.used > this.limit;
  }

  /** A connection holds `bytes` more; `first` when it held nothing before. */
  take(bytes: number, first: boolean): void {
    this.used += bytes;
    if (first) this.holders++;
  }

  /** A connection gives back everything it held (its message went on, was refused, or it closed). */
  giveBack(bytes: number, resume: () => void): void {
    this.waiting.delete(resume);
    if (bytes === 0) return;
    this.used -= bytes;
    this.holders--;
    this.wake();
  }

  /**
   * Pauses a connection until there is room: `resume` is called then. False when it must go on instead,
   * because every other connection holding bytes is waiting already.
   */
  wait(resume: () => void): boolean {
    if (this.waiting.size + 1 >= this.holders) return false;
    this.waiting.add(resume);
    return true;
  }

  /** Reads waiting connections again, oldest first: all that fit, or the oldest alone if nobody else is being read. */
  private wake(): void {
    for (const resume of this.waiting) {
      if (this.exceeded && this.waiting.size < this.holders) return;
      this.waiting.delete(resume);
      resume();
    }
  }
}
