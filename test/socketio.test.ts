import http from 'node:http';
import { SignJWT } from 'jose';
import type { Socket } from 'socket.io-client';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { guardPerSuite, startTestGuard, until } from './helpers/guard.js';
import {
  connected,
  echo,
  onTransport,
  refused,
  sioClient,
  startSocketIoApp,
  type SocketIoApp,
  type Transports,
} from './helpers/socketio.js';

// A real Socket.IO app (python-socketio 5 / python-engineio 4 under uvicorn, test/fixtures/socketio_app.py)
// behind ws-guard, driven by the real socket.io-client 4 over `polling` only, `websocket` only and the
// default polling-then-upgrade. The token travels where the guard reads it: the Authorization header
// (socket.io-client's `extraHeaders`, sent by the Node client on polling requests and on the WebSocket
// handshake alike) or the `access_token` query parameter (`query`, on every request). Socket.IO's own
// `auth: { token }` rides in the CONNECT packet, inside the session: the guard never sees it.

const SECRET = 'socketio-secret-long-enough-for-hs256-0123456789';
const JWT = { secret: SECRET, algorithms: ['HS256'], requiredClaims: ['sub'], forwardClaims: { sub: 'X-Auth-Sub' } };
const MODES: Array<[string, Transports]> = [
  ['polling only', ['polling']],
  ['websocket only', ['websocket']],
  ['polling, then the upgrade to websocket', ['polling', 'websocket']],
];

function token(sub = 'alice', ttlSeconds = 300): Promise<string> {
  return new SignJWT({ sub, exp: Math.floor(Date.now() / 1000) + ttlSeconds })
    .setProtectedHeader({ alg: 'HS256' })
    .sign(new TextEncoder().encode(SECRET));
}

let tagCount = 0;
const tag = () => `sio-${process.pid}-${++tagCount}`;

/** Every socket a test opens, closed after it. */
const sockets: Socket[] = [];
const track = (s: Socket) => (sockets.push(s), s);
afterEach(() => {
  for (const s of sockets.splice(0)) s.disconnect();
});

let app: SocketIoApp;
beforeAll(async () => {
  // python-engineio's default ping interval (25 s): an idle polling session's long poll is held that long.
  app = await startSocketIoApp();
});
afterAll(async () => {
  await app?.stop();
});

/** Connects, checks events flow both ways, and returns the socket and what the app saw for its tag. */
async function roundTrip(url: string, transports: Transports, options: Parameters<typeof sioClient>[3] = {}) {
  const t = tag();
  const socket = track(sioClient(url, t, transports, options));
  const welcome = await connected(socket); // app -> client, emitted by the app's connect handler
  if (transports.length > 1) await onTransport(socket, 'websocket');
  const payload = { n: 1, text: 'héllo', list: [1, 2, 3] };
  expect(await echo(socket, payload)).toEqual({ event: payload, ack: payload }); // client -> app -> client
  expect(await echo(socket, 'second')).toEqual({ event: 'second', ack: 'second' });
  expect(socket.io.engine.transport.name).toBe(transports.length > 1 ? 'websocket' : transports[0]);
  const seen = await app.seen(t);
  return { socket, welcome, seen, tag: t };
}

describe('the fixture and the client through a guard without auth', () => {
  const guard = guardPerSuite(() => ({ upstream: app.url }));

  it.each(MODES)('%s: connects, events flow both ways', async (_name, transports) => {
    const { welcome, seen } = await roundTrip(guard().httpUrl, transports);
    expect(welcome).toEqual({ sub: null, transport: transports[0] });
    expect(seen.events.map((e) => e.event)).toEqual(['connect', 'echo', 'echo']);
    const kinds = new Set(seen.requests.map((r) => `${r.type}:${r.transport}`));
    if (transports.length > 1) expect(kinds).toEqual(new Set(['http:polling', 'websocket:websocket']));
    else expect(kinds).toEqual(new Set([transports[0] === 'polling' ? 'http:polling' : 'websocket:websocket']));
  });
});

