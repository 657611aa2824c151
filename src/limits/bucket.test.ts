import { describe, expect, it } from 'vitest';
import { TokenBucket } from './bucket.js';

describe('TokenBucket', () => {
  it('allows a burst, then refills at the rate', () => {
    const bucket = new TokenBucket({ count: 20, periodMs: 1000 }, 30, 0);
    let taken = 0;
    while (bucket.take(0)) taken++;
    expect(taken).toBe(30);
    expect(bucket.waitMs(0)).toBe(50);
    expect(bucket.take(49)).toBe(false);
    expect(bucket.take(50)).toBe(true);
    expect(bucket.take(50)).toBe(false);
    expect(bucket.isFull(50 + 30 * 50)).toBe(true);
  });

  it('slowapi-style 10/minute: ten at once, then one every six seconds', () => {
    const bucket = new TokenBucket({ count: 10, periodMs: 60_000 }, 10, 0);
    for (let i = 0; i < 10; i++) expect(bucket.take(0)).toBe(true);
    expect(bucket.take(5_999)).toBe(false);
    expect(bucket.take(6_000)).toBe(true);
  });

  it('never holds more than the burst, however long it idles', () => {
    const bucket = new TokenBucket({ count: 1, periodMs: 1 }, 3, 0);
    let taken = 0;
    while (bucket.take(1_000_000)) taken++;
    expect(taken).toBe(3);
  });
});
