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
});
