import { describe, expect, it } from 'vitest';
import { ctx, onHandshake, onRequest } from '../../test/helpers/policies.js';
import { MemoryStore } from '../limits/memory-store.js';
import { handshakeRatePolicy, requestRatePolicy } from './rate.js';

describe('rate policies', () => {
  it('handshake rate per address; request rate per user, falling back to the address', async () => {
    const store = new MemoryStore();
    const hs = handshakeRatePolicy(store, '/r', { rate: { count: 1, periodMs: 60_000 }, burst: 1 });
    expect(await onHandshake(hs, ctx())).toBe('ok');
    expect(await onHandshake(hs, ctx())).toBe('HANDSHAKE_RATE');
    expect(await onHandshake(hs, ctx({}, { ip: '10.0.0.2' }))).toBe('ok');
    const rq = requestRatePolicy(store, '/r', { rate: { count: 1, periodMs: 60_000 }, burst: 1, per: 'user' });
    const alice = () => Object.assign(ctx(), { user: 'alice' });
    expect(await onRequest(rq, alice())).toBe('ok');
    expect(await onRequest(rq, Object.assign(ctx({}, { ip: '10.0.0.9' }), { user: 'alice' }))).toBe('REQUEST_RATE');
    expect(await onRequest(rq, ctx({}, { preflight: true }))).toBe('ok');
    expect(await onRequest(rq, ctx())).toBe('ok');
    expect(await onRequest(rq, ctx())).toBe('REQUEST_RATE');
    store.close();
  });
});
