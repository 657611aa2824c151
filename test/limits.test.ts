import { readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { once } from 'node:events';
import { deflateRawSync } from 'node:zlib';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type WebSocket from 'ws';
import { parseConfig } from '../src/config/load.js';
import { ERRORS } from '../src/errors.js';
import { closed, freePort, nextMessage, open } from './helpers/clients.js';
import { startTestGuard, until, type TestGuard } from './helpers/guard.js';
import { Op, RawConn, acceptFor, frame, untilClose, upgradeRequest, type Frame } from './helpers/raw.js';
import { startUpstream, type Upstream } from './helpers/upstream.js';

/*
 * Every limit against the real FastAPI upstream: the exact answer the client gets (status and
 * X-WS-Guard-Error before the upgrade, close code after it) and what reached the upstream, read back with
 * `upstream.seen(tag)`. No assertion depends on how long something took; every wait is bounded.
 */

const SECRET = 'limits-integration-secret-long-enough-for-hs256-0123456789';
let upstream: Upstream;
let count = 0;
const tag = (what: string) => `limits-${process.pid}-${++count}-${what}`;

/** Everything a test starts (guards, clients, fake servers), undone after it, newest first. */
const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const undo of cleanups.splice(0).reverse()) await undo();
});

beforeAll(async () => {
  upstream = await startUpstream();
});
afterAll(async () => {
  await upstream?.stop();
});

async function guardWith(config: Record<string, unknown>): Promise<TestGuard> {
  const g = await startTestGuard({ upstream: upstream.url, ...config });
  cleanups.push(() => g.close());
  return g;
}

async function client(url: string, protocols?: string[], options: WebSocket.ClientOptions = {}): Promise<WebSocket> {
  const ws = await open(url, protocols, options);
  cleanups.push(() => ws.terminate());
  return ws;
}

type Refusal = { status: number; headers: Record<string, string> };
/** The HTTP answer of a refused upgrade; fails the test if the upgrade succeeded. */
async function refusal(url: string, protocols?: string[], options: WebSocket.ClientOptions = {}): Promise<Refusal> {
  return open(url, protocols, options).then(
    (ws) => {
      ws.terminate();
      throw new Error(`expected ${url} to be refused`);
    },
    (err: Refusal) => err,
  );
}

/** A raw client (optionally from another loopback address), its upgrade sent and its answer read. */
async function rawUpgrade(port: number, path: string, headers?: Record<string, string>, localAddress?: string) {
  const conn = await rawSocket(port, localAddress);
  conn.write(upgradeRequest(path, headers));
  return { conn, res: await conn.readHttpResponse() };
}

async function rawSocket(port: number, localAddress?: string): Promise<RawConn> {
  const socket = net.connect({ port, host: '127.0.0.1', localAddress });
  await once(socket, 'connect');
  const conn = new RawConn(socket);
  cleanups.push(() => conn.destroy());
  return conn;
}

const seen = (t: string) => upstream.seen(t);
async function texts(t: string): Promise<string[]> {
  return (await seen(t)).filter((e) => e.type === 'ws_text').map((e) => e.data as string);
}
/** Lengths of the text messages the upstream received (it records only the first 200 characters). */
async function lengths(t: string): Promise<number[]> {
  return (await seen(t)).filter((e) => e.type === 'ws_text').map((e) => e.len as number);
}
/** The close code the upstream app got (its ws_disconnect), waiting for it. */
async function upstreamCloseCode(t: string): Promise<number> {
  await until(async () => (await seen(t)).some((e) => e.type === 'ws_disconnect'), 5000, `the upstream to see ${t} end`);
  return (await seen(t)).find((e) => e.type === 'ws_disconnect').code as number;
}
const connected = async (t: string) => (await seen(t)).some((e) => e.type === 'ws_connect');

const token = (sub: string) =>
  new SignJWT({ sub }).setProtectedHeader({ alg: 'HS256' }).setExpirationTime('1h').sign(new TextEncoder().encode(SECRET));
const JWT = { jwt: { secret: SECRET, algorithms: ['HS256'] } };

/** Collects every message a `ws` client receives, as text. */
function collect(ws: WebSocket): string[] {
  const got: string[] = [];
  ws.on('message', (data) => got.push(String(data)));
  return got;
}

/** An echo round trip: the connection is open and forwarding both ways. */
async function roundTrip(ws: WebSocket, text: string): Promise<void> {
  const reply = nextMessage(ws);
  ws.send(text);
  expect(String((await reply).data)).toBe(text);
}

