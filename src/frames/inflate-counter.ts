import zlib from 'node:zlib';

/** RFC 7692 §7.2.2: the sender strips this tail from each message; the receiver appends it back. */
const TAIL = Buffer.from([0x00, 0x00, 0xff, 0xff]);

export type InflateVerdict = 'ok' | 'too-big' | 'invalid';

/**
 * Measures how big permessage-deflate messages become once inflated, without keeping the output: the
 * inflated bytes are counted and dropped. It follows the connection's compression context (RFC 7692
 * §7.2.3), so every message of a connection goes through it in order. A 32 KiB window inflates any
 * negotiated client_max_window_bits.
 */
export class InflateCounter {
  private readonly inflater = zlib.createInflateRaw({ windowBits: 15 });
  private readonly cap: number;
  private readonly noContextTakeover: boolean;
  private count = 0;
  private verdict: InflateVerdict = 'ok';
  private settle: ((verdict: InflateVerdict) => void) | null = null;

  constructor(cap: number, noContextTakeover: boolean) {
    this.cap = cap;
    this.noContextTakeover = noContextTakeover;
    this.inflater.on('data', (chunk: Buffer) => {
      this.count += chunk.length;
      // A deflate bomb stops here: nothing past the cap is inflated.
      if (this.count > this.cap) this.fail('too-big');
    });
    this.inflater.on('error', () => this.fail('invalid'));
  }

  /** Compressed (already unmasked) payload bytes of the current message. */
  write(payload: Buffer): void {
    if (this.verdict === 'ok') this.inflater.write(payload);
  }

  /** The message is complete: resolves with its verdict once all of it is inflated. */
  end(): Promise<InflateVerdict> {
    if (this.verdict !== 'ok') return Promise.resolve(this.verdict);
    return new Promise((resolve) => {
      this.settle = resolve;
      this.inflater.write(TAIL);
      this.inflater.flush(zlib.constants.Z_SYNC_FLUSH, () => {
        if (this.settle === null) return;
        this.settle = null;
        this.count = 0;
        if (this.noContextTakeover) this.inflater.reset();
        resolve(this.verdict);
      });
    });
  }

  destroy(): void {
    this.inflater.destroy();
  }

  private fail(verdict: InflateVerdict): void {
    if (this.verdict !== 'ok') return;
    this.verdict = verdict;
    this.inflater.destroy();
    const settle = this.settle;
    this.settle = null;
    settle?.(verdict);
  }
}
