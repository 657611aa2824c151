import { createHmac } from 'node:crypto';
import { SignJWT, type JWTPayload } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { closed, open } from './helpers/clients.js';
import { startTestGuard, until, type TestGuard } from './helpers/guard.js';
import { rawConnect, upgradeRequest } from './helpers/raw.js';
import { startUpstream, type Upstream } from './helpers/upstream.js';

const SECRET = 'integration-secret-long-enough-for-hs256-0123456789';
const now = () => Math.floor(Date.now() / 1000);

function token(claims: JWTPayload = {}, ttlSeconds = 60): Promise<string> {
  return new SignJWT({ sub: 'alice', aud: 'chat', exp: now() + ttlSeconds, ...claims })
    .setProtectedHeader({ alg: 'HS256' })
    .sign(new TextEncoder().encode(SECRET));
}

const JWT = {
  secret: SECRET,
  algorithms: ['HS256'],
  audience: 'chat',
  requiredClaims: ['sub'],
  forwardClaims: { sub: 'X-Auth-Sub', role: 'X-Auth-Role' },
};

let upstream: Upstream;
let guard: TestGuard;
let tagCount = 0;
const tag = () => `auth-${process.pid}-${++tagCount}`;

beforeAll(async () => {
  upstream = await startUpstream();
  guard = await startTestGuard({
    upstream: upstream.url,
    auth: { jwt: JWT },
    routes: [
      { path: '/ws/close', auth: false },
      { path: '/ws/push', auth: { jwt: { audience: 'push' } } },
    ],
  });
});

afterAll(async () => {
  await guard?.close();
  await upstream?.stop();
});

async function refusal(url: string, protocols?: string[], options: WebSocket.ClientOptions = {}) {
  const err = await open(url, protocols, options).then(
    (ws) => {
      ws.terminate();
      throw new Error('expected a refusal');
    },
    (e: { status: number; headers: Record<string, string> }) => e,
  );
  return { status: err.status, code: err.headers['x-ws-guard-error'], challenge: err.headers['www-authenticate'] };
}

async function connectEvent(t: string) {
  await until(async () => (await upstream.seen(t)).some((e) => e.type === 'ws_connect'));
  return (await upstream.seen(t)).find((e) => e.type === 'ws_connect');
}

describe('token sources (real FastAPI upstream)', () => {
  it('Authorization header: accepted, and the header reaches the upstream unchanged', async () => {
    const t = tag();
    const jwt = await token();
    const ws = await open(`${guard.wsUrl}/ws/echo?tag=${t}`, undefined, { headers: { Authorization: `Bearer ${jwt}` } });
    ws.close();
    const connect = await connectEvent(t);
    expect(connect.headers.authorization).toBe(`Bearer ${jwt}`);
    expect(connect.headers['x-auth-sub']).toBe('alice');
  });

  it('Sec-WebSocket-Protocol: bearer + token are removed before the upstream; the 101 names bearer', async () => {
    const t = tag();
    const ws = await open(`${guard.wsUrl}/ws/echo?tag=${t}`, ['bearer', await token()]);
    expect(ws.protocol).toBe('bearer');
    ws.close();
    const connect = await connectEvent(t);
    expect(connect.headers['sec-websocket-protocol']).toBeUndefined();
    expect(connect.subprotocols).toEqual([]);
  });

  it("Sec-WebSocket-Protocol with the client's own protocols: the upstream picks among those", async () => {
    const t = tag();
    const ws = await open(`${guard.wsUrl}/ws/echo?tag=${t}&proto=chat.v2`, ['chat.v1', 'bearer', await token(), 'chat.v2']);
    expect(ws.protocol).toBe('chat.v2');
    ws.close();
    expect((await connectEvent(t)).subprotocols).toEqual(['chat.v1', 'chat.v2']);
  });

  it('query parameter and cookie', async () => {
    const t1 = tag();
    const ws1 = await open(`${guard.wsUrl}/ws/echo?tag=${t1}&access_token=${await token()}`);
    ws1.close();
    expect((await connectEvent(t1)).headers['x-auth-sub']).toBe('alice');
    const t2 = tag();
    const cookie = `theme=dark; access_token=${await token({ sub: 'carol' })}`;
    const ws2 = await open(`${guard.wsUrl}/ws/echo?tag=${t2}`, undefined, { headers: { Cookie: cookie } });
    ws2.close();
    const connect = await connectEvent(t2);
    expect(connect.headers['x-auth-sub']).toBe('carol');
    expect(connect.headers.cookie).toBe(cookie);
  });
});