describe('message rate', () => {
  it('onExceed: close: 8 messages sent at once → the first 5 reach the upstream, then 1008 on both sides; pings are not counted', async () => {
    const g = await guardWith({ limits: { messages: { rate: '5/minute', burst: 5, onExceed: 'close' } } });
    const t = tag('rate-close');
    const ws = await client(`${g.wsUrl}/ws/echo?tag=${t}`);
    const got = collect(ws);
    const done = closed(ws);
    // A ping in front of each of the first five: counted, they would leave tokens for only m0 and m1.
    for (let i = 0; i < 8; i++) {
      if (i < 5) ws.ping();
      ws.send(`m${i}`);
    }
    expect(await done).toEqual({ code: 1008, reason: ERRORS.MESSAGE_RATE.message });
    expect(await upstreamCloseCode(t)).toBe(1008);
    expect(await texts(t)).toEqual(['m0', 'm1', 'm2', 'm3', 'm4']);
    // The guard's close goes out at once; echoes still on their way back are not forwarded after it
    // (RFC 6455 §5.5.1), so the client has some prefix of the five echoes, never a sixth.
    expect(['m0', 'm1', 'm2', 'm3', 'm4'].slice(0, got.length)).toEqual(got);
  });

  it('a client that waits for its echoes gets exactly 5 of them, 5 pongs, then 1008', async () => {
    const g = await guardWith({ limits: { messages: { rate: '5/minute', burst: 5, onExceed: 'close' } } });
    const t = tag('rate-close-paced');
    const ws = await client(`${g.wsUrl}/ws/echo?tag=${t}`);
    const got = collect(ws);
    let pongs = 0;
    ws.on('pong', () => pongs++);
    for (let i = 0; i < 5; i++) {
      ws.ping();
      ws.send(`m${i}`);
    }
    await until(() => got.length === 5 && pongs === 5, 5000, '5 echoes and 5 pongs');
    const done = closed(ws);
    for (let i = 5; i < 8; i++) ws.send(`m${i}`);
    expect((await done).code).toBe(1008);
    expect(got).toEqual(['m0', 'm1', 'm2', 'm3', 'm4']);
    expect(await upstreamCloseCode(t)).toBe(1008);
    expect(await texts(t)).toEqual(['m0', 'm1', 'm2', 'm3', 'm4']);
  });

  it('a message in 3 fragments (a ping between them) counts once', async () => {
    const g = await guardWith({ limits: { messages: { rate: '5/minute', burst: 5 } } });
    const t = tag('rate-fragments');
    const { conn, res } = await rawUpgrade(g.port, `/ws/echo?tag=${t}`);
    expect(res.status).toBe(101);
    conn.write(Buffer.concat([
      frame({ opcode: Op.TEXT, fin: false, payload: 'a' }),
      frame({ opcode: Op.PING, payload: 'p' }),
      frame({ opcode: Op.CONTINUATION, fin: false, payload: 'b' }),
      frame({ opcode: Op.CONTINUATION, payload: 'c' }),
      ...['m1', 'm2', 'm3', 'm4', 'm5'].map((m) => frame({ opcode: Op.TEXT, payload: m })),
    ]));
    const { frames, close } = await untilClose(conn);
    expect(close.closeCode).toBe(1008);
    const echoes = frames.filter((f) => f.opcode === Op.TEXT).map((f) => f.payload.toString());
    expect(['abc', 'm1', 'm2', 'm3', 'm4'].slice(0, echoes.length)).toEqual(echoes);
    expect(await upstreamCloseCode(t)).toBe(1008);
    expect(await texts(t)).toEqual(['abc', 'm1', 'm2', 'm3', 'm4']);
  });

  it('onExceed: throttle: 10 messages at once all arrive, in order, none lost, no close', async () => {
    const g = await guardWith({ limits: { messages: { rate: '20/s', burst: 2, onExceed: 'throttle' } } });
    const t = tag('throttle');
    const ws = await client(`${g.wsUrl}/ws/echo?tag=${t}`);
    const got = collect(ws);
    let closedEarly = false;
    ws.once('close', () => (closedEarly = true));
    const sent = Array.from({ length: 10 }, (_, i) => `t${i}`);
    for (const m of sent) ws.send(m);
    // Held back by the guard, not by the client: right after sending, the upstream has not seen them all.
    expect((await texts(t)).length).toBeLessThan(10);
    await until(() => got.length === 10, 10_000, 'all 10 echoes');
    expect(got).toEqual(sent);
    expect(await texts(t)).toEqual(sent);
    expect(closedEarly).toBe(false);
    await roundTrip(ws, 'still open');
    ws.close(1000);
    expect(await upstreamCloseCode(t)).toBe(1000);
  });

  it('per: user: the connections of one user (JWT sub) share a bucket; another user has his own', async () => {
    const g = await guardWith({ auth: JWT, limits: { messages: { rate: '3/minute', burst: 3, per: 'user' } } });
    const [t1, t2, tb] = [tag('alice-1'), tag('alice-2'), tag('bob')];
    const alice = await token('alice');
    const a1 = await client(`${g.wsUrl}/ws/echo?tag=${t1}`, ['bearer', alice]);
    const a2 = await client(`${g.wsUrl}/ws/echo?tag=${t2}`, ['bearer', alice]);
    const bob = await client(`${g.wsUrl}/ws/echo?tag=${tb}`, ['bearer', await token('bob')]);
    await roundTrip(a1, 'a1-1');
    await roundTrip(a1, 'a1-2');
    await roundTrip(a2, 'a2-1');
    const a2closed = closed(a2);
    a2.send('a2-2');
    expect((await a2closed).code).toBe(1008);
    expect(await upstreamCloseCode(t2)).toBe(1008);
    expect(await texts(t2)).toEqual(['a2-1']);
    for (const m of ['b1', 'b2', 'b3']) await roundTrip(bob, m);
    expect(await texts(tb)).toEqual(['b1', 'b2', 'b3']);
    expect(await texts(t1)).toEqual(['a1-1', 'a1-2']);
  });

  it('per: ip: the connections of one client address share a bucket; another address has its own', async () => {
    const g = await guardWith({ limits: { messages: { rate: '3/minute', burst: 3, per: 'ip' } } });
    const [t1, t2, t3] = [tag('ip2-a'), tag('ip2-b'), tag('ip3')];
    const a = await client(`${g.wsUrl}/ws/echo?tag=${t1}`, undefined, { localAddress: '127.0.0.2' });
    const b = await client(`${g.wsUrl}/ws/echo?tag=${t2}`, undefined, { localAddress: '127.0.0.2' });
    const other = await client(`${g.wsUrl}/ws/echo?tag=${t3}`, undefined, { localAddress: '127.0.0.3' });
    await roundTrip(a, 'a1');
    await roundTrip(b, 'b1');
    await roundTrip(a, 'a2');
    const bClosed = closed(b);
    b.send('b2');
    expect((await bClosed).code).toBe(1008);
    expect(await upstreamCloseCode(t2)).toBe(1008);
    expect(await texts(t2)).toEqual(['b1']);
    for (const m of ['o1', 'o2', 'o3']) await roundTrip(other, m);
    expect(await texts(t3)).toEqual(['o1', 'o2', 'o3']);
  });
});