describe('behind a guard with JWT auth (http: auth)', () => {
  const guard = guardPerSuite(() => ({
      upstream: app.url,
      auth: { jwt: JWT },
      http: 'auth',
      // Room for a test's own traffic; the limits themselves are tested below with guards of their own.
      limits: {
        messages: { rate: '100/s', burst: 200 },
        requests: { rate: '100/s', burst: 200, per: 'ip', concurrent: 20, body: '1MiB' },
      },
    }));

  describe.each(MODES)('%s', (_name, transports) => {
    it('without a token: refused (401), nothing reaches the app', async () => {
      const t = tag();
      const err = await refused(track(sioClient(guard().httpUrl, t, transports)));
      // The first request is refused: the polling handshake GET, or the WebSocket upgrade.
      if (transports[0] === 'polling') expect(err.description).toBe(401);
      else expect(String((err.description as { message?: string })?.message ?? err.description)).toMatch(/\b401\b/);
      expect((await app.seen(t)).requests).toEqual([]);
    });

    it('with a bad token: refused (401), nothing reaches the app', async () => {
      const t = tag();
      const forged = (await token()).slice(0, -2) + 'xx';
      const err = await refused(track(sioClient(guard().httpUrl, t, transports, { extraHeaders: { Authorization: `Bearer ${forged}` } })));
      if (transports[0] === 'polling') expect(err.description).toBe(401);
      expect((await app.seen(t)).requests).toEqual([]);
    });

    it('token in the Authorization header (extraHeaders): events flow both ways, the app sees X-Auth-Sub on every request', async () => {
      const jwt = await token('alice');
      // A client-supplied X-Auth-Sub is a spoof: the guard replaces it with the token's sub. So is X_Auth_Sub,
      // which python-engineio's environ folds into the same HTTP_X_AUTH_SUB the recipe tells the app to read.
      const { welcome, seen } = await roundTrip(guard().httpUrl, transports, {
        extraHeaders: { Authorization: `Bearer ${jwt}`, 'X-Auth-Sub': 'mallory', X_Auth_Sub: 'mallory' },
      });
      expect(welcome).toEqual({ sub: 'alice', transport: transports[0] });
      expect(seen.events.filter((e) => e.event === 'connect')).toMatchObject([{ xAuthSub: 'alice', environXAuthSub: 'alice' }]);
      expect(seen.requests.length).toBeGreaterThan(0);
      for (const r of seen.requests) expect(r.xAuthSub, `${r.type} ${r.method} ${r.transport}`).toBe('alice');
    });

    it('token in the access_token query parameter: events flow both ways, the app sees X-Auth-Sub', async () => {
      const jwt = await token('bob');
      const { welcome, seen } = await roundTrip(guard().httpUrl, transports, { query: { access_token: jwt } });
      expect(welcome).toEqual({ sub: 'bob', transport: transports[0] });
      for (const r of seen.requests) expect(r.xAuthSub, `${r.type} ${r.method} ${r.transport}`).toBe('bob');
    });
  });

  it("Socket.IO's own auth payload is not a token the guard sees: refused", async () => {
    const t = tag();
    const err = await refused(track(sioClient(guard().httpUrl, t, ['polling'], { auth: { token: await token() } })));
    expect(err.description).toBe(401);
    expect((await app.seen(t)).requests).toEqual([]);
  });
});