describe('refusals before the upgrade', () => {
  it('missing, invalid and expired tokens → 401 with a Bearer challenge; the upstream sees nothing', async () => {
    const t = tag();
    const url = `${guard.wsUrl}/ws/echo?tag=${t}`;
    const challenge = 'Bearer error="invalid_token"';
    expect(await refusal(url)).toEqual({ status: 401, code: 'TOKEN_MISSING', challenge });
    expect(await refusal(url, ['bearer', 'not.a.token'])).toEqual({ status: 401, code: 'TOKEN_INVALID', challenge });
    expect(await refusal(url, ['bearer', await token({}, -30)])).toEqual({ status: 401, code: 'TOKEN_EXPIRED', challenge });
    expect(await refusal(url, ['bearer', await token({ aud: 'billing' })])).toMatchObject({ status: 401, code: 'TOKEN_INVALID' });
    expect(await upstream.seen(t)).toEqual([]);
  });

  it('a valid token without the required claim → 403', async () => {
    const t = tag();
    const noSub = await new SignJWT({ aud: 'chat', exp: now() + 60 }).setProtectedHeader({ alg: 'HS256' }).sign(new TextEncoder().encode(SECRET));
    expect(await refusal(`${guard.wsUrl}/ws/echo?tag=${t}`, ['bearer', noSub])).toMatchObject({ status: 403, code: 'CLAIMS_INSUFFICIENT' });
    expect(await upstream.seen(t)).toEqual([]);
  });

  it('claim values with control characters or beyond Latin-1 are forwarded percent-encoded, never raw', async () => {
    const t = tag();
    const ws = await open(`${guard.wsUrl}/ws/echo?tag=${t}`, ['bearer', await token({ sub: 'Łukasz', role: 'admin\r\nX-Injected: 1' })]);
    ws.close();
    const connect = await connectEvent(t);
    expect(connect.headers['x-auth-sub']).toBe('%C5%81ukasz');
    expect(connect.headers['x-auth-role']).toBe('admin%0D%0AX-Injected: 1');
    expect(connect.headers['x-injected']).toBeUndefined();
    expect(decodeURIComponent(connect.headers['x-auth-sub'])).toBe('Łukasz');

    // Plain HTTP is `http: auth` by default on an auth route: the same claims, encoded the same way.
    const t2 = tag();
    const bearer = `Bearer ${await token({ sub: 'Łukasz', role: 'admin\r\nX-Injected: 1' })}`;
    await fetch(`${guard.httpUrl}/hello?tag=${t2}`, { headers: { 'X-Auth-Sub': 'admin', Authorization: bearer } });
    const [request] = await upstream.seen(t2);
    expect(request.headers['x-auth-sub']).toBe('%C5%81ukasz');
    expect(request.headers['x-auth-role']).toBe('admin%0D%0AX-Injected: 1');
    expect(request.headers['x-injected']).toBeUndefined();
  });
});

