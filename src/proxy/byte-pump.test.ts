import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import zlib from 'node:zlib';
import { describe, expect, it, vi } from 'vitest';
import { ManualClock } from '../../test/helpers/manual-clock.js';
import { FrameInspector, MESSAGE_OK, type MessageLimits } from '../frames/inspector.js';
import { HoldBudget } from '../limits/hold-budget.js';
import { BytePump } from './byte-pump.js';
import { CompressedGate } from './compressed-gate.js';

/** The part of a socket a pump uses: 'data' and 'drain', writes (refused past `full`), pause and resume. */
class FakeSocket extends EventEmitter {
  destroyed = false;
  paused = false;
  full = false;
  written: Buffer[] = [];
  write(bytes: Buffer): boolean {
    this.written.push(bytes);
    return !this.full;
  }
  pause(): this {
    this.paused = true;
    return this;
  }
  resume(): this {
    this.paused = false;
    return this;
  }
  /** Nothing was buffered before the pump started. */
  read(): null {
    return null;
  }
  get sent(): Buffer {
    return Buffer.concat(this.written);
  }
}

/** A masked client frame with an all-zero key (so the payload reads as it is). */
function masked(b0: number, payload: Buffer | string): Buffer {
  const body = Buffer.from(payload);
  return Buffer.concat([Buffer.from([b0, 0x80 | body.length, 0, 0, 0, 0]), body]);
}

function setup(limits?: Partial<MessageLimits>, compressed = false) {
  const clock = new ManualClock();
  const from = new FakeSocket();
  const to = new FakeSocket();
  const stops: BytePump[] = [];
  const faults: unknown[] = [];
  let pump: BytePump | undefined;
  const gate = compressed
    ? new CompressedGate({
      maxMessageBytes: 1000, noContextTakeover: false, budget: new HoldBudget(1 << 20),
      onBudgetFreed: () => pump!.budgetFreed(), refuse: () => {},
    })
    : null;
  const inspector = new FrameInspector({
    masked: true,
    compressed,
    limits: { maxMessageBytes: Infinity, maxFragments: Infinity, onMessageStart: null, onControlFrame: null, onCompressedPayload: gate?.inflate ?? null, ...limits },
  });
  pump = new BytePump('client', from as unknown as Socket, to as unknown as Socket, inspector, gate, clock, {
    pumpStopped: (p) => stops.push(p),
    pumpFailed: (err) => faults.push(err),
  });
  pump.start(Buffer.alloc(0));
  return { clock, from, to, pump, inspector, stops, faults };
}