describe('a token that expires mid-session (the docs/auth.md recipe: a fresh token in socket.io.opts.query)', () => {
  const guard = guardPerSuite(() => ({ upstream: app.url, auth: { jwt: JWT }, http: 'auth' }));

  it.each([
    ['polling only: the next request after exp gets 401', ['polling'] as Transports, 'transport error'],
    ['websocket only: closed with 4001 at exp', ['websocket'] as Transports, 'transport close'],
  ])('%s; the client reconnects with the fresh token', async (_name, transports, reason) => {
    const t = tag();
    const socket = track(
      sioClient(guard().httpUrl, t, transports, {
        query: { access_token: await token('frank', 3) },
        reconnection: true,
        reconnectionDelay: 100,
        reconnectionDelayMax: 200,
      }),
    );
    await connected(socket);
    const firstSid = socket.id;
    // What the page does ahead of expiry: the Manager builds the next session from these options.
    (socket.io.opts.query as Record<string, string>).access_token = await token('frank', 300);
    const gone = new Promise<string>((resolve) => socket.once('disconnect', (r) => resolve(r)));
    const back = new Promise<unknown>((resolve) => socket.io.once('reconnect', resolve));
    await new Promise((r) => setTimeout(r, 3_300));
    if (transports[0] === 'polling') socket.emit('echo', 'after exp'); // an idle poll would wait for the ping
    expect(await gone).toBe(reason);
    await back;
    expect(socket.id).not.toBe(firstSid);
    expect(await echo(socket, 'renewed')).toEqual({ event: 'renewed', ack: 'renewed' });
    if (transports[0] === 'polling') expect(guard().logs).toContainEqual(expect.objectContaining({ code: 'TOKEN_EXPIRED', status: 401 }));
    else expect(guard().logs).toContainEqual(expect.objectContaining({ msg: 'connection closed', user: 'frank', closeCode: 4001 }));
  }, 15_000);
});

describe('the message rate limit holds on the websocket transport', () => {
  // The guard counts Engine.IO packets, each a WebSocket message: the CONNECT packet, every event, every pong
  // (one per ping interval), and on an upgrade the probe and the upgrade packet.
  const guard = guardPerSuite(() => ({
      upstream: app.url,
      auth: { jwt: JWT },
      limits: { messages: { rate: '1/minute', burst: 10, per: 'connection', onExceed: 'close' } },
    }));

  it.each([
    ['websocket only', ['websocket'] as Transports],
    ['after the upgrade from polling', ['polling', 'websocket'] as Transports],
  ])('%s: a burst past the limit closes the connection with 1008', async (_name, transports) => {
    const t = tag();
    const socket = track(sioClient(guard().httpUrl, t, transports, { extraHeaders: { Authorization: `Bearer ${await token('carol')}` } }));
    await connected(socket);
    if (transports.length > 1) await onTransport(socket, 'websocket');
    const gone = new Promise<string>((resolve) => socket.once('disconnect', (reason) => resolve(reason)));
    for (let i = 0; i < 30; i++) socket.emit('echo', i);
    expect(await gone).toBe('transport close');
    await until(() => guard().logs.some((l) => l.msg === 'connection closed' && l.user === 'carol' && l.reason === 'MESSAGE_RATE'));
    expect(guard().logs.find((l) => l.msg === 'connection closed' && l.user === 'carol' && l.reason === 'MESSAGE_RATE')).toMatchObject({
      closeCode: 1008,
      closedBy: 'guard',
    });
    guard().logs.length = 0;
    const echoes = (await app.seen(t)).events.filter((e) => e.event === 'echo');
    expect(echoes.length).toBeGreaterThan(0);
    expect(echoes.length).toBeLessThan(10); // the burst, less the CONNECT packet (and the upgrade's packets)
    expect(echoes.map((e) => e.data)).toEqual(echoes.map((_e, i) => i)); // in order, none skipped
  });
});

