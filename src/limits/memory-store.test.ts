import { afterEach, describe, expect, it } from 'vitest';
import { MemoryStore } from './memory-store.js';

let stores: MemoryStore[] = [];
function store(now: () => number = () => 0): MemoryStore {
  const s = new MemoryStore(now);
  stores.push(s);
  return s;
}
afterEach(() => {
  for (const s of stores) s.close();
  stores = [];
});

describe('MemoryStore: connection slots', () => {
  it('caps total, per IP and per user, and gives every slot back once', async () => {
    const s = store();
    const limits = { total: 3, perIp: 2, perUser: 1 };
    const a = await s.acquireSlots([{ pool: '', limits }], '10.0.0.1', 'alice');
    expect(a).toMatchObject({ ok: true, usage: [{ pool: '', ratio: 1 / 3 }] });
    expect(await s.acquireSlots([{ pool: '', limits }], '10.0.0.1', 'alice')).toEqual({ ok: false, refused: 'perUser' });
    const b = await s.acquireSlots([{ pool: '', limits }], '10.0.0.1', 'bob');
    expect(b.ok).toBe(true);
    expect(await s.acquireSlots([{ pool: '', limits }], '10.0.0.1', 'carol')).toEqual({ ok: false, refused: 'perIp' });
    const c = await s.acquireSlots([{ pool: '', limits }], '10.0.0.2', undefined);
    expect(c.ok).toBe(true);
    expect(await s.acquireSlots([{ pool: '', limits }], '10.0.0.3', undefined)).toEqual({ ok: false, refused: 'total' });
    for (const v of [a, b, c]) if (v.ok) {
      v.lease.release();
      v.lease.release();
    }
    expect(s.count()).toEqual({ total: 0, ips: 0, users: 0 });
  });

  it('takes from every pool or from none', async () => {
    const s = store();
    const route = { pool: '/chat', limits: { total: 1 } };
    const all = { pool: '', limits: { total: 10 } };
    expect((await s.acquireSlots([all, route], '10.0.0.1', undefined)).ok).toBe(true);
    expect(await s.acquireSlots([all, route], '10.0.0.2', undefined)).toEqual({ ok: false, refused: 'total' });
    expect(s.count('').total).toBe(1);
    expect(s.count('/chat').total).toBe(1);
  });
});

describe('MemoryStore: rates', () => {
  it('handshake buckets per key, answering the wait', async () => {
    let now = 0;
    const s = store(() => now);
    const rate = { count: 2, periodMs: 1000 };
    expect(await s.takeHandshake('ip:a', rate, 2)).toBe(0);
    expect(await s.takeHandshake('ip:a', rate, 2)).toBe(0);
    expect(await s.takeHandshake('ip:a', rate, 2)).toBe(500);
    expect(await s.takeHandshake('ip:b', rate, 2)).toBe(0);
    now = 500;
    expect(await s.takeHandshake('ip:a', rate, 2)).toBe(0);
  });

  it('a shared bucket outlives its last user until it has refilled', () => {
    const s = store();
    const rate = { count: 1, periodMs: 1000 };
    const first = s.sharedBucket('user:alice', rate, 1);
    expect(first.take(0)).toBe(true);
    first.release();
    const again = s.sharedBucket('user:alice', rate, 1);
    expect(again.take(0)).toBe(false);
    expect(again.waitMs(0)).toBe(1000);
    again.release();
  });
});