describe('one token, the one the guard checked', () => {
  it.each([
    ['the query parameter twice', async (good: string, forged: string) => ({ url: `?access_token=${good}&access_token=${forged}` })],
    ['the same token twice in the query', async (good: string) => ({ url: `?access_token=${good}&access_token=${good}` })],
    ['two access_token cookies', async (good: string, forged: string) => ({ headers: { Cookie: `access_token=${good}; access_token=${forged}` } })],
    ['a header token and a query token', async (good: string, forged: string) => ({ url: `?access_token=${forged}`, headers: { Authorization: `Bearer ${good}` } })],
    ['a protocol token and a cookie', async (good: string, forged: string) => ({ protocols: ['bearer', good], headers: { Cookie: `access_token=${forged}` } })],
  ])('%s → 401 TOKEN_INVALID, nothing reaches the app', async (_, make) => {
    const t = tag();
    const good = await token();
    const forged = await token({ sub: 'admin' });
    const { url = '', headers = {}, protocols } = await make(good, forged) as { url?: string; headers?: Record<string, string>; protocols?: string[] };
    const target = `${guard.wsUrl}/ws/echo${url === '' ? `?tag=${t}` : `${url}&tag=${t}`}`;
    expect(await refusal(target, protocols, { headers })).toMatchObject({ status: 401, code: 'TOKEN_INVALID' });
    expect(await upstream.seen(t)).toEqual([]);
  });

  it('two bearer pairs in Sec-WebSocket-Protocol → 401 TOKEN_INVALID, nothing reaches the app', async () => {
    const t = tag();
    const conn = await rawConnect(guard.port);
    conn.write(upgradeRequest(`/ws/echo?tag=${t}`, { 'Sec-WebSocket-Protocol': `bearer, ${await token()}, chat, bearer, ${await token({ sub: 'admin' })}` }));
    const res = await conn.readHttpResponse();
    conn.destroy();
    expect(res.status).toBe(401);
    expect(res.headers['x-ws-guard-error']).toBe('TOKEN_INVALID');
    expect(await upstream.seen(t)).toEqual([]);
  });

  it('a bearer marker is never forwarded, even when the protocol source is off for the route', async () => {
    const headerOnly = await startTestGuard({ upstream: upstream.url, auth: { jwt: { ...JWT, tokenSources: ['header'] } } });
    try {
      const t = tag();
      const ws = await open(`${headerOnly.wsUrl}/ws/echo?tag=${t}`, ['chat', 'bearer'], { headers: { Authorization: `Bearer ${await token()}` } });
      ws.close();
      expect((await connectEvent(t)).subprotocols).toEqual(['chat']);
    } finally {
      await headerOnly.close();
    }
  });
});

describe('identity keys are total', () => {
  let perUser: TestGuard;
  beforeAll(async () => {
    perUser = await startTestGuard({ upstream: upstream.url, auth: { jwt: JWT }, limits: { connections: { perUser: 1 } } });
  });
  afterAll(() => perUser?.close());

  it('a numeric sub is a user like its string form: per-user limits hold and it is forwarded', async () => {
    const t = tag();
    const first = await open(`${perUser.wsUrl}/ws/echo?tag=${t}`, ['bearer', await token({ sub: 12345 as unknown as string })]);
    expect((await connectEvent(t)).headers['x-auth-sub']).toBe('12345');
    expect(await refusal(`${perUser.wsUrl}/ws/echo`, ['bearer', await token({ sub: 12345 as unknown as string })]))
      .toMatchObject({ status: 429, code: 'CONNECTIONS_PER_USER' });
    expect(await refusal(`${perUser.wsUrl}/ws/echo`, ['bearer', await token({ sub: '12345' })]))
      .toMatchObject({ status: 429, code: 'CONNECTIONS_PER_USER' });
    first.close();
    await closed(first);
  });

  it('a sub that is an object or array is refused (403) where a per-user limit or forwardClaims needs it', async () => {
    for (const sub of [{ id: 1 }, ['alice']]) {
      const weird = await token({ sub: sub as unknown as string });
      expect(await refusal(`${perUser.wsUrl}/ws/echo`, ['bearer', weird])).toMatchObject({ status: 403, code: 'CLAIMS_INSUFFICIENT' });
      expect(await refusal(`${guard.wsUrl}/ws/echo`, ['bearer', weird])).toMatchObject({ status: 403, code: 'CLAIMS_INSUFFICIENT' });
    }
  });

  it('a token without sub, or with a sub beyond 2^53, is refused (403) where a per-user limit needs a user', async () => {
    const noRequired = await startTestGuard({
      upstream: upstream.url, auth: { jwt: { ...JWT, requiredClaims: [], forwardClaims: {} } }, limits: { connections: { perUser: 1 } },
    });
    try {
      expect(await refusal(`${noRequired.wsUrl}/ws/echo`, ['bearer', await token({ sub: undefined })]))
        .toMatchObject({ status: 403, code: 'CLAIMS_INSUFFICIENT' });
      // Signed by hand: JavaScript cannot even hold this number, JSON.parse rounds it to ...992.
      const b64 = (text: string) => Buffer.from(text).toString('base64url');
      const body = `${b64('{"alg":"HS256"}')}.${b64(`{"sub":9007199254740993,"aud":"chat","exp":${now() + 60}}`)}`;
      const huge = `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`;
      expect(await refusal(`${noRequired.wsUrl}/ws/echo`, ['bearer', huge])).toMatchObject({ status: 403, code: 'CLAIMS_INSUFFICIENT' });
      expect(await refusal(`${guard.wsUrl}/ws/echo`, ['bearer', huge])).toMatchObject({ status: 403, code: 'CLAIMS_INSUFFICIENT' });
    } finally {
      await noRequired.close();
    }
  });

  it('a sub that is an object is no obstacle where nothing needs a user', async () => {
    const plain = await startTestGuard({ upstream: upstream.url, auth: { jwt: { ...JWT, forwardClaims: {} } } });
    try {
      const ws = await open(`${plain.wsUrl}/ws/echo`, ['bearer', await token({ sub: { id: 1 } as unknown as string })]);
      ws.close();
      await closed(ws);
    } finally {
      await plain.close();
    }
  });
});