describe('message size', () => {
  it('1024 bytes pass; 1025 → 1009 and the upstream never sees it', async () => {
    const g = await guardWith({ limits: { messageSize: '1KiB' } });
    const t = tag('size');
    const ws = await client(`${g.wsUrl}/ws/echo?tag=${t}`, undefined, { perMessageDeflate: false });
    await roundTrip(ws, 'x'.repeat(1024));
    const done = closed(ws);
    ws.send('y'.repeat(1025));
    expect(await done).toEqual({ code: 1009, reason: ERRORS.MESSAGE_TOO_BIG.message });
    expect(await upstreamCloseCode(t)).toBe(1009);
    expect(await lengths(t)).toEqual([1024]);
  });

  it('summed over fragments: 3 × 400 bytes → 1009 at the third; nothing of the message reaches the upstream', async () => {
    const g = await guardWith({ limits: { messageSize: '1KiB' } });
    const t = tag('size-fragments');
    const { conn, res } = await rawUpgrade(g.port, `/ws/echo?tag=${t}`);
    expect(res.status).toBe(101);
    conn.write(frame({ opcode: Op.TEXT, payload: 'before' }));
    expect((await conn.readFrame()).payload.toString()).toBe('before');
    conn.write(frame({ opcode: Op.TEXT, fin: false, payload: 'a'.repeat(400) }));
    conn.write(frame({ opcode: Op.CONTINUATION, fin: false, payload: 'b'.repeat(400) }));
    // Still open after 800 bytes: a ping inside the message is answered by the upstream.
    conn.write(frame({ opcode: Op.PING, payload: 'alive' }));
    const pong = await conn.readFrame();
    expect({ opcode: pong.opcode, payload: pong.payload.toString() }).toEqual({ opcode: Op.PONG, payload: 'alive' });
    conn.write(frame({ opcode: Op.CONTINUATION, payload: 'c'.repeat(400) }));
    const { frames, close } = await untilClose(conn);
    expect(frames).toEqual([]);
    expect({ code: close.closeCode, reason: close.closeReason }).toEqual({ code: 1009, reason: ERRORS.MESSAGE_TOO_BIG.message });
    expect(await upstreamCloseCode(t)).toBe(1009);
    expect(await texts(t)).toEqual(['before']);
  });

  it('permessage-deflate: measured inflated — 1024 passes, 1025 → 1009, and a 64 KiB message of a few compressed bytes → 1009; the upstream never sees them', async () => {
    const g = await guardWith({ limits: { messageSize: '1KiB' } });
    const deflate = { perMessageDeflate: { threshold: 0 } };

    const t = tag('deflate-edge');
    const ws = await client(`${g.wsUrl}/ws/echo?tag=${t}`, undefined, deflate);
    expect(ws.extensions).toMatch(/permessage-deflate/);
    await roundTrip(ws, 'x'.repeat(1024));
    const done = closed(ws);
    ws.send('x'.repeat(1025));
    expect((await done).code).toBe(1009);
    expect(await upstreamCloseCode(t)).toBe(1009);
    expect(await lengths(t)).toEqual([1024]);

    // Under the limit on the wire, 64 times over it inflated: only the inflated check can refuse it.
    const bomb = 'y'.repeat(64 * 1024);
    expect(deflateRawSync(bomb).length).toBeLessThan(1024);
    const t2 = tag('deflate-bomb');
    const ws2 = await client(`${g.wsUrl}/ws/echo?tag=${t2}`, undefined, deflate);
    await roundTrip(ws2, 'small');
    const done2 = closed(ws2);
    ws2.send(bomb);
    expect(await done2).toEqual({ code: 1009, reason: ERRORS.MESSAGE_TOO_BIG.message });
    expect(await upstreamCloseCode(t2)).toBe(1009);
    expect(await texts(t2)).toEqual(['small']);
  });
});

