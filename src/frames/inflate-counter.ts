import zlib from 'node:zlib';

/** RFC 7692 §7.2.2: the sender strips this tail from each message; the receiver appends it back. */
const TAIL = Buffer.from([0x00, 0x00, 0xff, 0xff]);
/** The LZ77 window of DEFLATE (RFC 1951 §2): no distance reaches further back, whatever window bits were negotiated. */
const WINDOW = 32 * 1024;
/**
 * Final blocks one message may contain. A conforming sender ends a message with at most one (RFC 7692
 * §7.2.3.4); each costs a new zlib stream (~50 µs), so a message of thousands of 2-byte final blocks would
 * take seconds to measure. Past this many the message is refused as invalid.
 */
const MAX_STREAMS_PER_MESSAGE = 16;
/** Marks the end of a message in the input queue. */
const END = Symbol('end of message');

export type InflateVerdict = 'ok' | 'too-big' | 'invalid';

/**
 * Measures how big permessage-deflate messages become once inflated, without keeping the output: the
 * inflated bytes are counted and dropped. It follows the connection's compression context (RFC 7692
 * §7.2.3), so every message of a connection goes through it in order. A 32 KiB window inflates any
 * negotiated client_max_window_bits.
 *
 * A sender may end a message's DEFLATE data with a final block (BFINAL=1, RFC 7692 §7.2.3.4). zlib ends
 * the stream there, so what follows — the rest of the message, the appended tail, and later messages —
 * is inflated as a new raw DEFLATE stream whose dictionary is the last 32 KiB inflated so far: under
 * context takeover the next message may still refer to the previous ones (§7.2.2), and inside one
 * message the data after the final block continues the same message. A stream that does not refer back
 * inflates the same with or without that dictionary, so the size is exact either way.
 */
export class InflateCounter {
  private inflater: zlib.InflateRaw;
  private readonly cap: number;
  private readonly noContextTakeover: boolean;
  /** Payload chunks and message ends not yet handed to the inflater; one write is in flight at a time. */
  private readonly queue: (Buffer | typeof END)[] = [];
  private busy = false;
  /** The last WINDOW bytes inflated (a ring, allocated on first use): the dictionary of a new stream. */
  private window: Buffer | null = null;
  private windowEnd = 0;
  private windowFull = false;
  private count = 0;
  /** DEFLATE streams the current message ended (final blocks). */
  private streams = 0;
  private verdict: InflateVerdict = 'ok';
  private readonly settles: ((verdict: InflateVerdict) => void)[] = [];

  constructor(cap: number, noContextTakeover: boolean) {
    this.cap = cap;
    this.noContextTakeover = noContextTakeover;
    this.inflater = this.open(null);
  }

  /** Compressed (already unmasked) payload bytes of the current message. */
  write(payload: Buffer): void {
    if (this.verdict !== 'ok' || payload.length === 0) return;
    this.queue.push(payload);
    this.pump();
  }

  /** The message is complete: resolves with its verdict once all of it is inflated. */
  end(): Promise<InflateVerdict> {
    if (this.verdict !== 'ok') return Promise.resolve(this.verdict);
    return new Promise((resolve) => {
      this.settles.push(resolve);
      this.queue.push(TAIL, END);
      this.pump();
    });
  }

  /** The connection is gone: nothing more is inflated, and a pending `end` never settles. */
  destroy(): void {
    if (this.verdict === 'ok') this.verdict = 'invalid';
    this.queue.length = 0;
    this.inflater.destroy();
  }

  private open(dictionary: Buffer | null): zlib.InflateRaw {
    const inflater = zlib.createInflateRaw(dictionary === null ? { windowBits: 15 } : { windowBits: 15, dictionary });
    inflater.on('data', (chunk: Buffer) => {
      if (inflater !== this.inflater) return;
      this.count += chunk.length;
      // A deflate bomb stops here: nothing past the cap is inflated.
      if (this.count > this.cap) return this.fail('too-big');
      this.remember(chunk);
    });
    inflater.on('error', () => {
      if (inflater === this.inflater) this.fail('invalid');
    });
    return inflater;
  }

