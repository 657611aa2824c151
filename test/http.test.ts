import { SignJWT, type JWTPayload } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../src/config/load.js';
import { startTestGuard, until, type TestGuard } from './helpers/guard.js';
import { rawConnect } from './helpers/raw.js';
import { startUpstream, type Upstream } from './helpers/upstream.js';

// Plain HTTP through the route's policies, against the real FastAPI app (issue: a foreign-Origin,
// token-less POST was executed by the app; 300 slow uploads from one address held 300 upstream requests).

const SECRET = 'http-policies-secret-long-enough-for-hs256-0123456789';
const JWT = { secret: SECRET, algorithms: ['HS256'], forwardClaims: { sub: 'X-Auth-Sub' } };
const APP = 'https://app.example.com';

let upstream: Upstream;
let guard: TestGuard;
let limited: TestGuard;
let n = 0;
const tag = () => `http-${process.pid}-${++n}`;

function token(claims: JWTPayload = {}): Promise<string> {
  return new SignJWT({ sub: 'alice', ...claims })
    .setProtectedHeader({ alg: 'HS256' })
    .setExpirationTime(Math.floor(Date.now() / 1000) + 60)
    .sign(new TextEncoder().encode(SECRET));
}

beforeAll(async () => {
  upstream = await startUpstream();
  guard = await startTestGuard({
    upstream: upstream.url,
    admin: '127.0.0.1:0',
    auth: { jwt: JWT },
    origins: [APP],
    allowNoOrigin: true,
    routes: [
      { path: '/hello', http: 'pass' },
      { path: '/internal', http: 'deny' },
      { path: '/strict', allowNoOrigin: false },
    ],
  });
  limited = await startTestGuard({
    upstream: upstream.url,
    timeouts: { request: '600ms', upstreamResponse: '300ms' },
    limits: { requests: { concurrent: 2, body: '1KiB' } },
    routes: [{ path: '/hello', limits: { requests: { rate: '3/minute' } } }],
  });
});

afterAll(async () => {
  await guard?.close();
  await limited?.close();
  await upstream?.stop();
});

const refusal = (res: Response) => ({ status: res.status, code: res.headers.get('x-ws-guard-error') });

