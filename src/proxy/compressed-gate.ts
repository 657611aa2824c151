import type { CloseReason } from '../errors.js';
import { InflateCounter } from '../frames/inflate-counter.js';
import { compressedAllowance } from '../frames/inspector.js';
import type { HoldBudget } from '../limits/hold-budget.js';

export interface GateOptions {
  /** `limits.messageSize`: the most a message may inflate to. */
  maxMessageBytes: number;
  /** The 101 negotiated client_no_context_takeover: each client message is compressed on its own. */
  noContextTakeover: boolean;
  /** The process-wide budget for held compressed messages (`limits.holdBudget`). */
  budget: HoldBudget;
  /** The budget has room again after `hold` asked to stop reading the client. */
  onBudgetFreed: () => void;
  /** The gate refuses a message: the connection is closed with this reason. */
  refuse: (reason: CloseReason, detail: string) => void;
}

/**
 * The compressed-message gate of the client's direction. A compressed message goes on only once it is known
 * to inflate within `messageSize` (design.md §2), so a deflate bomb never reaches the upstream: its frames
 * are held, as the chunks they came in, until the last one is in and a copy of its payload has been inflated
 * into a counting sink (inflate-counter.ts); then the original compressed bytes go on. What is held counts
 * against the process's hold budget.
 */
export class CompressedGate {
  private readonly counter: InflateCounter;
  private readonly cap: number;
  private readonly budget: HoldBudget;
  private readonly refuse: (reason: CloseReason, detail: string) => void;
  /** The held message, as the chunks it came in, and its length. */
  private chunks: Buffer[] | null = null;
  private heldBytes = 0;
  /** Waiting for the budget to have room: one function for the life of the gate (the budget knows waiters by it). */
  private awaitingBudget = false;
  private readonly budgetFreed: () => void;

  constructor(options: GateOptions) {
    this.counter = new InflateCounter(options.maxMessageBytes, options.noContextTakeover);
    // Control frames interleaved in a fragmented message get 64 KiB on top, then the message is refused.
    this.cap = compressedAllowance(options.maxMessageBytes) + 65_536;
    this.budget = options.budget;
    this.refuse = options.refuse;
    this.budgetFreed = () => {
      this.awaitingBudget = false;
      options.onBudgetFreed();
    };
  }

  /** A message (or its start) is held. */
  get holding(): boolean {
    return this.chunks !== null;
  }

  /** The unmasked payload of the held message, for the inflated-size count (the inspector's `onCompressedPayload`). */
  readonly inflate = (payload: Buffer): void => this.counter.write(payload);

  /**
   * Holds bytes of the message; they are the chunk's own, not a copy. True when the process's hold budget is
   * spent and the client must not be read until `onBudgetFreed`.
   */
  hold(bytes: Buffer): boolean {
    const first = this.chunks === null;
    (this.chunks ??= []).push(bytes);
    this.heldBytes += bytes.length;
    this.budget.take(bytes.length, first);
    if (this.heldBytes > this.cap) {
      this.refuse('MESSAGE_TOO_BIG', 'compressed message held past its cap');
      return false;
    }
    // Past the process's budget the client is not read until others give bytes back (backpressure),
    // unless every other holder waits already: then this one goes on, so some message can always end.
    if (!this.budget.exceeded || this.awaitingBudget || !this.budget.wait(this.budgetFreed)) return false;
    this.awaitingBudget = true;
    return true;
  }

  /**
   * The held message is complete: resolves with its chunks once it inflated within `messageSize`, to go on
   * as they are. Null when it was refused (the gate has asked for the close) or dropped meanwhile.
   */
  async measure(): Promise<Buffer[] | null> {
    const verdict = await this.counter.end();
    const chunks = this.chunks;
    if (chunks === null) return null;
    if (verdict !== 'ok') {
      this.refuse(verdict === 'too-big' ? 'MESSAGE_TOO_BIG' : 'INVALID_COMPRESSED', `compressed message ${verdict}`);
      return null;
    }
    this.drop();
    return chunks;
  }

  /**
   * The client closed inside the held message, whose last `closeLength` bytes are that close frame: the
   * message is dropped and the close frame's bytes are returned, as views of the chunks they came in.
   */
  takeClose(closeLength: number): Buffer[] {
    const close: Buffer[] = [];
    const chunks = this.chunks ?? [];
    for (let i = chunks.length - 1, wanted = closeLength; i >= 0 && wanted > 0; i--) {
      const chunk = chunks[i]!;
      close.unshift(chunk.length <= wanted ? chunk : chunk.subarray(chunk.length - wanted));
      wanted -= chunk.length;
    }
    this.drop();
    return close;
  }

  /** The held message is gone (it went on, was refused, or the session ended): its bytes go back to the budget. */
  drop(): void {
    if (this.chunks === null) return;
    this.budget.giveBack(this.heldBytes, this.budgetFreed);
    this.chunks = null;
    this.heldBytes = 0;
    this.awaitingBudget = false;
  }

  /** No client message goes on any more: the copies queued for inflating are dropped, and a pending `measure` never settles. */
  stop(): void {
    this.counter.destroy();
  }
}