describe('fragments', () => {
  it('maxFragments: 5 → a 5-fragment message passes; the sixth fragment → 1009 TOO_MANY_FRAGMENTS, nothing of it reaches the upstream', async () => {
    const g = await guardWith({ limits: { maxFragments: 5 } });
    const t = tag('fragments');
    const { conn, res } = await rawUpgrade(g.port, `/ws/echo?tag=${t}`);
    expect(res.status).toBe(101);
    const message = (parts: number, last: boolean) => Buffer.concat(Array.from({ length: parts }, (_, i) =>
      frame({ opcode: i === 0 ? Op.TEXT : Op.CONTINUATION, fin: last && i === parts - 1, payload: String(i + 1) })));
    conn.write(message(5, true));
    expect((await conn.readFrame()).payload.toString()).toBe('12345');
    conn.write(message(6, false));
    const { frames, close } = await untilClose(conn);
    expect(frames).toEqual([]);
    expect({ code: close.closeCode, reason: close.closeReason }).toEqual({ code: 1009, reason: ERRORS.TOO_MANY_FRAGMENTS.message });
    expect(await upstreamCloseCode(t)).toBe(1009);
    expect(await texts(t)).toEqual(['12345']);
    await until(() => g.logs.some((l) => l.msg === 'connection closed'));
    expect(g.logs.find((l) => l.msg === 'connection closed')).toMatchObject({ reason: 'TOO_MANY_FRAGMENTS', closeCode: 1009, closedBy: 'guard' });
  });
});

describe('connection slots', () => {
  it('total: 2 → the third gets 503 CONNECTIONS_FULL with Retry-After; the upstream never sees it; a freed slot is taken again', async () => {
    const g = await guardWith({ limits: { connections: { total: 2 } } });
    const a = await client(`${g.wsUrl}/ws/echo?tag=${tag('total-a')}`);
    await client(`${g.wsUrl}/ws/echo?tag=${tag('total-b')}`);
    const t = tag('total-refused');
    expect(await refusal(`${g.wsUrl}/ws/echo?tag=${t}`)).toMatchObject({
      status: 503, headers: { 'x-ws-guard-error': 'CONNECTIONS_FULL', 'retry-after': '5' },
    });
    expect(await seen(t)).toEqual([]);
    expect(g.store.count('').total).toBe(2);
    a.close();
    await until(() => g.store.count('').total === 1, 5000, 'a slot to come back');
    await roundTrip(await client(`${g.wsUrl}/ws/echo`), 'took the freed slot');
  });

  it('perIp: 1 → 429 CONNECTIONS_PER_IP; another address passes', async () => {
    const g = await guardWith({ limits: { connections: { perIp: 1 } } });
    await client(`${g.wsUrl}/ws/echo`, undefined, { localAddress: '127.0.0.2' });
    const t = tag('per-ip-refused');
    expect(await refusal(`${g.wsUrl}/ws/echo?tag=${t}`, undefined, { localAddress: '127.0.0.2' })).toMatchObject({
      status: 429, headers: { 'x-ws-guard-error': 'CONNECTIONS_PER_IP', 'retry-after': '5' },
    });
    expect(await seen(t)).toEqual([]);
    await roundTrip(await client(`${g.wsUrl}/ws/echo`, undefined, { localAddress: '127.0.0.3' }), 'other address');
    expect(g.store.count('')).toEqual({ total: 2, ips: 2, users: 0 });
  });

  it('perUser: 1 (JWT sub) → 429 CONNECTIONS_PER_USER; a different user passes', async () => {
    const g = await guardWith({ auth: JWT, limits: { connections: { perUser: 1 } } });
    await client(`${g.wsUrl}/ws/echo`, ['bearer', await token('carol')]);
    const t = tag('per-user-refused');
    expect(await refusal(`${g.wsUrl}/ws/echo?tag=${t}`, ['bearer', await token('carol')])).toMatchObject({
      status: 429, headers: { 'x-ws-guard-error': 'CONNECTIONS_PER_USER', 'retry-after': '5' },
    });
    expect(await seen(t)).toEqual([]);
    await roundTrip(await client(`${g.wsUrl}/ws/echo`, ['bearer', await token('dave')]), 'dave');
    expect(g.store.count('')).toEqual({ total: 2, ips: 1, users: 2 });
  });

  it('warnAt: 0.5 of 10 → one warning when usage crosses the mark, not one per connection', async () => {
    const g = await guardWith({ limits: { connections: { total: 10, warnAt: 0.5 } } });
    const warnings = () => g.logs.filter((l) => l.msg === 'connection slots nearly exhausted');
    const sockets: WebSocket[] = [];
    for (let i = 0; i < 4; i++) sockets.push(await client(`${g.wsUrl}/ws/echo`));
    expect(warnings()).toEqual([]);
    for (let i = 0; i < 4; i++) sockets.push(await client(`${g.wsUrl}/ws/echo`));
    expect(warnings()).toEqual([expect.objectContaining({ level: 40, pool: '(all)', usage: 0.5, warnAt: 0.5 })]);
    // Back under the mark and over it again: a second crossing, a second line.
    for (const ws of sockets.splice(0)) ws.close();
    await until(() => g.store.count('').total === 0, 5000, 'every slot back');
    for (let i = 0; i < 5; i++) sockets.push(await client(`${g.wsUrl}/ws/echo`));
    expect(warnings()).toHaveLength(2);
  });
});

