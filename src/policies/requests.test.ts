import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { ctx, onRequest } from '../../test/helpers/policies.js';
import { releaseAll } from './policy.js';
import { BodyLimit, RequestSlots, bodySizePolicy, declaredTooLarge, httpDenyPolicy, isPreflight, requestSlotsPolicy } from './requests.js';

describe('RequestSlots', () => {
  it('gives out at most limit slots per key and takes each back once', () => {
    const slots = new RequestSlots();
    const a = slots.acquire('r|1.2.3.4', 2);
    const b = slots.acquire('r|1.2.3.4', 2);
    expect(a).toBeDefined();
    expect(b).toBeDefined();
    expect(slots.acquire('r|1.2.3.4', 2)).toBeUndefined();
    expect(slots.acquire('r|5.6.7.8', 2)).toBeDefined();
    a!();
    a!();
    expect(slots.held('r|1.2.3.4')).toBe(1);
    expect(slots.acquire('r|1.2.3.4', 2)).toBeDefined();
  });
});

describe('BodyLimit', () => {
  const run = async (chunks: string[], limit: number) => {
    const out: string[] = [];
    let over = 0;
    await pipeline(
      Readable.from(chunks.map((c) => Buffer.from(c))),
      new BodyLimit(limit, () => over++),
      new Writable({ write(chunk: Buffer, _e, cb) { out.push(chunk.toString()); cb(); } }),
    );
    return { out: out.join(''), over };
  };

  it('passes a body up to the limit unchanged', async () => {
    expect(await run(['ab', 'cd'], 4)).toEqual({ out: 'abcd', over: 0 });
  });

  it('never passes the chunk that crosses the limit nor anything after it, and reports once', async () => {
    expect(await run(['ab', 'cde', 'f'], 4)).toEqual({ out: 'ab', over: 1 });
  });
});

describe('declaredTooLarge / isPreflight', () => {
  it('compares a declared length with the limit', () => {
    expect(declaredTooLarge('11', 10)).toBe(true);
    expect(declaredTooLarge('10', 10)).toBe(false);
    expect(declaredTooLarge(undefined, 10)).toBe(false);
    expect(declaredTooLarge('11', undefined)).toBe(false);
  });

  it('knows a CORS preflight by OPTIONS and Access-Control-Request-Method', () => {
    expect(isPreflight('OPTIONS', { 'access-control-request-method': 'POST' })).toBe(true);
    expect(isPreflight('OPTIONS', {})).toBe(false);
    expect(isPreflight('POST', { 'access-control-request-method': 'POST' })).toBe(false);
  });
});

describe('request policies', () => {
  it('requests in flight per address, deny, and a declared body over the limit', async () => {
    const policy = requestSlotsPolicy(new RequestSlots(), '/r', 1);
    const first = ctx();
    expect(await onRequest(policy, first)).toBe('ok');
    expect(await onRequest(policy, ctx())).toBe('REQUESTS_IN_FLIGHT');
    releaseAll(first);
    expect(await onRequest(policy, ctx())).toBe('ok');
    expect(await onRequest(httpDenyPolicy(), ctx())).toBe('HTTP_DENIED');
    expect(httpDenyPolicy().onHandshake).toBeUndefined();
    expect(await onRequest(bodySizePolicy(10), ctx({ 'Content-Length': '11' }))).toBe('BODY_TOO_LARGE');
    expect(await onRequest(bodySizePolicy(10), ctx({ 'Content-Length': '10' }))).toBe('ok');
  });
});
