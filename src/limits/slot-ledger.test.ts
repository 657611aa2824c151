import { describe, expect, it } from 'vitest';
import { SlotLedger } from './slot-ledger.js';

describe('SlotLedger', () => {
  it('counts slots per counter and names the first one at its cap', () => {
    const ledger = new SlotLedger();
    ledger.add(['total', 'ip:a']);
    ledger.add(['total', 'ip:b']);
    expect(ledger.full([{ key: 'total', cap: 3 }, { key: 'ip:a', cap: 1 }])).toBe(1);
    expect(ledger.full([{ key: 'total', cap: 2 }, { key: 'ip:a', cap: 1 }])).toBe(0);
    expect(ledger.full([{ key: 'total', cap: 3 }, { key: 'ip:c', cap: 1 }])).toBe(-1);
  });

  it('forgets a counter at zero and never goes below it', () => {
    const ledger = new SlotLedger();
    ledger.add(['total']);
    ledger.remove(['total']);
    ledger.remove(['total']);
    expect(ledger.count('total')).toBe(0);
    expect(ledger.size).toBe(0);
    ledger.add(['total']);
    expect(ledger.count('total')).toBe(1);
  });

  it('flattens to counter, count pairs', () => {
    const ledger = new SlotLedger();
    ledger.add(['a', 'b']);
    ledger.add(['a']);
    expect(ledger.flatten()).toEqual(['a', 2, 'b', 1]);
  });
});