describe('the request rate holds on the polling transport', () => {
  const guard = guardPerSuite(() => ({
      upstream: app.url,
      auth: { jwt: JWT },
      http: 'auth',
      limits: { requests: { rate: '1/minute', burst: 8, per: 'user', concurrent: 20, body: '1MiB' } },
    }));

  it('polls and posts past the burst get 429 + Retry-After; the session ends; another user is unaffected', async () => {
    const t = tag();
    const jwt = await token('dave');
    const socket = track(sioClient(guard().httpUrl, t, ['polling'], { extraHeaders: { Authorization: `Bearer ${jwt}` } }));
    await connected(socket);
    const gone = new Promise<string>((resolve) => socket.once('disconnect', (reason) => resolve(reason)));
    // Every emit is a POST (and the answer comes on a poll GET): the burst of 8 runs out within a few.
    for (let i = 0; i < 10; i++) {
      socket.emit('echo', i);
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(await gone).toBe('transport error');
    const seen = await app.seen(t);
    expect(seen.requests.length).toBeLessThanOrEqual(8);
    // The next request of the same user is refused before the app: 429 with Retry-After.
    const before = seen.requests.length;
    const res = await get(`${guard().httpUrl}/socket.io/?EIO=4&transport=polling&tag=${t}`, { authorization: `Bearer ${jwt}` });
    expect(res.status).toBe(429);
    expect(Number(res.headers['retry-after'])).toBeGreaterThan(0);
    expect((await app.seen(t)).requests.length).toBe(before);
    // per: user — another user's session from the same address still works.
    await roundTrip(guard().httpUrl, ['polling'], { extraHeaders: { Authorization: `Bearer ${await token('erin')}` } });
  });
});

describe('an idle polling session survives', () => {
  // Default timeouts on purpose: the long poll must outlive them.
  const guard = guardPerSuite(() => ({ upstream: app.url, auth: { jwt: JWT }, http: 'auth' }));

  it('with a short ping interval (1 s): several ping cycles idle, then events still flow', async () => {
    const fast = await startSocketIoApp({ pingInterval: 1, pingTimeout: 5 });
    const g = await startTestGuard({ upstream: fast.url, auth: { jwt: JWT }, http: 'auth' });
    try {
      const t = tag();
      const socket = track(sioClient(g.httpUrl, t, ['polling'], { extraHeaders: { Authorization: `Bearer ${await token()}` } }));
      await connected(socket);
      let dropped: string | undefined;
      socket.once('disconnect', (reason) => (dropped = reason));
      await new Promise((r) => setTimeout(r, 4_000));
      expect(dropped).toBeUndefined();
      expect(await echo(socket, 'still here')).toEqual({ event: 'still here', ack: 'still here' });
      const held = (await fast.seen(t)).requests.filter((r) => r.method === 'GET' && (r.ms ?? 0) >= 800);
      expect(held.length).toBeGreaterThanOrEqual(2); // long polls held until the ping answered them
      expect((await fast.seen(t)).requests.every((r) => r.status === null || r.status === 200)).toBe(true);
    } finally {
      await g.close();
      await fast.stop();
    }
  }, 20_000);

  // SLOW (~30 s): python-engineio's default ping interval, 25 s. Each long poll is held that long by the app;
  // the guard's plain-HTTP upstream deadline must let it through (nginx's proxy_read_timeout is 60 s).
  it('[slow, ~30 s] with the default ping interval (25 s): idle 30 s, no 504, then events still flow', async () => {
    const t = tag();
    const socket = track(sioClient(guard().httpUrl, t, ['polling'], { extraHeaders: { Authorization: `Bearer ${await token()}` } }));
    await connected(socket);
    let dropped: string | undefined;
    socket.once('disconnect', (reason) => (dropped = reason));
    await new Promise((r) => setTimeout(r, 30_000));
    expect(dropped).toBeUndefined();
    expect(await echo(socket, 'after 30 s')).toEqual({ event: 'after 30 s', ack: 'after 30 s' });
    const seen = await app.seen(t);
    // The app held a poll ~25 s and answered it 200 (its ping); the client got it and polled again.
    expect(seen.requests.some((r) => r.method === 'GET' && r.status === 200 && (r.ms ?? 0) >= 20_000)).toBe(true);
    expect(guard().logs.some((l) => l.status === 504)).toBe(false);
  }, 45_000);
});

function get(url: string, headers: Record<string, string>): Promise<{ status: number; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers }));
    });
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error(`GET ${url} timed out`)));
  });
}
