import zlib from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { InflateCounter, type InflateVerdict } from './inflate-counter.js';

// Property: for any sequence of permessage-deflate messages a conforming sender may produce (RFC 7692
// §7.2.1), the counter's verdict is exactly `inflated size <= limit`. The sender uses zlib with every
// flush mode: Z_SYNC_FLUSH and Z_FULL_FLUSH (the 00 00 ff ff tail removed), and Z_FINISH, which ends the
// DEFLATE stream with a BFINAL=1 block (§7.2.3.4) so that the sender must start a new stream, seeded with
// its last 32 KiB under context takeover (§7.2.2 lets it refer back across messages). The compressed data
// reaches the counter in random fragments. WS_GUARD_PROPERTY_SEED replays one run.

const SEED = Number(process.env.WS_GUARD_PROPERTY_SEED ?? 0x7692) >>> 0;
const CONNECTIONS = Number(process.env.WS_GUARD_PROPERTY_CONNECTIONS ?? 60);
const { Z_SYNC_FLUSH, Z_FULL_FLUSH, Z_FINISH } = zlib.constants;
const TAIL = Buffer.from([0x00, 0x00, 0xff, 0xff]);
const WINDOW = 32 * 1024;

/** mulberry32: small, seeded, good enough to pick test cases. */
function prng(seed: number) {
  let a = seed >>> 0;
  const next = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (lo: number, hi: number): number => lo + Math.floor(next() * (hi - lo + 1));
  return {
    int,
    chance: (p: number): boolean => next() < p,
    pick: <T>(items: readonly T[]): T => items[int(0, items.length - 1)]!,
    bytes: (n: number): Buffer => {
      const out = Buffer.allocUnsafe(n);
      for (let i = 0; i < n; i++) out[i] = int(0, 255);
      return out;
    },
  };
}
type Rng = ReturnType<typeof prng>;

/** One permessage-deflate sender: a raw DEFLATE stream, replaced after Z_FINISH ends it. */
class Sender {
  private stream: zlib.DeflateRaw;
  /** Everything this sender compressed that the receiver's window may still hold. */
  private history = Buffer.alloc(0);

  constructor(
    private readonly rng: Rng,
    private readonly windowBits: number,
    private readonly noContextTakeover: boolean,
  ) {
    this.stream = this.open(false);
  }

  private open(withHistory: boolean): zlib.DeflateRaw {
    const options: zlib.ZlibOptions = { windowBits: this.windowBits, level: this.rng.int(0, 9), memLevel: this.rng.int(1, 9) };
    if (withHistory && this.history.length > 0) options.dictionary = this.history;
    return zlib.createDeflateRaw(options);
  }

  private compress(data: Buffer, flush: number): Promise<Buffer> {
    const stream = this.stream;
    return new Promise((resolve, reject) => {
      const out: Buffer[] = [];
      const onData = (c: Buffer) => out.push(c);
      stream.on('data', onData);
      stream.once('error', reject);
      if (data.length > 0) stream.write(data);
      stream.flush(flush, () => {
        stream.off('data', onData);
        stream.off('error', reject);
        resolve(Buffer.concat(out));
      });
    });
  }

  private remember(data: Buffer): void {
    this.history = Buffer.concat([this.history, data]);
    if (this.history.length > WINDOW) this.history = this.history.subarray(this.history.length - WINDOW);
  }

  /** The payload of one message on the wire, and how the sender flushed it (for failure reports). */
  async message(data: Buffer): Promise<{ wire: Buffer; how: string }> {
    if (this.noContextTakeover) {
      this.stream.destroy();
      this.stream = this.open(false);
      this.history = Buffer.alloc(0);
    }
    const how: string[] = [];
    const parts: Buffer[] = [];
    // Mostly one flush per message; sometimes the message is compressed in pieces, a piece possibly
    // ending its own DEFLATE stream (BFINAL) in the middle of the message.
    const pieces = this.rng.chance(0.2) && data.length > 1 ? this.rng.int(2, 4) : 1;
    let at = 0;
    let flush = Z_SYNC_FLUSH;
    for (let p = 0; p < pieces; p++) {
      const piece = data.subarray(at, p === pieces - 1 ? data.length : this.rng.int(at, data.length));
      at += piece.length;
      // A piece before the last keeps its flush output whole (a sync/full flush tail stays on the wire).
      flush = this.rng.pick([Z_SYNC_FLUSH, Z_FULL_FLUSH, Z_FINISH]);
      const out = await this.compress(piece, flush);
      parts.push(out);
      this.remember(piece);
      how.push(`${piece.length}:${flush === Z_FINISH ? 'finish' : flush === Z_FULL_FLUSH ? 'full' : 'sync'}`);
      if (flush === Z_FINISH) {
        // The stream is over; the next one may refer back to what was sent before (RFC 7692 §7.2.2), or not.
        this.stream.destroy();
        this.stream = this.open(this.rng.chance(0.7));
      }
    }
    let wire = Buffer.concat(parts);
    // RFC 7692 §7.2.1: unless the data ends with an empty stored block, append one; remove its last 4 octets.
    // (A repeated sync flush with no new input makes no output at all.)
    const endsWithEmptyBlock = flush !== Z_FINISH && wire.length >= 4 && wire.subarray(-4).equals(TAIL);
    if (endsWithEmptyBlock) wire = wire.subarray(0, wire.length - 4);
    else if (flush !== Z_FINISH || !this.rng.chance(0.1)) wire = Buffer.concat([wire, Buffer.from([0x00])]);
    // else: a sloppy sender that stops right after its final block; receivers tolerate it.
    else how.push('no-empty-block');
    return { wire, how: how.join(' ') };
  }

