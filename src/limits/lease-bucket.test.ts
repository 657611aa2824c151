import { describe, expect, it } from 'vitest';
import { TokenBucket } from './bucket.js';
import { LeaseBucket, type Leased } from './lease-bucket.js';
import { autoBatch } from './redis-store.js';

/** A shared bucket whose store answers when the test says so. */
function harness(batch: number, remote = { up: true }) {
  let clock = 1_000;
  const calls: { spent: number; want: number; answer: (l: Leased) => void; fail: (e: unknown) => void }[] = [];
  const failures: unknown[] = [];
  const bucket = new LeaseBucket({
    batch,
    remote: () => remote.up,
    fallback: new TokenBucket({ count: 2, periodMs: 1000 }, 2, clock),
    lease: (spent, want) => new Promise<Leased>((answer, fail) => calls.push({ spent, want, answer, fail })),
    failed: (err) => failures.push(err),
    now: () => clock,
  });
  const settle = () => new Promise((r) => setImmediate(r));
  return {
    bucket, calls, failures, settle,
    now: () => clock,
    advance: (ms: number) => (clock += ms),
    /** Answers the lease on its way as a store with `tokens` whole tokens would. */
    grant: async (tokens: number) => {
      const call = calls[calls.length - 1]!;
      const left = tokens - call.spent;
      const granted = left >= 1 ? Math.min(call.want, Math.floor(left)) : 0;
      call.answer({ granted, tokens: left - granted, waitMs: left - granted < 1 ? 250 : 0 });
      await settle();
    },
    takes: (n: number) => Array.from({ length: n }, () => bucket.take(clock)),
  };
}

describe('LeaseBucket', () => {
  it('leases half the batch in advance and passes messages from it with no call per message', async () => {
    const h = harness(10);
    expect(h.calls.map((c) => [c.spent, c.want])).toEqual([[0, 5]]);
    await h.grant(100);
    // Five held: the third take leaves 2 (≤ half of 5) and asks for more, once.
    expect(h.takes(3)).toEqual([true, true, true]);
    expect(h.calls.map((c) => [c.spent, c.want])).toEqual([[0, 5], [0, 3]]);
    expect(h.takes(2)).toEqual([true, true]);
    expect(h.calls).toHaveLength(2);
  });

  it('passes the other half on credit when a burst outruns the lease, then says "not yet"', async () => {
    const h = harness(10);
    await h.grant(100);
    expect(h.takes(5)).toEqual([true, true, true, true, true]);
    // Held none, the next lease on its way: five more on credit, then undecided.
    expect(h.takes(6)).toEqual([true, true, true, true, true, false]);
    expect(h.bucket.undecided(h.now())).toBe(true);
    expect(h.bucket.waitMs(h.now())).toBe(1);
    await h.grant(100);
    // The three tokens that lease brought paid for three of the five on credit; the other two go with the next.
    expect(h.calls[h.calls.length - 1]!.spent).toBe(2);
    await h.grant(100);
    expect(h.bucket.take(h.now())).toBe(true);
  });

  it('is never more than batch ahead of the store: held plus unreported credit', async () => {
    const h = harness(4);
    await h.grant(3);
    // Two held, then two on credit while the next lease is on its way, then nothing until it answers.
    expect(h.takes(5)).toEqual([true, true, true, true, false]);
  });

  it('refuses, finally, once the store says the bucket is empty, until a token is due again', async () => {
    const h = harness(4);
    await h.grant(0);
    expect(h.bucket.take(h.now())).toBe(false);
    expect(h.bucket.undecided(h.now())).toBe(false);
    expect(h.bucket.waitMs(h.now())).toBe(250);
    h.advance(250);
    expect(h.bucket.take(h.now())).toBe(true);
  });

  it("uses this replica's own bucket while the store is down, and reports a failed lease", async () => {
    const remote = { up: true };
    const h = harness(4, remote);
    h.calls[0]!.fail(new Error('Command timed out'));
    await h.settle();
    expect(h.failures).toHaveLength(1);
    remote.up = false;
    expect(h.takes(3)).toEqual([true, true, false]);
    expect(h.bucket.undecided(h.now())).toBe(false);
    expect(h.bucket.waitMs(h.now())).toBe(500);
  });

  it('is idle only with no user and nothing on its way', async () => {
    const h = harness(2);
    h.bucket.users = 1;
    h.bucket.release();
    expect(h.bucket.idle()).toBe(false);
    await h.grant(10);
    expect(h.bucket.idle()).toBe(true);
  });
});

describe('autoBatch', () => {
  it('is 100 ms of the rate, at least 1 and at most the burst', () => {
    expect(autoBatch({ count: 1000, periodMs: 1000 }, 2000)).toBe(100);
    expect(autoBatch({ count: 10, periodMs: 60_000 }, 10)).toBe(1);
    expect(autoBatch({ count: 1000, periodMs: 1000 }, 30)).toBe(30);
  });
});

describe('LeaseBucket: credit paid from the next lease', () => {
  it('pays messages passed on credit from the tokens the lease brings, reporting no debt', async () => {
    let clock = 0;
    const calls: { spent: number; want: number; answer: (l: Leased) => void }[] = [];
    const bucket = new LeaseBucket({
      batch: 4,
      remote: () => true,
      fallback: new TokenBucket({ count: 1, periodMs: 1000 }, 1, 0),
      lease: (spent, want) => new Promise<Leased>((answer) => calls.push({ spent, want, answer })),
      failed: () => {},
      now: () => clock,
    });
    // Two pass on credit before the first lease (2 wanted) is answered.
    expect([bucket.take(clock), bucket.take(clock), bucket.take(clock)]).toEqual([true, true, false]);
    calls[0]!.answer({ granted: 2, tokens: 8, waitMs: 0 });
    await new Promise((r) => setImmediate(r));
    // The two granted tokens paid for the credit: the next lease reports nothing spent.
    expect(calls.map((c) => c.spent)).toEqual([0, 0]);
    expect(calls[1]!.want).toBe(2);
  });
});
