import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../test/helpers/manual-clock.js';
import { FrameInspector, STOP } from '../frames/inspector.js';
import { ClosingHandshake } from './closing-handshake.js';

const hex = (text: string) => Buffer.from(text.replace(/\s+/g, ''), 'hex');

/** The part of a socket the handshake uses: what was ended with which frame, and whether it was destroyed. */
class FakeSocket {
  destroyed = false;
  writableEnded = false;
  frame: Buffer | null = null;
  end(frame?: Buffer): void {
    this.frame = frame ?? null;
    this.writableEnded = true;
  }
  destroy(): void {
    this.destroyed = true;
  }
  /** The close code of the frame it was ended with (unmasked first when masked), or null. */
  get closeCode(): number | null {
    const frame = this.frame;
    if (frame === null) return null;
    expect(frame[0]).toBe(0x88);
    if ((frame[1]! & 0x80) === 0) return frame.readUInt16BE(2);
    return ((frame[6]! ^ frame[2]!) << 8) | (frame[7]! ^ frame[3]!);
  }
}

function setup(closeTimeoutMs = 1000) {
  const clock = new ManualClock();
  const client = new FakeSocket();
  const upstream = new FakeSocket();
  const c2u = new FrameInspector({ masked: true, compressed: false });
  const u2c = new FrameInspector({ masked: false, compressed: false });
  const closing = new ClosingHandshake(
    { client: client as unknown as Socket, upstream: upstream as unknown as Socket, c2u, u2c }, closeTimeoutMs, clock,
  );
  return { clock, client, upstream, c2u, u2c, closing };
}

/** An unmasked binary frame of 200 bytes (16-bit length), from the upstream. */
const BIG = Buffer.concat([hex('82 7e 00c8'), Buffer.alloc(200, 1)]);

describe('ClosingHandshake', () => {
  it('a frame paid after a peer closed first carries the guard\'s code, and a second reason does not replace the first', () => {
    const { client, upstream, u2c, c2u, closing } = setup();
    // The client closed first (its close went to the upstream); the upstream is mid-frame when the guard
    // closes for idleness, then again for another reason.
    c2u.feed(hex('88 82 00000000 03e8'));
    u2c.feed(BIG.subarray(0, 100));
    closing.owe(1001, 'idle timeout', false);
    closing.owe(1011, 'internal error', false);
    expect(upstream.frame).toBeNull();
    expect(u2c.feed(BIG.subarray(100))).toBe(STOP);
    closing.payDue();
    expect(client.closeCode).toBe(1001);
  });

  it('writes its close to both sides at once when both directions are between frames (masked toward the upstream)', () => {
    const { client, upstream, closing } = setup();
    closing.owe(1001, 'going away', false);
    expect(client.closeCode).toBe(1001);
    expect(upstream.closeCode).toBe(1001);
    expect(upstream.frame![1]! & 0x80).toBe(0x80);
    expect(client.frame![1]! & 0x80).toBe(0);
    expect(closing.owes).toBe(false);
  });

  it('owes the client its close until the frame in flight has been forwarded whole (RFC 6455 §5.5.1)', () => {
    const { client, upstream, u2c, closing } = setup();
    u2c.feed(BIG.subarray(0, 100));
    closing.owe(1001, 'going away', false);
    expect(upstream.closeCode).toBe(1001);
    expect(client.frame).toBeNull();
    expect(closing.owes).toBe(true);
    expect(u2c.feed(BIG.subarray(100))).toBe(STOP);
    closing.payDue();
    expect(client.closeCode).toBe(1001);
    expect(closing.owes).toBe(false);
  });

  it('sends nothing to a side that sent its own close frame', () => {
    const { client, upstream, u2c, closing } = setup();
    expect(u2c.feed(hex('88 02 03e8'))).toBe(STOP);
    closing.owe(1001, 'going away', false);
    expect(client.frame).toBeNull();
    expect(upstream.closeCode).toBe(1001);
  });

  it('destroys both sockets timeouts.close after the first arming, not before', () => {
    const { clock, client, upstream, closing } = setup(1000);
    closing.armCloseTimer();
    clock.advance(600);
    closing.armCloseTimer();
    clock.advance(399);
    expect(client.destroyed || upstream.destroyed).toBe(false);
    clock.advance(1);
    expect(client.destroyed && upstream.destroyed).toBe(true);
  });

  describe('a fault in the client stream', () => {
    it('lets the upstream settle 100 ms before its close, and the client waits for the upstream close', () => {
      const { clock, client, upstream, c2u, u2c, closing } = setup(1000);
      expect(c2u.feed(hex('81 05 48656c6c6f'))).toBe(STOP);
      closing.owe(1002, 'protocol error', true);
      expect(upstream.frame).toBeNull();
      clock.advance(99);
      expect(upstream.frame).toBeNull();
      clock.advance(1);
      expect(upstream.closeCode).toBe(1002);
      // The upstream's answer still reaches the client; its close frame does not, the guard's goes instead.
      expect(u2c.feed(hex('81 02 6f6b'))).not.toBe(STOP);
      expect(client.frame).toBeNull();
      expect(u2c.feed(hex('88 02 03e8'))).toBe(STOP);
      expect(u2c.accepted).toBe(0);
      closing.payDue();
      expect(client.closeCode).toBe(1002);
    });

    it('settles at most a quarter of timeouts.close', () => {
      const { clock, upstream, c2u, closing } = setup(200);
      c2u.feed(hex('81 05 48656c6c6f'));
      closing.owe(1002, 'protocol error', true);
      clock.advance(49);
      expect(upstream.frame).toBeNull();
      clock.advance(1);
      expect(upstream.closeCode).toBe(1002);
    });

    it('gives a silent upstream half of timeouts.close, then closes the client at the next boundary', () => {
      const { clock, client, c2u, u2c, closing } = setup(1000);
      c2u.feed(hex('81 05 48656c6c6f'));
      u2c.feed(BIG.subarray(0, 50));
      closing.owe(1009, 'message too big', true);
      clock.advance(499);
      expect(client.frame).toBeNull();
      clock.advance(1);
      // Mid-frame: the close waits for the frame's end.
      expect(client.frame).toBeNull();
      expect(u2c.feed(BIG.subarray(50))).toBe(STOP);
      closing.payDue();
      expect(client.closeCode).toBe(1009);
    });
  });

  it('leaves no timer behind once disposed', () => {
    const { clock, c2u, closing } = setup(1000);
    c2u.feed(hex('81 05 48656c6c6f'));
    closing.owe(1002, 'protocol error', true);
    expect(clock.pending).toBe(3);
    closing.dispose();
    expect(clock.pending).toBe(0);
  });
});
