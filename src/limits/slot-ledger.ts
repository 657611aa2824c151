/**
 * The connection slots this replica holds, by counter: what it has told the shared store, and what it
 * would write back if the store lost it. While the store cannot be reached, the same counts are this
 * replica's own limits (`onError: local`).
 */
export class SlotLedger {
  private readonly counts = new Map<string, number>();

  /** The index of the first counter already at its cap, or -1 when every one has room. */
  full(counters: readonly { key: string; cap: number }[]): number {
    return counters.findIndex(({ key, cap }) => (this.counts.get(key) ?? 0) >= cap);
  }

  add(keys: readonly string[]): void {
    for (const key of keys) this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
  }

  remove(keys: readonly string[]): void {
    for (const key of keys) {
      const n = (this.counts.get(key) ?? 0) - 1;
      if (n > 0) this.counts.set(key, n);
      else this.counts.delete(key);
    }
  }

  count(key: string): number {
    return this.counts.get(key) ?? 0;
  }

  /** Counter, count pairs flattened, as a script takes them. */
  flatten(): (string | number)[] {
    const out: (string | number)[] = [];
    for (const [key, n] of this.counts) out.push(key, n);
    return out;
  }

  get size(): number {
    return this.counts.size;
  }
}