describe('forwarded identity', () => {
  it('client-sent copies of identity headers are removed, on upgrades and on plain HTTP', async () => {
    const t = tag();
    const ws = await open(`${guard.wsUrl}/ws/echo?tag=${t}`, ['bearer', await token({ role: ['a', 'b'] })], {
      headers: { 'X-Auth-Sub': 'admin', 'x-auth-role': 'root' },
    });
    ws.close();
    const connect = await connectEvent(t);
    expect(connect.headers['x-auth-sub']).toBe('alice');
    expect(connect.headers['x-auth-role']).toBe('["a","b"]');

    // Plain HTTP (`http: auth` by default on an auth route): the claim replaces the client's copy.
    const t2 = tag();
    await fetch(`${guard.httpUrl}/hello?tag=${t2}`, { headers: { 'X-Auth-Sub': 'admin', Authorization: `Bearer ${await token({})}` } });
    const [request] = await upstream.seen(t2);
    expect(request.headers['x-auth-sub']).toBe('alice');
    // On a route without auth (`http: pass`) a client's copy is removed and none is set.
    const t3 = tag();
    await fetch(`${guard.httpUrl}/ws/close?tag=${t3}`, { headers: { 'X-Auth-Sub': 'admin' } });
    const [unauthenticated] = await upstream.seen(t3);
    expect(unauthenticated.headers['x-auth-sub']).toBeUndefined();
  });
});

describe('live expiry', () => {
  it('closes the connection with 4001 when the token expires, and closes the upstream too', async () => {
    const t = tag();
    const ws = await open(`${guard.wsUrl}/ws/echo?tag=${t}`, ['bearer', await token({}, 2)]);
    ws.send('before expiry');
    expect(String(await new Promise((resolve) => ws.once('message', resolve)))).toBe('before expiry');
    expect((await closed(ws)).code).toBe(4001);
    await until(async () => (await upstream.seen(t)).some((e) => e.type === 'ws_disconnect'), 10_000);
    expect((await upstream.seen(t)).find((e) => e.type === 'ws_disconnect')).toMatchObject({ code: 4001 });
  });
});

describe('onReject: close', () => {
  let closing: TestGuard;
  beforeAll(async () => {
    closing = await startTestGuard({ upstream: upstream.url, auth: { jwt: { ...JWT, onReject: 'close' } } });
  });
  afterAll(() => closing.close());

  it('answers 101 and closes with 4001 / 4003 instead of a status; the upstream is never dialled', async () => {
    const t = tag();
    const bad = await open(`${closing.wsUrl}/ws/echo?tag=${t}`, ['bearer', 'bad.token.here']);
    expect(bad.protocol).toBe('bearer');
    expect(await closed(bad)).toEqual({ code: 4001, reason: 'invalid access token' });
    const noSub = await new SignJWT({ aud: 'chat', exp: now() + 60 }).setProtectedHeader({ alg: 'HS256' }).sign(new TextEncoder().encode(SECRET));
    const weak = await open(`${closing.wsUrl}/ws/echo?tag=${t}`, ['bearer', noSub]);
    expect((await closed(weak)).code).toBe(4003);
    expect(await upstream.seen(t)).toEqual([]);
  });
});