  destroy(): void {
    this.stream.destroy();
  }
}

function messageData(rng: Rng, limit: number, earlier: Buffer[]): Buffer {
  const size = rng.pick([
    () => 0,
    () => rng.int(1, 64),
    () => rng.int(65, 4096),
    () => rng.int(4097, 70_000),
    () => limit,
    () => limit + 1,
    () => Math.max(0, limit - 1),
    () => rng.int(limit, limit * 3 + 1000),
  ])();
  const kind = rng.int(0, 3);
  if (kind === 0) return rng.bytes(size);
  if (kind === 1) {
    // Compressible: a few words repeated.
    const words = ['guard', 'frame', 'deflate', ' ', '{"id":', '}', '\n', 'window'];
    const out = Buffer.allocUnsafe(size);
    let i = 0;
    while (i < size) i += out.write(rng.pick(words), i);
    return out;
  }
  if (kind === 2) return Buffer.alloc(size, rng.int(0, 255));
  // Repeats earlier messages: back-references across messages (and across a finished stream).
  const source = earlier.length > 0 ? rng.pick(earlier) : Buffer.from('empty history');
  if (source.length === 0) return Buffer.alloc(size, 0x61);
  const out = Buffer.allocUnsafe(size);
  for (let i = 0; i < size; i += source.length) source.copy(out, i, 0, Math.min(source.length, size - i));
  return out;
}

async function feed(counter: InflateCounter, wire: Buffer, rng: Rng): Promise<InflateVerdict> {
  let at = 0;
  while (at < wire.length) {
    const n = rng.chance(0.1) ? 1 : rng.int(1, Math.max(1, Math.min(wire.length - at, rng.pick([3, 100, 5000, 70_000]))));
    counter.write(wire.subarray(at, at + n));
    at += n;
  }
  return counter.end();
}

describe('InflateCounter property: the verdict equals the real inflated size against the limit', () => {
  it(`random senders, flush modes, takeover modes and fragmentations (seed ${SEED})`, async () => {
    const rng = prng(SEED);
    let messages = 0;
    const seen = { finish: 0, oversize: 0, takeover: 0, noTakeover: 0 };
    for (let c = 0; c < CONNECTIONS; c++) {
      const noContextTakeover = c % 2 === 1;
      const limit = rng.pick([0, 1, 100, 4096, 40_000, 65_536]);
      const sender = new Sender(rng, rng.int(9, 15), noContextTakeover);
      const counter = new InflateCounter(limit, noContextTakeover);
      const earlier: Buffer[] = [];
      const log: string[] = [];
      try {
        for (let m = 0; m < 40; m++) {
          // Oversized messages end the connection (the guard closes it), so most messages fit.
          const data = rng.chance(0.85) ? messageData(rng, 0, earlier).subarray(0, limit) : messageData(rng, limit, earlier);
          const { wire, how } = await sender.message(data);
          log.push(`#${m} ${data.length} bytes as ${wire.length} (${how})`);
          const expected: InflateVerdict = data.length <= limit ? 'ok' : 'too-big';
          const verdict = await feed(counter, wire, rng);
          messages++;
          if (how.includes('finish')) seen.finish++;
          if (noContextTakeover) seen.noTakeover++;
          else seen.takeover++;
          if (verdict !== expected) {
            throw new Error(`seed ${SEED}, connection ${c} (limit ${limit}, ${noContextTakeover ? 'client_no_context_takeover' : 'context takeover'}): ` +
              `verdict ${verdict}, expected ${expected}\n${log.join('\n')}`);
          }
          if (verdict === 'too-big') {
            seen.oversize++;
            break;
          }
          earlier.push(data);
          if (earlier.length > 4) earlier.shift();
        }
      } finally {
        counter.destroy();
        sender.destroy();
      }
    }
    // The run covered what it claims to.
    expect(messages).toBeGreaterThan(300);
    expect(seen.finish).toBeGreaterThan(50);
    expect(seen.oversize).toBeGreaterThan(10);
    expect(seen.takeover).toBeGreaterThan(100);
    expect(seen.noTakeover).toBeGreaterThan(100);
  }, 20_000);
});
