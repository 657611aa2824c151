import { describe, expect, it } from 'vitest';
import { ctx, onHandshake } from '../../test/helpers/policies.js';
import { MemoryStore } from '../limits/memory-store.js';
import { releaseAll } from './policy.js';
import { SlotWarnings, connectionSlotsPolicy } from './slots.js';

describe('slot policies', () => {
  it('connection slots: refused past the cap, given back with the release; one warning per crossing', async () => {
    const store = new MemoryStore();
    const warned: number[] = [];
    const policy = connectionSlotsPolicy(store, [{ pool: '', limits: { total: 2, warnAt: 0.5 } }], new SlotWarnings((_p, ratio) => warned.push(ratio)));
    const a = ctx();
    const b = ctx();
    expect(await onHandshake(policy, a)).toBe('ok');
    expect(await onHandshake(policy, b)).toBe('ok');
    expect(await onHandshake(policy, ctx())).toBe('CONNECTIONS_FULL');
    expect(warned).toEqual([0.5]);
    releaseAll(a);
    releaseAll(a);
    expect(await onHandshake(policy, ctx())).toBe('ok');
    store.close();
  });
});