describe('routes', () => {
  it('auth: false lets a route through without a token', async () => {
    const ws = await open(`${guard.wsUrl}/ws/close?code=4100&reason=public`);
    expect((await closed(ws)).code).toBe(4100);
  });

  it('an encoded or doubled path cannot slip past a route (matched as the upstream will route it)', async () => {
    const t = tag();
    const push = await token({ aud: 'push' });
    expect(await refusal(`${guard.wsUrl}/ws/%70ush?tag=${t}&bytes=0`, ['bearer', await token()])).toMatchObject({ status: 401 });
    (await open(`${guard.wsUrl}/ws/%70ush?tag=${t}&bytes=0`, ['bearer', push])).close();
    for (const target of ['/ws%2Fpush', '//ws/push', '/ws/./push', '/ws/x/../push']) {
      const conn = await rawConnect(guard.port);
      conn.write(upgradeRequest(`${target}?tag=${t}`, { 'Sec-WebSocket-Protocol': `bearer, ${push}` }));
      const res = await conn.readHttpResponse();
      expect([res.status, res.headers['x-ws-guard-error']], target).toEqual([400, 'BAD_REQUEST']);
      conn.destroy();
    }
  });

  it('a per-route auth override applies there only', async () => {
    const t = tag();
    const chatToken = await token();
    expect(await refusal(`${guard.wsUrl}/ws/push?tag=${t}&bytes=0`, ['bearer', chatToken])).toMatchObject({ status: 401 });
    const ws = await open(`${guard.wsUrl}/ws/push?tag=${t}&bytes=0`, ['bearer', await token({ aud: 'push' })]);
    ws.close();
  });
});

describe('Origin allowlist', () => {
  let strict: TestGuard;
  beforeAll(async () => {
    strict = await startTestGuard({
      upstream: upstream.url,
      origins: ['https://app.example.com', 'https://*.example.org'],
      routes: [{ path: '/ws/close', allowNoOrigin: true }],
    });
  });
  afterAll(() => strict.close());

  it('allows listed origins and refuses the rest with 403 before the upstream is dialled', async () => {
    const t = tag();
    const url = `${strict.wsUrl}/ws/echo?tag=${t}`;
    (await open(url, undefined, { origin: 'https://app.example.com' })).close();
    (await open(url, undefined, { origin: 'https://eu.example.org' })).close();
    await until(async () => (await upstream.seen(t)).filter((e) => e.type === 'ws_connect').length === 2);
    const t2 = tag();
    const denied = `${strict.wsUrl}/ws/echo?tag=${t2}`;
    for (const origin of ['https://example.org.evil.com', 'https://example.org', 'null', 'http://app.example.com']) {
      expect(await refusal(denied, undefined, { origin }), origin).toMatchObject({ status: 403, code: 'ORIGIN_DENIED' });
    }
    expect(await refusal(denied)).toMatchObject({ status: 403, code: 'ORIGIN_DENIED' });
    expect(await upstream.seen(t2)).toEqual([]);
  });

  it('refuses duplicate Origin headers; a route may allow requests without Origin', async () => {
    const conn = await rawConnect(strict.port);
    conn.write(upgradeRequest('/ws/echo', ['Origin: https://app.example.com', 'Origin: https://app.example.com']));
    expect((await conn.readHttpResponse()).status).toBe(403);
    conn.destroy();
    const ws = await open(`${strict.wsUrl}/ws/close?code=4200`);
    expect((await closed(ws)).code).toBe(4200);
  });
});

describe('logs', () => {
  it('never contain a token, for accepted and rejected connections', async () => {
    const secretToken = await token({ sub: 'log-check' });
    const expired = await token({ sub: 'log-check' }, -30);
    const ws = await open(`${guard.wsUrl}/ws/echo?access_token=${secretToken}`);
    ws.close();
    await closed(ws);
    await refusal(`${guard.wsUrl}/ws/echo?access_token=${expired}`);
    const everywhere = { headers: { Authorization: `Bearer ${secretToken}`, Cookie: `access_token=${secretToken}` } };
    expect(await refusal(`${guard.wsUrl}/ws/echo?access_token=${secretToken}`, ['bearer', secretToken], everywhere))
      .toMatchObject({ status: 401, code: 'TOKEN_INVALID' });
    await until(() => guard.logs.some((l) => l.msg === 'connection closed' && l.user === 'log-check'));
    await until(() => guard.logs.filter((l) => l.msg === 'upgrade refused').length >= 2);
    const text = JSON.stringify(guard.logs);
    expect(text).not.toContain(secretToken);
    expect(text).not.toContain(expired);
    expect(text).not.toContain(SECRET);
    expect(text).toContain('access_token=%5Bredacted%5D');
  });
});