describe('routes decide for plain HTTP (http: auth by default where the route has auth)', () => {
  it('a POST with a foreign Origin and no token never reaches the app (403)', async () => {
    const t = tag();
    const res = await fetch(`${guard.httpUrl}/upload?tag=${t}`, { method: 'POST', body: 'x', headers: { Origin: 'https://evil.example' } });
    expect(refusal(res)).toEqual({ status: 403, code: 'ORIGIN_DENIED' });
    expect(await upstream.seen(t)).toEqual([]);
  });

  it('no token → 401 with WWW-Authenticate, the app never sees it', async () => {
    const t = tag();
    const res = await fetch(`${guard.httpUrl}/upload?tag=${t}`, { method: 'POST', body: 'x', headers: { Origin: APP } });
    expect(refusal(res)).toEqual({ status: 401, code: 'TOKEN_MISSING' });
    expect(res.headers.get('www-authenticate')).toBe('Bearer error="invalid_token"');
    expect(await upstream.seen(t)).toEqual([]);
    const bad = await fetch(`${guard.httpUrl}/headers?tag=${t}`, { headers: { Authorization: 'Bearer not.a.token' } });
    expect(refusal(bad)).toEqual({ status: 401, code: 'TOKEN_INVALID' });
    expect(await upstream.seen(t)).toEqual([]);
  });

  it.each([
    ['header', async (url: string) => fetch(url, { headers: { Authorization: `Bearer ${await token()}`, 'X-Auth-Sub': 'admin' } })],
    ['cookie', async (url: string) => fetch(url, { headers: { Cookie: `access_token=${await token()}`, 'X-Auth-Sub': 'admin' } })],
    ['query', async (url: string) => fetch(`${url}&access_token=${await token()}`, { headers: { 'X-Auth-Sub': 'admin' } })],
  ])('a token in the %s is accepted; the claim header replaces the client copy', async (_source, send) => {
    const t = tag();
    const res = await send(`${guard.httpUrl}/headers?tag=${t}`);
    expect(res.status).toBe(200);
    const [seen] = await upstream.seen(t);
    expect(seen.headers['x-auth-sub']).toBe('alice');
  });

  it('two tokens in one request → 401, one token per request', async () => {
    const t = tag();
    const res = await fetch(`${guard.httpUrl}/headers?tag=${t}`, {
      headers: { Authorization: `Bearer ${await token()}`, Cookie: `access_token=${await token()}` },
    });
    expect(refusal(res)).toEqual({ status: 401, code: 'TOKEN_INVALID' });
    expect(await upstream.seen(t)).toEqual([]);
  });

  it('http: deny → 404 without dialling; http: pass → the app answers without a token', async () => {
    const t = tag();
    expect(refusal(await fetch(`${guard.httpUrl}/internal/x?tag=${t}`))).toEqual({ status: 404, code: 'HTTP_DENIED' });
    expect(await upstream.seen(t)).toEqual([]);
    const hello = await fetch(`${guard.httpUrl}/hello?tag=${t}`, { headers: { 'X-Auth-Sub': 'admin' } });
    expect(await hello.json()).toEqual({ hello: 'world' });
    const [seen] = await upstream.seen(t);
    expect(seen.headers['x-auth-sub']).toBeUndefined();
  });

  it('a pass route still checks Origin; no Origin is judged by allowNoOrigin', async () => {
    const t = tag();
    expect(refusal(await fetch(`${guard.httpUrl}/hello?tag=${t}`, { headers: { Origin: 'https://evil.example' } }))).toEqual({
      status: 403, code: 'ORIGIN_DENIED',
    });
    const bearer = { Authorization: `Bearer ${await token()}` };
    expect(refusal(await fetch(`${guard.httpUrl}/strict?tag=${t}`, { headers: bearer }))).toEqual({ status: 403, code: 'ORIGIN_DENIED' });
    expect(await upstream.seen(t)).toEqual([]);
    expect((await fetch(`${guard.httpUrl}/strict?tag=${t}`, { headers: { ...bearer, Origin: APP } })).status).toBe(404);
    expect(await upstream.seen(t)).toHaveLength(1);
  });

  it('a CORS preflight reaches the app untouched (no token, any Origin)', async () => {
    const t = tag();
    await fetch(`${guard.httpUrl}/upload?tag=${t}`, {
      method: 'OPTIONS', headers: { Origin: 'https://other.example', 'Access-Control-Request-Method': 'POST' },
    });
    const [seen] = await upstream.seen(t);
    expect(seen).toMatchObject({ method: 'OPTIONS', headers: { origin: 'https://other.example', 'access-control-request-method': 'POST' } });
  });

  it('refusals and requests are counted and logged', async () => {
    await fetch(`${guard.httpUrl}/internal`);
    await fetch(`${guard.httpUrl}/hello`);
    const text = await (await fetch(`${guard.adminUrl}/metrics`)).text();
    expect(text).toMatch(/ws_guard_http_refusals_total\{reason="HTTP_DENIED",status="404"\} [1-9]/);
    expect(text).toMatch(/ws_guard_http_requests_total\{route="\/hello",status="2xx"\} [1-9]/);
    expect(text).toMatch(/ws_guard_http_requests_total\{route="\/internal",status="4xx"\} [1-9]/);
    expect(guard.logs).toContainEqual(expect.objectContaining({ msg: 'request refused', code: 'HTTP_DENIED', status: 404, route: '/internal' }));
    await until(() => guard.logs.some((l) => l.msg === 'request done' && l.route === '/hello' && l.status === 200));
  });
});

