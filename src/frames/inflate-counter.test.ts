import zlib from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { InflateCounter } from './inflate-counter.js';

/** What a permessage-deflate sender puts on the wire for one message, context kept across calls. */
function deflater() {
  const stream = zlib.createDeflateRaw({ windowBits: 15 });
  return (message: Buffer): Promise<Buffer> =>
    new Promise((resolve) => {
      const out: Buffer[] = [];
      const onData = (c: Buffer) => out.push(c);
      stream.on('data', onData);
      stream.write(message);
      stream.flush(zlib.constants.Z_SYNC_FLUSH, () => {
        stream.off('data', onData);
        const all = Buffer.concat(out);
        resolve(all.subarray(0, all.length - 4));
      });
    });
}

describe('InflateCounter', () => {
  it('passes messages within the cap, following the compression context across messages', async () => {
    const deflate = deflater();
    const counter = new InflateCounter(1000, false);
    for (let i = 0; i < 5; i++) {
      const wire = await deflate(Buffer.alloc(1000, 'a'));
      counter.write(wire.subarray(0, 3));
      counter.write(wire.subarray(3));
      expect(await counter.end()).toBe('ok');
    }
    counter.destroy();
  });

  it('refuses a small compressed message that inflates past the cap (a deflate bomb)', async () => {
    const wire = await deflater()(Buffer.alloc(10 * 1024 * 1024));
    expect(wire.length).toBeLessThan(20 * 1024);
    const counter = new InflateCounter(1024 * 1024, false);
    counter.write(wire);
    expect(await counter.end()).toBe('too-big');
  });

  it('reports corrupt compressed data', async () => {
    const counter = new InflateCounter(1000, true);
    counter.write(Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff]));
    expect(await counter.end()).toBe('invalid');
  });

  describe('a message ending its DEFLATE data with a final block (BFINAL=1, RFC 7692 §7.2.3.4)', () => {
    /** RFC 7692 §7.2.3.4's example: "Hello" in a final block, then the header byte of an empty stored block. */
    const HELLO_FINAL = Buffer.from([0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00]);
    /** A sender's message ending its stream: Z_FINISH output plus the 0x00 RFC 7692 §7.2.1 leaves of an empty block. */
    const finalMessage = (data: Buffer, dictionary?: Buffer) =>
      Buffer.concat([zlib.deflateRawSync(data, dictionary && { dictionary }), Buffer.from([0x00])]);
    const byteByByte = (counter: InflateCounter, wire: Buffer) => {
      for (let i = 0; i < wire.length; i++) counter.write(wire.subarray(i, i + 1));
    };

    it('client_no_context_takeover: the next messages are measured, not refused as invalid', async () => {
      const counter = new InflateCounter(1000, true);
      counter.write(HELLO_FINAL);
      expect(await counter.end()).toBe('ok');
      const deflate = deflater();
      counter.write(await deflate(Buffer.alloc(1000, 'a')));
      expect(await counter.end()).toBe('ok');
      counter.write(HELLO_FINAL);
      expect(await counter.end()).toBe('ok');
      counter.write(zlib.deflateRawSync(Buffer.alloc(1001, 'a')));
      expect(await counter.end()).toBe('too-big');
      counter.destroy();
    });

    it('context takeover: a 2 MiB message after it is still measured and refused past a 64 KiB cap', async () => {
      const counter = new InflateCounter(64 * 1024, false);
      counter.write(HELLO_FINAL);
      expect(await counter.end()).toBe('ok');
      const wire = await deflater()(Buffer.alloc(2 * 1024 * 1024, 'a'));
      expect(wire.length).toBeLessThan(64 * 1024);
      counter.write(wire);
      expect(await counter.end()).toBe('too-big');
    });

    it('context takeover: the next stream may refer back to earlier messages, and is counted exactly', async () => {
      const first = Buffer.from('permessage-deflate keeps its window across messages; '.repeat(40));
      const counter = new InflateCounter(first.length * 3, false);
      for (const split of [false, true]) {
        const wire = finalMessage(first);
        if (split) byteByByte(counter, wire);
        else counter.write(wire);
        expect(await counter.end()).toBe('ok');
      }
      // Three times the first message, compressed against it: a few bytes of back-references only.
      const exact = finalMessage(Buffer.concat([first, first, first]), first);
      expect(exact.length).toBeLessThan(first.length / 4);
      counter.write(exact);
      expect(await counter.end()).toBe('ok');
      counter.write(finalMessage(Buffer.concat([first, first, first, Buffer.from('!')]), first));
      expect(await counter.end()).toBe('too-big');
    });

    it('data after the final block inside one message is a new stream of the same message', async () => {
      const part = Buffer.alloc(600, 'b');
      const streams = Buffer.concat([zlib.deflateRawSync(part), zlib.deflateRawSync(part, { dictionary: part }), Buffer.from([0x00])]);
      for (const [noTakeover, cap, verdict] of [[true, 1200, 'ok'], [false, 1200, 'ok'], [true, 1199, 'too-big']] as const) {
        const counter = new InflateCounter(cap, noTakeover);
        byteByByte(counter, streams);
        expect(await counter.end()).toBe(verdict);
        counter.destroy();
      }
    });

    it('a sender that stops right after its final block (no empty block) is measured, and so is what follows', async () => {
      const counter = new InflateCounter(1000, false);
      counter.write(zlib.deflateRawSync(Buffer.alloc(1000, 'c')));
      expect(await counter.end()).toBe('ok');
      counter.write(await deflater()(Buffer.alloc(1000, 'c')));
      expect(await counter.end()).toBe('ok');
      counter.write(zlib.deflateRawSync(Buffer.alloc(1001, 'c')));
      expect(await counter.end()).toBe('too-big');
    });

    it('refuses as invalid a message of more than 16 final blocks (each costs a new zlib stream)', async () => {
      const empty = zlib.deflateRawSync(Buffer.alloc(0));
      for (const [n, verdict] of [[16, 'ok'], [17, 'invalid'], [100_000, 'invalid']] as const) {
        const counter = new InflateCounter(1000, false);
        const started = performance.now();
        counter.write(Buffer.concat([...Array<Buffer>(n).fill(empty), Buffer.from([0x00])]));
        expect(await counter.end()).toBe(verdict);
        expect(performance.now() - started).toBeLessThan(1000);
        counter.destroy();
      }
    });

    it('garbage after a final block is still invalid', async () => {
      const counter = new InflateCounter(1000, false);
      counter.write(Buffer.concat([zlib.deflateRawSync(Buffer.from('x')), Buffer.from([0xff, 0xff, 0xff, 0xff])]));
      expect(await counter.end()).toBe('invalid');
    });
  });

  it('an empty message (RFC 7692 §7.2.3.6: a single 0x00) counts nothing and keeps the context', async () => {
    const deflate = deflater();
    const counter = new InflateCounter(10, false);
    counter.write(await deflate(Buffer.from('0123456789')));
    expect(await counter.end()).toBe('ok');
    counter.write(Buffer.from([0x00]));
    expect(await counter.end()).toBe('ok');
    counter.write(await deflate(Buffer.from('0123456789')));
    expect(await counter.end()).toBe('ok');
    counter.destroy();
  });
});