  /** Hands the next queued chunk to the inflater, once the previous one is fully inflated. */
  private pump(): void {
    if (this.busy || this.verdict !== 'ok') return;
    const next = this.queue.shift();
    if (next === undefined) return;
    if (next === END) {
      if (this.inflater.readableLength === 0) return this.finishMessage();
      // Output not yet emitted is not counted yet: look again once it is.
      this.queue.unshift(END);
      this.busy = true;
      setImmediate(() => {
        this.busy = false;
        this.pump();
      });
      return;
    }
    const inflater = this.inflater;
    const before = inflater.bytesWritten;
    this.busy = true;
    inflater.write(next, () => {
      if (inflater !== this.inflater || this.verdict !== 'ok') return;
      const consumed = inflater.bytesWritten - before;
      if (consumed === next.length) {
        this.busy = false;
        return this.pump();
      }
      // The data ended its DEFLATE stream (a BFINAL block) before this chunk did: zlib will take no more.
      // The one exception: a message whose data stops right at its final block (without the empty block
      // RFC 7692 §7.2.1 asks for after it) leaves only the appended tail, which is no DEFLATE data: dropped.
      const rest = next === TAIL ? null : next.subarray(consumed);
      const restart = () => this.restart(rest);
      if (inflater.readableEnded) restart();
      else inflater.once('end', restart);
    });
  }

  /**
   * The current stream ended inside the message (all its output counted); `rest` is the input it did not
   * take. What follows is a new stream that continues from the same window.
   */
  private restart(rest: Buffer | null): void {
    if (this.verdict !== 'ok') return;
    if (++this.streams > MAX_STREAMS_PER_MESSAGE) return this.fail('invalid');
    this.inflater.destroy();
    this.inflater = this.open(this.dictionary());
    this.busy = false;
    if (rest !== null) this.queue.unshift(rest);
    this.pump();
  }

  private finishMessage(): void {
    this.count = 0;
    this.streams = 0;
    if (this.noContextTakeover) {
      // RFC 7692 §7.2.2: each message starts with an empty window.
      this.windowEnd = 0;
      this.windowFull = false;
      this.inflater.reset();
    }
    this.settles.shift()?.('ok');
    this.pump();
  }

  /** Keeps the last WINDOW inflated bytes. */
  private remember(chunk: Buffer): void {
    const window = (this.window ??= Buffer.allocUnsafe(WINDOW));
    let data = chunk;
    if (data.length >= WINDOW) {
      data.copy(window, 0, data.length - WINDOW);
      this.windowEnd = 0;
      this.windowFull = true;
      return;
    }
    const first = Math.min(data.length, WINDOW - this.windowEnd);
    data.copy(window, this.windowEnd, 0, first);
    data = data.subarray(first);
    this.windowEnd += first;
    if (this.windowEnd === WINDOW) {
      this.windowEnd = 0;
      this.windowFull = true;
    }
    if (data.length > 0) {
      data.copy(window, 0);
      this.windowEnd = data.length;
    }
  }

  /** The remembered window in order, or null when nothing was inflated (in this message, without takeover). */
  private dictionary(): Buffer | null {
    const window = this.window;
    if (window === null) return null;
    if (!this.windowFull) return this.windowEnd === 0 ? null : Buffer.from(window.subarray(0, this.windowEnd));
    return Buffer.concat([window.subarray(this.windowEnd), window.subarray(0, this.windowEnd)]);
  }

  private fail(verdict: InflateVerdict): void {
    if (this.verdict !== 'ok') return;
    this.verdict = verdict;
    this.queue.length = 0;
    this.inflater.destroy();
    for (const settle of this.settles.splice(0)) settle(verdict);
  }
}
