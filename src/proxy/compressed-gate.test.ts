import zlib from 'node:zlib';
import { describe, expect, it } from 'vitest';
import type { CloseReason } from '../errors.js';
import { HoldBudget } from '../limits/hold-budget.js';
import { CompressedGate } from './compressed-gate.js';

/** One permessage-deflate message as a sender puts it on the wire (RFC 7692 §7.2.1: the 00 00 ff ff tail stripped). */
function deflate(message: Buffer): Buffer {
  const all = zlib.deflateRawSync(message, { finishFlush: zlib.constants.Z_SYNC_FLUSH });
  return all.subarray(0, all.length - 4);
}

function gate(maxMessageBytes: number, budget = new HoldBudget(1 << 30)) {
  const refused: [CloseReason, string][] = [];
  let freed = 0;
  const g = new CompressedGate({
    maxMessageBytes, noContextTakeover: false, budget,
    onBudgetFreed: () => freed++,
    refuse: (reason, detail) => refused.push([reason, detail]),
  });
  return { gate: g, budget, refused, freed: () => freed };
}

describe('CompressedGate', () => {
  it('lets a message that inflates within the limit go on as the very chunks it was held in, and gives the budget back', async () => {
    const { gate: g, budget, refused } = gate(1000);
    const wire = deflate(Buffer.alloc(1000, 'a'));
    const chunks = [wire.subarray(0, 2), wire.subarray(2)];
    for (const chunk of chunks) {
      expect(g.hold(chunk)).toBe(false);
      g.inflate(chunk);
    }
    expect(g.holding).toBe(true);
    expect(budget.held).toBe(wire.length);
    const released = await g.measure();
    expect(released).toHaveLength(2);
    expect(released![0]).toBe(chunks[0]);
    expect(released![1]).toBe(chunks[1]);
    expect(g.holding).toBe(false);
    expect(budget.held).toBe(0);
    expect(refused).toEqual([]);
    g.stop();
  });

  it('refuses a message that inflates past the limit (a deflate bomb) and never releases it', async () => {
    const { gate: g, refused } = gate(1024);
    const wire = deflate(Buffer.alloc(1024 * 1024));
    g.hold(wire);
    g.inflate(wire);
    expect(await g.measure()).toBeNull();
    expect(refused).toEqual([['MESSAGE_TOO_BIG', 'compressed message too-big']]);
    g.stop();
  });

  it('refuses a message that does not inflate', async () => {
    const { gate: g, refused } = gate(1024);
    const garbage = Buffer.from([0xff, 0xff, 0xff, 0xff]);
    g.hold(garbage);
    g.inflate(garbage);
    expect(await g.measure()).toBeNull();
    expect(refused).toEqual([['INVALID_COMPRESSED', 'compressed message invalid']]);
    g.stop();
  });

  it('refuses a message held past its cap (twice the limit, plus 64 KiB each for deflate overhead and control frames)', () => {
    const { gate: g, refused } = gate(1000);
    expect(g.hold(Buffer.alloc(2 * 1000 + 65_536 + 65_536))).toBe(false);
    expect(refused).toEqual([]);
    g.hold(Buffer.alloc(1));
    expect(refused).toEqual([['MESSAGE_TOO_BIG', 'compressed message held past its cap']]);
    g.stop();
  });

  it('asks to stop reading the client past the hold budget, unless every other holder waits already', () => {
    const budget = new HoldBudget(100);
    const a = gate(1_000_000, budget);
    const b = gate(1_000_000, budget);
    expect(a.gate.hold(Buffer.alloc(80))).toBe(false);
    // b passes the budget while a goes on reading: b waits.
    expect(b.gate.hold(Buffer.alloc(80))).toBe(true);
    // a passes it too, but b waits already: a goes on, so some message can always end.
    expect(a.gate.hold(Buffer.alloc(10))).toBe(false);
    expect(b.freed()).toBe(0);
    a.gate.drop();
    expect(b.freed()).toBe(1);
    expect(budget.held).toBe(80);
    b.gate.drop();
    expect(budget.held).toBe(0);
    a.gate.stop();
    b.gate.stop();
  });

  it('a message dropped while it is measured is not released', async () => {
    const { gate: g, refused } = gate(1000);
    const wire = deflate(Buffer.from('hello'));
    g.hold(wire);
    g.inflate(wire);
    const measured = g.measure();
    g.drop();
    expect(await measured).toBeNull();
    expect(refused).toEqual([]);
    g.stop();
  });
});
