import { describe, expect, it } from 'vitest';
import { TokenBucket } from './bucket.js';
import { CreditBucket, type Spent } from './credit-bucket.js';

/** A shared bucket whose store answers when the test says so; deferred flushes run on `flush()`. */
function harness(batch: number, remote = { up: true }) {
  let clock = 1_000;
  const calls: { n: number; answer: (s: Spent) => void; fail: (e: unknown) => void }[] = [];
  const deferred: (() => void)[] = [];
  const failures: unknown[] = [];
  const bucket = new CreditBucket({
    batch,
    remote: () => remote.up,
    fallback: new TokenBucket({ count: 2, periodMs: 1000 }, 2, clock),
    spend: (n) => new Promise<Spent>((answer, fail) => calls.push({ n, answer, fail })),
    failed: (err) => failures.push(err),
    defer: (fn) => deferred.push(fn),
    now: () => clock,
  });
  return {
    bucket, calls, failures,
    now: () => clock,
    advance: (ms: number) => (clock += ms),
    flush: () => deferred.splice(0).forEach((fn) => fn()),
    settle: () => new Promise((r) => setImmediate(r)),
  };
}

describe('CreditBucket', () => {
  it('passes up to batch messages on credit and spends them in one call', async () => {
    const h = harness(3);
    expect([h.bucket.take(h.now()), h.bucket.take(h.now()), h.bucket.take(h.now())]).toEqual([true, true, true]);
    expect(h.bucket.take(h.now())).toBe(false);
    expect(h.bucket.undecided(h.now())).toBe(true);
    expect(h.bucket.waitMs(h.now())).toBe(1);
    h.flush();
    expect(h.calls.map((c) => c.n)).toEqual([3]);
    h.calls[0]!.answer({ tokens: 5, waitMs: 0 });
    await h.settle();
    expect(h.bucket.take(h.now())).toBe(true);
  });

  it('never has more than batch unconfirmed, counting the spend in flight', async () => {
    const h = harness(4);
    h.bucket.take(h.now());
    h.bucket.take(h.now());
    h.flush();
    expect(h.calls.map((c) => c.n)).toEqual([2]);
    expect([h.bucket.take(h.now()), h.bucket.take(h.now()), h.bucket.take(h.now())]).toEqual([true, true, false]);
    // One spend in flight at a time: the next waits for the answer.
    h.flush();
    expect(h.calls).toHaveLength(1);
    h.calls[0]!.answer({ tokens: 10, waitMs: 0 });
    await h.settle();
    h.flush();
    expect(h.calls.map((c) => c.n)).toEqual([2, 2]);
  });

  it('refuses, finally, until the store says a token is due again', async () => {
    const h = harness(2);
    h.bucket.take(h.now());
    h.flush();
    h.calls[0]!.answer({ tokens: -0.5, waitMs: 300 });
    await h.settle();
    expect(h.bucket.take(h.now())).toBe(false);
    expect(h.bucket.undecided(h.now())).toBe(false);
    expect(h.bucket.waitMs(h.now())).toBe(300);
    h.advance(300);
    expect(h.bucket.take(h.now())).toBe(true);
  });

  it('uses this replica\'s own bucket while the store is down, and reports a failed spend', async () => {
    const remote = { up: true };
    const h = harness(5, remote);
    h.bucket.take(h.now());
    h.flush();
    h.calls[0]!.fail(new Error('Command timed out'));
    await h.settle();
    expect(h.failures).toHaveLength(1);
    remote.up = false;
    // The fallback is a 2/s bucket with burst 2.
    expect([h.bucket.take(h.now()), h.bucket.take(h.now()), h.bucket.take(h.now())]).toEqual([true, true, false]);
    expect(h.bucket.undecided(h.now())).toBe(false);
    expect(h.bucket.waitMs(h.now())).toBe(500);
  });

  it('is idle only with no user and nothing unconfirmed', async () => {
    const h = harness(2);
    h.bucket.users = 1;
    h.bucket.take(h.now());
    h.bucket.release();
    expect(h.bucket.idle()).toBe(false);
    h.flush();
    expect(h.bucket.idle()).toBe(false);
    h.calls[0]!.answer({ tokens: 1, waitMs: 0 });
    await h.settle();
    expect(h.bucket.idle()).toBe(true);
  });
});