describe('request limits', () => {
  it('request rate per route (3/minute) → 429 with Retry-After', async () => {
    const statuses: number[] = [];
    let last: Response | undefined;
    for (let i = 0; i < 4; i++) {
      last = await fetch(`${limited.httpUrl}/hello`);
      statuses.push(last.status);
    }
    expect(statuses).toEqual([200, 200, 200, 429]);
    expect(last!.headers.get('x-ws-guard-error')).toBe('REQUEST_RATE');
    expect(Number(last!.headers.get('retry-after'))).toBeGreaterThan(0);
    // Other routes have no rate.
    expect((await fetch(`${limited.httpUrl}/headers`)).status).toBe(200);
  });

  it('requests in flight per address → 429 past the cap, free again once answered', async () => {
    const slow = [fetch(`${limited.httpUrl}/slow?ms=1000`), fetch(`${limited.httpUrl}/slow?ms=1000`)];
    await new Promise((r) => setTimeout(r, 300));
    expect(refusal(await fetch(`${limited.httpUrl}/headers`))).toEqual({ status: 429, code: 'REQUESTS_IN_FLIGHT' });
    expect((await Promise.all(slow)).map((r) => r.status)).toEqual([200, 200]);
    expect((await fetch(`${limited.httpUrl}/headers`)).status).toBe(200);
  });

  it('requests in flight are counted per address across routes; a route with its own concurrent has a pool of its own', async () => {
    const pools = await startTestGuard({
      upstream: upstream.url,
      limits: { requests: { concurrent: 1 } },
      routes: [{ path: '/slow' }, { path: '/headers', limits: { requests: { concurrent: 1 } } }],
    });
    try {
      const held = fetch(`${pools.httpUrl}/slow?ms=800`);
      await new Promise((r) => setTimeout(r, 300));
      // Another route, same address, no pool of its own: the one slot is taken.
      expect(refusal(await fetch(`${pools.httpUrl}/hello`))).toEqual({ status: 429, code: 'REQUESTS_IN_FLIGHT' });
      // A route with its own concurrent counts apart.
      expect((await fetch(`${pools.httpUrl}/headers`)).status).toBe(200);
      expect((await held).status).toBe(200);
    } finally {
      await pools.close();
    }
  });

  it('a declared body over the limit → 413 before the app sees the request', async () => {
    const t = tag();
    const res = await fetch(`${limited.httpUrl}/upload?tag=${t}`, { method: 'POST', body: 'x'.repeat(2000) });
    expect(refusal(res)).toEqual({ status: 413, code: 'BODY_TOO_LARGE' });
    expect(await upstream.seen(t)).toEqual([]);
    const ok = await fetch(`${limited.httpUrl}/upload?tag=${t}`, { method: 'POST', body: 'x'.repeat(1024) });
    expect(await ok.json()).toMatchObject({ bytes: 1024 });
  });

  it('a chunked body past the limit → 413; the app never gets the whole body', async () => {
    const t = tag();
    const conn = await rawConnect(limited.port);
    const chunk = 'y'.repeat(600);
    conn.write(`POST /upload?tag=${t} HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n${chunk}\r\n`);
    await new Promise((r) => setTimeout(r, 100));
    conn.write(`258\r\n${chunk}\r\n258\r\n${chunk}\r\n0\r\n\r\n`);
    const res = await conn.readHttpResponse();
    expect(res.status).toBe(413);
    expect(res.headers['x-ws-guard-error']).toBe('BODY_TOO_LARGE');
    conn.destroy();
    await new Promise((r) => setTimeout(r, 300));
    expect((await upstream.seen(t)).filter((e) => e.type === 'upload_done')).toEqual([]);
  });

  it('a body that does not arrive within timeouts.request → 408; the upload never completes', async () => {
    const t = tag();
    const conn = await rawConnect(limited.port);
    const started = Date.now();
    conn.write(`POST /upload?tag=${t} HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\n0123456789`);
    const res = await conn.readHttpResponse();
    expect(res.status).toBe(408);
    expect(res.headers['x-ws-guard-error']).toBe('REQUEST_TIMEOUT');
    expect(Date.now() - started).toBeGreaterThanOrEqual(500);
    conn.destroy();
    await new Promise((r) => setTimeout(r, 300));
    expect((await upstream.seen(t)).filter((e) => e.type === 'upload_done')).toEqual([]);
  });

  it('slow uploads from one address hold at most `concurrent` upstream requests, and each ends with 408', async () => {
    const t = tag();
    const conns = await Promise.all(Array.from({ length: 5 }, () => rawConnect(limited.port)));
    for (const conn of conns) conn.write(`POST /upload?tag=${t} HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\n01234`);
    const answers = await Promise.all(conns.map((conn) => conn.readHttpResponse()));
    const codes = answers.map((a) => a.headers['x-ws-guard-error']).sort();
    expect(codes).toEqual(['REQUESTS_IN_FLIGHT', 'REQUESTS_IN_FLIGHT', 'REQUESTS_IN_FLIGHT', 'REQUEST_TIMEOUT', 'REQUEST_TIMEOUT']);
    for (const conn of conns) conn.destroy();
    await new Promise((r) => setTimeout(r, 300));
    const seen = await upstream.seen(t);
    expect(seen.filter((e) => e.type === 'http')).toHaveLength(2);
    expect(seen.filter((e) => e.type === 'upload_done')).toEqual([]);
  });

  it('408 without a body limit too (the client body goes straight to undici): the answer still reaches the client', async () => {
    const t = tag();
    const plain = await startTestGuard({ upstream: upstream.url, timeouts: { request: '300ms' } });
    try {
      const conn = await rawConnect(plain.port);
      conn.write(`POST /upload?tag=${t} HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n`);
      const res = await conn.readHttpResponse();
      expect(res.status).toBe(408);
      conn.destroy();
      await new Promise((r) => setTimeout(r, 300));
      expect((await upstream.seen(t)).filter((e) => e.type === 'upload_done')).toEqual([]);
    } finally {
      await plain.close();
    }
  });

  it('a long poll outlives upstreamResponse (an upgrade deadline): plain HTTP waits upstreamHeaders (60 s by default)', async () => {
    const res = await fetch(`${limited.httpUrl}/slow?ms=1000`);
    expect(await res.json()).toEqual({ slept: 1000 });
    const impatient = await startTestGuard({ upstream: upstream.url, timeouts: { upstreamHeaders: '300ms' } });
    try {
      expect(refusal(await fetch(`${impatient.httpUrl}/slow?ms=1000`))).toEqual({ status: 504, code: 'UPSTREAM_TIMEOUT' });
    } finally {
      await impatient.close();
    }
  });

  it('defaults with no config at all: a body deadline and a cap on requests in flight', () => {
    const config = parseConfig({ listen: '127.0.0.1:0', upstream: 'http://127.0.0.1:8000' }, {});
    expect(config.timeouts.request).toBe(30_000);
    expect(config.timeouts.upstreamHeaders).toBe(60_000);
    expect(config.limits.requests).toMatchObject({ concurrent: 32, per: 'ip' });
  });
});