/**
 * Whether the guard still has its end of the TCP connection from a client's local port (in any state but
 * TIME_WAIT, which it never enters as the side that closes second). From the kernel's table, so it says
 * when the guard is done with a client that left, whatever the guard did meanwhile (Linux only, as the
 * rest of these tests).
 */
function guardHolds(guardPort: number, clientPort: number): boolean {
  const hex = (port: number) => port.toString(16).toUpperCase().padStart(4, '0');
  const local = `0100007F:${hex(guardPort)}`;
  const remote = `0100007F:${hex(clientPort)}`;
  return readFileSync('/proc/net/tcp', 'utf8').split('\n').some((line) => {
    const [, l, r, state] = line.trim().split(/\s+/);
    return l === local && r === remote && state !== '06';
  });
}

/** A fake upstream that accepts TCP and reads the handshake; it answers 101 only when told to (or never). */
async function fakeUpstream() {
  const sockets: net.Socket[] = [];
  const waiting: { socket: net.Socket; key: string }[] = [];
  const server = net.createServer((socket) => {
    sockets.push(socket);
    socket.on('error', () => {});
    let head = '';
    socket.on('data', (d) => {
      head += d.toString('latin1');
      const key = /^sec-websocket-key:\s*(\S+)/im.exec(head)?.[1];
      if (head.includes('\r\n\r\n') && key !== undefined && !waiting.some((w) => w.socket === socket)) waiting.push({ socket, key });
    });
    socket.on('end', () => socket.end());
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const fake = {
    url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    /** Handshakes received and not yet answered. */
    waiting,
    /** Every connection the guard made, open or not. */
    sockets,
    answer() {
      for (const { socket, key } of waiting.splice(0)) {
        if (!socket.destroyed) socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptFor(key)}\r\n\r\n`);
      }
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
  cleanups.push(fake.close);
  return fake;
}

/** A JWKS endpoint that answers only when released, so a handshake can be caught waiting for it. */
async function slowJwks() {
  const pair = await generateKeyPair('ES256', { extractable: true });
  const jwk = { ...(await exportJWK(pair.publicKey)), kid: 'slow-1', alg: 'ES256', use: 'sig' };
  const held: http.ServerResponse[] = [];
  let released = false;
  let requests = 0;
  let answered = 0;
  const reply = (res: http.ServerResponse) => {
    res.once('finish', () => answered++);
    res.setHeader('Content-Type', 'application/json');
    res.end(JSON.stringify({ keys: [jwk] }));
  };
  const server = http.createServer((_req, res) => {
    requests++;
    if (released) reply(res);
    else held.push(res);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  cleanups.push(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });
  return {
    url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/jwks`,
    requests: () => requests,
    answered: () => answered,
    release() {
      released = true;
      for (const res of held.splice(0)) reply(res);
    },
    token: (sub: string) =>
      new SignJWT({ sub }).setProtectedHeader({ alg: 'ES256', kid: 'slow-1' }).setExpirationTime('1h').sign(pair.privateKey),
  };
}

/**
 * Slots come back on every way out. Each case runs on a guard with `connections.total: 1` and ends with
 * the count back at 0 and a new connection taking the slot (a real echo round trip).
 */
describe('slots come back on every exit path', () => {
  const LIMITS = { connections: { total: 1 } };
  async function slotGuard(config: Record<string, unknown> = {}) {
    return guardWith({ limits: LIMITS, ...config });
  }
  async function slotIsFree(g: TestGuard): Promise<void> {
    await until(() => g.store.count('').total === 0, 5000, 'the slot to come back');
    const ws = await client(`${g.wsUrl}/ws/echo`);
    await roundTrip(ws, 'the slot is free');
    ws.close();
    await until(() => g.store.count('').total === 0, 5000, 'the slot to come back after the check');
  }
  /** Points the guard at the real upstream again (the store, and so the counts, outlive a reload). */
  function backToRealUpstream(g: TestGuard) {
    g.guard.reload(parseConfig({ listen: '127.0.0.1:0', upstream: upstream.url, limits: LIMITS }, {}));
  }

  it('normal close', async () => {
    const g = await slotGuard();
    const ws = await client(`${g.wsUrl}/ws/echo`);
    expect(g.store.count('').total).toBe(1);
    ws.close(1000);
    await slotIsFree(g);
  });

  it('client RST', async () => {
    const g = await slotGuard();
    const t = tag('rst');
    const { conn, res } = await rawUpgrade(g.port, `/ws/echo?tag=${t}`);
    expect(res.status).toBe(101);
    expect(g.store.count('').total).toBe(1);
    conn.socket.resetAndDestroy();
    await slotIsFree(g);
    expect(await upstreamCloseCode(t)).not.toBe(1000);
  });

  it('client FIN right after its upgrade request (before the 101)', async () => {
    const g = await slotGuard();
    const conn = await rawSocket(g.port);
    const clientPort = conn.socket.localPort!;
    conn.socket.end(upgradeRequest(`/ws/echo?tag=${tag('fin-early')}`));
    await until(() => !guardHolds(g.port, clientPort), 5000, 'the guard to let the connection go');
    await slotIsFree(g);
  });

  it('upstream refusal (/ws/reject → 403 relayed)', async () => {
    const g = await slotGuard();
    const t = tag('reject');
    const answer = await refusal(`${g.wsUrl}/ws/reject?tag=${t}`);
    expect(answer.status).toBe(403);
    expect(answer.headers['x-ws-guard-error']).toBeUndefined();
    expect(await connected(t)).toBe(true);
    await slotIsFree(g);
  });

  it('upstream timeout (a TCP server that never answers; upstreamResponse 300ms → 504)', async () => {
    const silent = await fakeUpstream();
    const g = await slotGuard({ upstream: silent.url, timeouts: { upstreamResponse: '300ms' } });
    expect(await refusal(`${g.wsUrl}/ws/echo`)).toMatchObject({ status: 504, headers: { 'x-ws-guard-error': 'UPSTREAM_TIMEOUT' } });
    expect(silent.sockets.length).toBe(1);
    backToRealUpstream(g);
    await slotIsFree(g);
  });

  it('upstream unreachable (502)', async () => {
    const g = await slotGuard({ upstream: `http://127.0.0.1:${await freePort()}` });
    expect(await refusal(`${g.wsUrl}/ws/echo`)).toMatchObject({ status: 502, headers: { 'x-ws-guard-error': 'UPSTREAM_UNREACHABLE' } });
    backToRealUpstream(g);
    await slotIsFree(g);
  });

  it('client leaves (FIN) while the upstream is slow to answer', async () => {
    const slow = await fakeUpstream();
    const g = await slotGuard({ upstream: slow.url });
    const conn = await rawSocket(g.port);
    conn.write(upgradeRequest('/ws/echo'));
    await until(() => slow.waiting.length === 1, 5000, 'the dial');
    expect(g.store.count('').total).toBe(1);
    conn.destroy();
    slow.answer();
    await until(() => g.store.count('').total === 0, 5000, 'the slot to come back');
    await until(() => slow.sockets.every((s) => s.destroyed), 5000, 'the upstream leg to be closed');
    backToRealUpstream(g);
    await slotIsFree(g);
  });

  it('client RST while the upstream is slow to answer (the dial is abandoned)', async () => {
    const slow = await fakeUpstream();
    const g = await slotGuard({ upstream: slow.url });
    const conn = await rawSocket(g.port);
    conn.write(upgradeRequest('/ws/echo'));
    await until(() => slow.waiting.length === 1, 5000, 'the dial');
    conn.socket.resetAndDestroy();
    await until(() => g.store.count('').total === 0, 5000, 'the slot to come back');
    await until(() => slow.sockets.every((s) => s.destroyed), 5000, 'the dial to be abandoned');
    backToRealUpstream(g);
    await slotIsFree(g);
  });

  /**
   * The client leaves (FIN) while the guard waits for the JWKS; then the JWKS answers. The slot is taken
   * after authentication, so it is free during the wait: what matters is that nothing holds it once the
   * guard is done with the client, which the kernel's table tells (the guard's end of the connection is
   * gone), whatever the guard did meanwhile.
   */
  async function abandonDuringJwks(t: string) {
    const jwks = await slowJwks();
    const g = await guardWith({ auth: { jwt: { jwksUrl: jwks.url, algorithms: ['ES256'] } }, limits: LIMITS });
    const conn = await rawSocket(g.port);
    const clientPort = conn.socket.localPort!;
    conn.write(upgradeRequest(`/ws/echo?tag=${t}`, { Authorization: `Bearer ${await jwks.token('leaver')}` }));
    await until(() => jwks.requests() === 1, 5000, 'the JWKS fetch');
    expect(guardHolds(g.port, clientPort)).toBe(true);
    conn.destroy();
    jwks.release();
    await until(() => jwks.answered() === 1, 5000, 'the JWKS answer');
    await until(() => !guardHolds(g.port, clientPort), 5000, 'the guard to let the connection go');
    await until(() => g.store.count('').total === 0, 5000, 'the slot to come back');
    const ws = await client(`${g.wsUrl}/ws/echo`, ['bearer', await jwks.token('stayer')]);
    await roundTrip(ws, 'the slot is free');
  }

  it('client leaves during a slow JWKS fetch: no slot is left held', async () => {
    await abandonDuringJwks(tag('jwks-leaver'));
  });

  // BUG (src/server/upgrade.ts, reported): after `await verify(...)` the handshake goes on for a client
  // that has left: it takes a slot and dials the upstream, which sees a connection open and close. The
  // slot does come back (the session ends at once, src/proxy/session.ts), but the dial should not happen.
  // Once upgrade.ts stops there, this starts failing: turn `it.fails` into `it`.
  it('client leaves during a slow JWKS fetch: the upstream is never dialled', async () => {
    const t = tag('jwks-leaver-dial');
    await abandonDuringJwks(t);
    expect(await seen(t)).toEqual([]);
  });

  it('protocol violation (unmasked frame → 1002)', async () => {
    const g = await slotGuard();
    const t = tag('violation');
    const { conn, res } = await rawUpgrade(g.port, `/ws/echo?tag=${t}`);
    expect(res.status).toBe(101);
    conn.write(frame({ opcode: Op.TEXT, payload: 'x', mask: false }));
    expect((await untilClose(conn)).close.closeCode).toBe(1002);
    expect(await upstreamCloseCode(t)).toBe(1002);
    await slotIsFree(g);
  });

  it('a limit close (message too big → 1009)', async () => {
    const g = await slotGuard({ limits: { ...LIMITS, messageSize: '16B' } });
    const ws = await client(`${g.wsUrl}/ws/echo`, undefined, { perMessageDeflate: false });
    const done = closed(ws);
    ws.send('more than sixteen bytes');
    expect((await done).code).toBe(1009);
    await slotIsFree(g);
  });
});

describe('handshake rate', () => {
  it('2/s, burst 2, per address: the third at once → 429 HANDSHAKE_RATE with Retry-After; the upstream never sees it', async () => {
    const g = await guardWith({ limits: { handshakes: { rate: '2/s', burst: 2 } } });
    const tags = [tag('hs-1'), tag('hs-2'), tag('hs-3')];
    // Sent together, so all three arrive well inside one refill period.
    const answers = await Promise.all(tags.map(async (t) => ({ t, ...(await rawUpgrade(g.port, `/ws/echo?tag=${t}`)).res })));
    const accepted = answers.filter((a) => a.status === 101);
    const refused = answers.filter((a) => a.status !== 101);
    expect(accepted).toHaveLength(2);
    expect(refused).toHaveLength(1);
    expect(refused[0]!.status).toBe(429);
    expect(refused[0]!.headers).toMatchObject({ 'x-ws-guard-error': 'HANDSHAKE_RATE', 'retry-after': '1' });
    for (const a of accepted) await until(() => connected(a.t), 5000, 'the accepted ones to reach the upstream');
    expect(await seen(refused[0]!.t)).toEqual([]);
    // Another address has a bucket of its own.
    expect((await rawUpgrade(g.port, '/ws/echo', undefined, '127.0.0.2')).res.status).toBe(101);
    // The refusal took no connection slot.
    expect(g.store.count('').total).toBe(3);
  });
});

describe('timeouts', () => {
  it("idleTimeout '600ms' → 1001 to the client and to the upstream", async () => {
    const g = await guardWith({ limits: { idleTimeout: '600ms' } });
    const t = tag('idle');
    const ws = await client(`${g.wsUrl}/ws/echo?tag=${t}`);
    expect(await closed(ws)).toEqual({ code: 1001, reason: ERRORS.IDLE_TIMEOUT.message });
    expect(await upstreamCloseCode(t)).toBe(1001);
  });

  it('an active connection (a message every 200 ms for 1.6 s) outlives the idle timeout', async () => {
    const g = await guardWith({ limits: { idleTimeout: '600ms' } });
    const t = tag('active');
    const ws = await client(`${g.wsUrl}/ws/echo?tag=${t}`);
    let closedEarly = false;
    ws.once('close', () => (closedEarly = true));
    for (let i = 0; i < 8; i++) {
      await new Promise((r) => setTimeout(r, 200));
      await roundTrip(ws, `keepalive ${i}`);
    }
    expect(closedEarly).toBe(false);
    expect((await seen(t)).some((e) => e.type === 'ws_disconnect')).toBe(false);
    ws.close(1000);
    expect(await upstreamCloseCode(t)).toBe(1000);
  });

  it("maxLifetime '800ms' → 1001 to both sides even while active", async () => {
    const g = await guardWith({ limits: { maxLifetime: '800ms' } });
    const t = tag('lifetime');
    const ws = await client(`${g.wsUrl}/ws/echo?tag=${t}`);
    const done = closed(ws);
    const timer = setInterval(() => ws.readyState === ws.OPEN && ws.send('busy'), 100);
    cleanups.push(() => clearInterval(timer));
    expect(await done).toEqual({ code: 1001, reason: ERRORS.MAX_LIFETIME.message });
    expect(await upstreamCloseCode(t)).toBe(1001);
    expect((await texts(t)).length).toBeGreaterThan(0);
  });
});

describe('per-route limits', () => {
  it('a route with its own message rate; a route with a connection pool of its own, inside the global one', async () => {
    const g = await guardWith({
      limits: { connections: { total: 3 }, messages: { rate: '100/s', burst: 100 } },
      routes: [
        { path: '/ws/push', limits: { messages: { rate: '1/minute', burst: 1 } } },
        { path: '/ws/echo', limits: { connections: { total: 1 } } },
      ],
    });
    const [te, tp] = [tag('route-echo'), tag('route-push')];
    const echo = await client(`${g.wsUrl}/ws/echo?tag=${te}`);
    const push = await client(`${g.wsUrl}/ws/push?bytes=0&tag=${tp}`);
    // The top-level rate on /ws/echo...
    for (let i = 0; i < 5; i++) await roundTrip(echo, `e${i}`);
    expect(await texts(te)).toEqual(['e0', 'e1', 'e2', 'e3', 'e4']);
    // ...the route's own on /ws/push.
    await roundTrip(push, 'p1');
    const pushClosed = closed(push);
    push.send('p2');
    expect((await pushClosed).code).toBe(1008);
    expect(await upstreamCloseCode(tp)).toBe(1008);
    expect(await texts(tp)).toEqual(['p1']);
    await until(() => g.store.count('').total === 1, 5000, 'the push slot back');

    // /ws/echo's own pool (1) is full while the global one (3) is not.
    const refusedEcho = tag('route-echo-refused');
    expect(await refusal(`${g.wsUrl}/ws/echo?tag=${refusedEcho}`)).toMatchObject({ status: 503, headers: { 'x-ws-guard-error': 'CONNECTIONS_FULL' } });
    expect(await seen(refusedEcho)).toEqual([]);
    expect(g.store.count('/ws/echo').total).toBe(1);
    // Other routes fill the global pool, which counts /ws/echo's connection too.
    await client(`${g.wsUrl}/ws/push?bytes=0`);
    await client(`${g.wsUrl}/ws/push?bytes=0`);
    expect(await refusal(`${g.wsUrl}/ws/push?bytes=0`)).toMatchObject({ status: 503, headers: { 'x-ws-guard-error': 'CONNECTIONS_FULL' } });
    expect(g.store.count('')).toMatchObject({ total: 3 });
  });
});

describe('drain', () => {
  it('open connections get 1001 on both sides; an upgrade arriving during the drain → 503 SHUTTING_DOWN; new TCP connections are refused', async () => {
    const g = await guardWith({ timeouts: { drain: '5s' } });
    const t = tag('drain-open');
    const ws = await client(`${g.wsUrl}/ws/echo?tag=${t}`);
    await roundTrip(ws, 'before the drain');
    // A handshake already under way (its request begun, so not an idle connection) when the drain starts.
    const late = tag('drain-late');
    const request = upgradeRequest(`/ws/echo?tag=${late}`);
    const pending = await rawSocket(g.port);
    pending.write(request.slice(0, -2));

    const wsClosed = closed(ws);
    const draining = g.guard.drain();
    expect(g.guard.draining).toBe(true);
    pending.write(request.slice(-2));
    const answer = await pending.readHttpResponse();
    expect({ status: answer.status, code: answer.headers['x-ws-guard-error'], retry: answer.headers['retry-after'] })
      .toEqual({ status: 503, code: 'SHUTTING_DOWN', retry: '5' });
    expect(await wsClosed).toEqual({ code: 1001, reason: ERRORS.SHUTTING_DOWN.message });
    expect(await upstreamCloseCode(t)).toBe(1001);
    expect(await seen(late)).toEqual([]);

    const refused = net.connect({ port: g.port, host: '127.0.0.1' });
    const [err] = (await once(refused, 'error')) as [NodeJS.ErrnoException];
    expect(err.code).toBe('ECONNREFUSED');
    await draining;
    expect(g.guard.sessions.size).toBe(0);
  });
});