describe('BytePump', () => {
  it('writes the chunk it read, the same Buffer, when all of it goes on', () => {
    const { from, to } = setup();
    const chunk = Buffer.concat([masked(0x81, 'one'), masked(0x81, 'two')]);
    from.emit('data', chunk);
    expect(to.written).toHaveLength(1);
    expect(to.written[0]).toBe(chunk);
  });

  it('writes a header held across reads in front of the chunk that completes it', () => {
    const { from, to } = setup();
    const frame = masked(0x82, 'abc');
    from.emit('data', frame.subarray(0, 3));
    expect(to.written).toHaveLength(0);
    from.emit('data', frame.subarray(3));
    expect(to.sent.equals(frame)).toBe(true);
  });

  it('stops reading while the other socket is full, and reads again on its drain', () => {
    const { from, to } = setup();
    to.full = true;
    from.emit('data', masked(0x81, 'x'));
    expect(from.paused).toBe(true);
    to.full = false;
    to.emit('drain');
    expect(from.paused).toBe(false);
  });

  it('throttle: keeps the message that waits for its token, unread further, and feeds it when the wait is over', () => {
    const tokens = [MESSAGE_OK, 50, MESSAGE_OK];
    const { clock, from, to } = setup({ onMessageStart: () => tokens.shift()! });
    const [one, two] = [masked(0x81, 'one'), masked(0x81, 'two')];
    from.emit('data', Buffer.concat([one, two]));
    expect(to.sent.equals(one)).toBe(true);
    expect(from.paused).toBe(true);
    // A drain does not read on while a message waits.
    to.emit('drain');
    expect(from.paused).toBe(true);
    clock.advance(49);
    expect(to.sent.equals(one)).toBe(true);
    clock.advance(1);
    expect(to.sent.equals(Buffer.concat([one, two]))).toBe(true);
    expect(from.paused).toBe(false);
  });

  it('throttle and a full socket: reads again only once both are over', () => {
    const tokens = [MESSAGE_OK, 50, MESSAGE_OK];
    const { clock, from, to } = setup({ onMessageStart: () => tokens.shift()! });
    to.full = true;
    from.emit('data', Buffer.concat([masked(0x81, 'one'), masked(0x81, 'two')]));
    clock.advance(50);
    expect(from.paused).toBe(true);
    to.full = false;
    to.emit('drain');
    expect(from.paused).toBe(false);
  });

  it('STOP: forwards up to the stop, reports it, and nothing after', () => {
    const { from, to, pump, stops } = setup();
    const good = masked(0x81, 'ok');
    const unmasked = Buffer.from([0x81, 0x01, 0x78]);
    from.emit('data', Buffer.concat([good, unmasked, good]));
    expect(to.sent.equals(good)).toBe(true);
    expect(stops).toEqual([pump]);
    expect(pump.inspector.error).toBe('PROTOCOL_VIOLATION');
  });

  it('a fault while handling a chunk is reported, never thrown', () => {
    const { from, faults } = setup({ onMessageStart: () => { throw new Error('boom'); } });
    expect(() => from.emit('data', masked(0x81, 'x'))).not.toThrow();
    expect(faults).toHaveLength(1);
  });

  it('MEASURE: holds a compressed message, unread further, until it is measured; then writes it and reads on', async () => {
    const { from, to } = setup(undefined, true);
    const all = zlib.deflateRawSync(Buffer.from('hello hello hello'), { finishFlush: zlib.constants.Z_SYNC_FLUSH });
    const compressed = masked(0xc1, all.subarray(0, all.length - 4));
    const plain = masked(0x81, 'after');
    // Buffer.alloc never comes from the pool: a view of it is the only way to share its memory.
    const stream = Buffer.concat([masked(0x81, 'before'), compressed, plain]);
    const chunk = Buffer.alloc(stream.length);
    stream.copy(chunk);
    from.emit('data', chunk);
    expect(to.sent.equals(masked(0x81, 'before'))).toBe(true);
    expect(from.paused).toBe(true);
    await vi.waitFor(() => expect(from.paused).toBe(false));
    expect(to.sent.equals(chunk)).toBe(true);
    // Nothing was copied: every write is a view of the chunk that was read.
    for (const bytes of to.written) expect(bytes.buffer).toBe(chunk.buffer);
  });

  it('a guard close while a compressed message is measured drops it and what followed it, and reads the source again', () => {
    const { from, to, pump } = setup(undefined, true);
    const all = zlib.deflateRawSync(Buffer.from('hello hello hello'), { finishFlush: zlib.constants.Z_SYNC_FLUSH });
    const before = masked(0x81, 'before');
    from.emit('data', Buffer.concat([before, masked(0xc1, all.subarray(0, all.length - 4)), masked(0x81, 'after')]));
    expect(from.paused).toBe(true);
    pump.abandonHeldMessage();
    expect(from.paused).toBe(false);
    from.emit('data', masked(0x81, 'later'));
    expect(to.sent.equals(before)).toBe(true);
  });

  it('a close between the fragments of a held compressed message goes on by itself, however the stream is split', () => {
    const deflated = zlib.deflateRawSync(Buffer.from('hello hello hello'), { finishFlush: zlib.constants.Z_SYNC_FLUSH });
    const first = masked(0x41, deflated.subarray(0, 4));
    const close = masked(0x88, Buffer.from([0x03, 0xe8, 0x62, 0x79, 0x65]));
    const stream = Buffer.concat([first, close]);
    for (let at = 0; at <= stream.length; at++) {
      const { from, to, pump, stops } = setup(undefined, true);
      from.emit('data', stream.subarray(0, at));
      if (at < stream.length) from.emit('data', stream.subarray(at));
      expect(to.sent.equals(close), `split at ${at}`).toBe(true);
      expect(stops).toEqual([pump]);
      expect(pump.inspector.closeCode).toBe(1000);
      expect(from.paused).toBe(false);
    }
  });
});
