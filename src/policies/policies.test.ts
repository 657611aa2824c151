import type { IncomingMessage } from 'node:http';
import { SignJWT } from 'jose';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import type { GuardError } from '../errors.js';
import { parseTarget } from '../http/target.js';
import { MemoryStore } from '../limits/memory-store.js';
import { authPolicy, identityPolicy } from './auth.js';
import { createJwtVerifier } from './jwt.js';
import { originPolicy, parseOriginPattern } from './origin.js';
import { admission, releaseAll, type Admission, type Policy } from './policy.js';
import { handshakeRatePolicy, requestRatePolicy } from './rate.js';
import { RequestSlots, bodySizePolicy, httpDenyPolicy, requestSlotsPolicy } from './requests.js';
import { SlotWarnings, connectionSlotsPolicy } from './slots.js';

// Each policy as a unit: built once from its config, then run on an admission context, as the server
// runs them (src/server/upgrade.ts, src/server/http-proxy.ts). A refusal is a thrown GuardError.

const SECRET = 'policy-unit-secret-long-enough-for-hs256-0123456789';

function ctx(headers: Record<string, string> = {}, options: { url?: string; ip?: string; preflight?: boolean; protocolTokens?: string[] } = {}): Admission {
  const rawHeaders = Object.entries(headers).flat();
  const lower = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
  const req = { rawHeaders, headers: lower, url: options.url ?? '/' } as unknown as IncomingMessage;
  return admission(req, parseTarget(options.url ?? '/')!, options.ip ?? '10.0.0.1', options.protocolTokens ?? [], options.preflight ?? false);
}

async function verdict(run: (() => void | Promise<void>) | undefined): Promise<string> {
  try {
    await run?.();
    return 'ok';
  } catch (err) {
    return (err as GuardError).code;
  }
}
const onHandshake = (p: Policy, c: Admission) => verdict(p.onHandshake && (() => p.onHandshake!(c)));
const onRequest = (p: Policy, c: Admission) => verdict(p.onRequest && (() => p.onRequest!(c)));

const jwt = () => parseConfig({ listen: '127.0.0.1:0', upstream: 'http://127.0.0.1:1', auth: { jwt: { secret: SECRET, algorithms: ['HS256'], forwardClaims: { sub: 'X-Auth-Sub' } } } }, {}).auth!.jwt;
const token = (claims: Record<string, unknown>) =>
  new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).setExpirationTime('1m').sign(new TextEncoder().encode(SECRET));

describe('origin policy', () => {
  const policy = originPolicy({ origins: [parseOriginPattern('https://app.example.com')!], allowNoOrigin: false });
  it('refuses a foreign or missing Origin on both paths, but lets a CORS preflight through', async () => {
    expect(await onHandshake(policy, ctx({ Origin: 'https://evil.example' }))).toBe('ORIGIN_DENIED');
    expect(await onRequest(policy, ctx({}))).toBe('ORIGIN_DENIED');
    expect(await onRequest(policy, ctx({ Origin: 'https://app.example.com' }))).toBe('ok');
    expect(await onRequest(policy, ctx({ Origin: 'https://evil.example' }, { preflight: true }))).toBe('ok');
  });
});

describe('auth and identity policies', () => {
  const config = jwt();
  const verify = createJwtVerifier(config);
  it('auth verifies one token; identity sets the user and the claim headers; no token → 401', async () => {
    const auth = authPolicy({ jwt: config, verify, onRequests: true });
    const identity = identityPolicy({ jwt: config, needsUser: false, onRequests: true });
    const c = ctx({ Authorization: `Bearer ${await token({ sub: 'alice' })}`, 'X-Auth-Sub': 'admin' });
    expect(await onRequest(auth, c)).toBe('ok');
    expect(await onRequest(identity, c)).toBe('ok');
    expect(c.user).toBe('alice');
    expect(c.claimHeaders).toEqual(['X-Auth-Sub', 'alice']);
    expect(await onRequest(auth, ctx())).toBe('TOKEN_MISSING');
    expect(await onHandshake(auth, ctx({}, { protocolTokens: [await token({ sub: 'bob' })] }))).toBe('ok');
    const two = ctx({ Authorization: `Bearer ${await token({ sub: 'a' })}`, Cookie: `access_token=${await token({ sub: 'b' })}` });
    expect(await onRequest(auth, two)).toBe('TOKEN_INVALID');
  });

  it('http: pass has no request hook; a token naming no one is refused where a user is needed', async () => {
    expect(authPolicy({ jwt: config, verify, onRequests: false }).onRequest).toBeUndefined();
    const c = ctx({ Authorization: `Bearer ${await token({})}` });
    expect(await onHandshake(authPolicy({ jwt: config, verify, onRequests: true }), c)).toBe('ok');
    const identity = identityPolicy({ jwt: { ...config, forwardClaims: {} }, needsUser: true, onRequests: true });
    expect(await onHandshake(identity, c)).toBe('CLAIMS_INSUFFICIENT');
  });
});

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
