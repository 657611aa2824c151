import net from 'node:net';
import { SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type WebSocket from 'ws';
import { closed, freePort, nextMessage, open } from './helpers/clients.js';
import { startTestGuard, until, type TestGuard } from './helpers/guard.js';
import { Op, frame, rawConnect, upgradeRequest } from './helpers/raw.js';
import { startUpstream, type Upstream } from './helpers/upstream.js';

// Every limit against the real FastAPI upstream: the exact answer, and what the upstream received.
const SECRET = 'limits-test-secret-long-enough-for-hs256-0123456789';
let upstream: Upstream;
let n = 0;
const tag = () => `limits-${process.pid}-${++n}`;
const guards: TestGuard[] = [];

async function guardWith(config: Record<string, unknown>): Promise<TestGuard> {
  const g = await startTestGuard({ upstream: upstream.url, ...config });
  guards.push(g);
  return g;
}

const token = (sub: string) =>
  new SignJWT({ sub }).setProtectedHeader({ alg: 'HS256' }).setExpirationTime('1h').sign(new TextEncoder().encode(SECRET));

type Refusal = { status: number; headers: Record<string, string> };
const refusal = (p: Promise<WebSocket>) => p.then((ws) => { ws.terminate(); throw new Error('expected a refusal'); }, (e: Refusal) => e);

async function texts(t: string): Promise<string[]> {
  return (await upstream.seen(t)).filter((e) => e.type === 'ws_text').map((e) => e.data as string);
}

beforeAll(async () => {
  upstream = await startUpstream();
});
afterAll(async () => {
  for (const g of guards) await g.close();
  await upstream?.stop();
});

describe('message rate', () => {
  it('onExceed: close → 1008, and the upstream received exactly the allowed messages (pings not counted)', async () => {
    const g = await guardWith({ limits: { messages: { rate: '5/minute', burst: 5, onExceed: 'close' } } });
    const t = tag();
    const ws = await open(`${g.wsUrl}/ws/echo?tag=${t}`);
    const done = closed(ws);
    ws.ping();
    for (let i = 0; i < 8; i++) ws.send(`m${i}`);
    expect((await done).code).toBe(1008);
    await until(async () => (await upstream.seen(t)).some((e) => e.type === 'ws_disconnect'));
    expect(await texts(t)).toEqual(['m0', 'm1', 'm2', 'm3', 'm4']);
    expect((await upstream.seen(t)).find((e) => e.type === 'ws_disconnect')).toMatchObject({ code: 1008 });
  });

  it('a fragmented message counts once', async () => {
    const g = await guardWith({ limits: { messages: { rate: '2/minute', burst: 2 } } });
    const t = tag();
    const conn = await rawConnect(g.port);
    conn.write(upgradeRequest(`/ws/echo?tag=${t}`));
    expect((await conn.readHttpResponse()).status).toBe(101);
    conn.write(Buffer.concat([
      frame({ opcode: Op.TEXT, fin: false, payload: 'a' }), frame({ opcode: Op.CONTINUATION, fin: false, payload: 'b' }),
      frame({ opcode: Op.CONTINUATION, payload: 'c' }), frame({ opcode: Op.TEXT, payload: 'second' }), frame({ opcode: Op.TEXT, payload: 'third' }),
    ]));
    // The close goes out at once; echoes still in flight from the upstream are not forwarded after it.
    let last = await conn.readFrame();
    while (last.opcode !== Op.CLOSE) last = await conn.readFrame();
    expect(last.closeCode).toBe(1008);
    conn.destroy();
    await until(async () => (await upstream.seen(t)).some((e) => e.type === 'ws_disconnect'));
    expect(await texts(t)).toEqual(['abc', 'second']);
  });

  it('onExceed: throttle → every message arrives, in order, paced', async () => {
    const g = await guardWith({ limits: { messages: { rate: '20/s', burst: 2, onExceed: 'throttle' } } });
    const t = tag();
    const ws = await open(`${g.wsUrl}/ws/echo?tag=${t}`);
    const got: string[] = [];
    const all = new Promise<void>((resolve) => ws.on('message', (d) => got.push(String(d)) === 10 && resolve()));
    for (let i = 0; i < 10; i++) ws.send(`t${i}`);
    expect((await texts(t)).length).toBeLessThan(10);
    await all;
    expect(got).toEqual(Array.from({ length: 10 }, (_, i) => `t${i}`));
    ws.close();
  });

  it('per: user shares one bucket across the connections of a user', async () => {
    const g = await guardWith({
      auth: { jwt: { secret: SECRET, algorithms: ['HS256'] } },
      limits: { messages: { rate: '3/minute', burst: 3, per: 'user' } },
    });
    const alice = await token('alice');
    const a1 = await open(`${g.wsUrl}/ws/echo`, ['bearer', alice]);
    const a2 = await open(`${g.wsUrl}/ws/echo`, ['bearer', alice]);
    const bob = await open(`${g.wsUrl}/ws/echo`, ['bearer', await token('bob')]);
    for (const m of ['1', '2']) {
      a1.send(m);
      await nextMessage(a1);
    }
    a2.send('3');
    await nextMessage(a2);
    const a2closed = closed(a2);
    a2.send('4');
    expect((await a2closed).code).toBe(1008);
    bob.send('bob has his own');
    expect(String((await nextMessage(bob)).data)).toBe('bob has his own');
    a1.close();
    bob.close();
  });
});

describe('message size and fragments', () => {
  it('1 KiB passes, 1025 bytes → 1009 and never reaches the upstream', async () => {
    const g = await guardWith({ limits: { messageSize: '1KiB' } });
    const t = tag();
    const ws = await open(`${g.wsUrl}/ws/echo?tag=${t}`, undefined, { perMessageDeflate: false });
    ws.send('x'.repeat(1024));
    expect(String((await nextMessage(ws)).data).length).toBe(1024);
    const done = closed(ws);
    ws.send('y'.repeat(1025));
    expect((await done).code).toBe(1009);
    await until(async () => (await upstream.seen(t)).some((e) => e.type === 'ws_disconnect'));
    expect((await texts(t)).map((m) => m.length)).toEqual([200]);
  });

  it('the size is summed over fragments: 3 × 400 bytes → 1009 at the third, nothing of the message forwarded', async () => {
    const g = await guardWith({ limits: { messageSize: '1KiB' } });
    const t = tag();
    const conn = await rawConnect(g.port);
    conn.write(upgradeRequest(`/ws/echo?tag=${t}`));
    expect((await conn.readHttpResponse()).status).toBe(101);
    conn.write(frame({ opcode: Op.TEXT, fin: false, payload: 'a'.repeat(400) }));
    conn.write(frame({ opcode: Op.CONTINUATION, fin: false, payload: 'b'.repeat(400) }));
    conn.write(frame({ opcode: Op.CONTINUATION, payload: 'c'.repeat(400) }));
    expect((await conn.readFrame()).closeCode).toBe(1009);
    conn.destroy();
    await until(async () => (await upstream.seen(t)).some((e) => e.type === 'ws_disconnect'));
    expect(await texts(t)).toEqual([]);
  });

  it('maxFragments: the sixth fragment → 1009', async () => {
    const g = await guardWith({ limits: { maxFragments: 5 } });
    const conn = await rawConnect(g.port);
    conn.write(upgradeRequest('/ws/echo'));
    expect((await conn.readHttpResponse()).status).toBe(101);
    conn.write(frame({ opcode: Op.TEXT, fin: false, payload: '1' }));
    for (let i = 2; i <= 6; i++) conn.write(frame({ opcode: Op.CONTINUATION, fin: false, payload: String(i) }));
    expect((await conn.readFrame()).closeCode).toBe(1009);
    conn.destroy();
  });
});

describe('connection slots', () => {
  it('total → 503 + Retry-After; per IP → 429; the upstream never sees a refused one', async () => {
    const total = await guardWith({ limits: { connections: { total: 2 } } });
    const a = await open(`${total.wsUrl}/ws/echo`);
    const b = await open(`${total.wsUrl}/ws/echo`);
    const t = tag();
    expect(await refusal(open(`${total.wsUrl}/ws/echo?tag=${t}`))).toMatchObject({
      status: 503, headers: { 'x-ws-guard-error': 'CONNECTIONS_FULL', 'retry-after': '5' },
    });
    expect(await upstream.seen(t)).toEqual([]);
    a.close();
    b.close();

    const perIp = await guardWith({ limits: { connections: { perIp: 1 } } });
    const c = await open(`${perIp.wsUrl}/ws/echo`, undefined, { localAddress: '127.0.0.2' });
    expect(await refusal(open(`${perIp.wsUrl}/ws/echo`, undefined, { localAddress: '127.0.0.2' }))).toMatchObject({
      status: 429, headers: { 'x-ws-guard-error': 'CONNECTIONS_PER_IP', 'retry-after': '5' },
    });
    (await open(`${perIp.wsUrl}/ws/echo`, undefined, { localAddress: '127.0.0.3' })).close();
    c.close();
  });

  it('per user (sub of the verified token) → 429; another user passes', async () => {
    const g = await guardWith({ auth: { jwt: { secret: SECRET, algorithms: ['HS256'] } }, limits: { connections: { perUser: 1 } } });
    const first = await open(`${g.wsUrl}/ws/echo`, ['bearer', await token('carol')]);
    expect(await refusal(open(`${g.wsUrl}/ws/echo`, ['bearer', await token('carol')]))).toMatchObject({
      status: 429, headers: { 'x-ws-guard-error': 'CONNECTIONS_PER_USER' },
    });
    (await open(`${g.wsUrl}/ws/echo`, ['bearer', await token('dave')])).close();
    first.close();
  });

  it('slots come back on every exit path', async () => {
    const silent = net.createServer((s) => s.on('error', () => {}));
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const silentUrl = `http://127.0.0.1:${(silent.address() as net.AddressInfo).port}`;
    const g = await guardWith({ limits: { connections: { total: 1 } } });
    const back = () => until(() => g.store.count().total === 0, 5000, 'the slot to come back');

    const normal = await open(`${g.wsUrl}/ws/echo`);
    normal.close();
    await back();

    const reset = await rawConnect(g.port);
    reset.write(upgradeRequest('/ws/echo'));
    expect((await reset.readHttpResponse()).status).toBe(101);
    reset.socket.resetAndDestroy();
    await back();

    expect(await refusal(open(`${g.wsUrl}/ws/reject`))).toMatchObject({ status: 403 });
    await back();

    const violation = await rawConnect(g.port);
    violation.write(upgradeRequest('/ws/echo'));
    await violation.readHttpResponse();
    violation.write(frame({ opcode: Op.TEXT, payload: 'x', mask: false }));
    expect((await violation.readFrame()).closeCode).toBe(1002);
    violation.destroy();
    await back();

    const down = await guardWith({ upstream: `http://127.0.0.1:${await freePort()}`, limits: { connections: { total: 1 } } });
    expect(await refusal(open(`${down.wsUrl}/ws/echo`))).toMatchObject({ status: 502 });
    await until(() => down.store.count().total === 0);

    const slow = await guardWith({ upstream: silentUrl, timeouts: { upstreamResponse: '300ms' }, limits: { connections: { total: 1 } } });
    expect(await refusal(open(`${slow.wsUrl}/ws/echo`))).toMatchObject({ status: 504 });
    await until(() => slow.store.count().total === 0);

    (await open(`${g.wsUrl}/ws/echo`)).close();
    silent.close();
  });

  it('warnAt: one warning when usage crosses the mark, not one per connection', async () => {
    const g = await guardWith({ limits: { connections: { total: 10, warnAt: 0.5 } } });
    const sockets: WebSocket[] = [];
    for (let i = 0; i < 8; i++) sockets.push(await open(`${g.wsUrl}/ws/echo`));
    expect(g.logs.filter((l) => l.msg === 'connection slots nearly exhausted')).toEqual([
      expect.objectContaining({ level: 40, pool: '(all)', usage: 0.5, warnAt: 0.5 }),
    ]);
    for (const ws of sockets) ws.close();
  });
});

describe('handshakes, timeouts, routes, drain', () => {
  it('handshake rate per client address → 429 + Retry-After; the upstream never sees it', async () => {
    const g = await guardWith({ limits: { handshakes: { rate: '2/s', burst: 2 } } });
    (await open(`${g.wsUrl}/ws/echo`)).close();
    (await open(`${g.wsUrl}/ws/echo`)).close();
    const t = tag();
    expect(await refusal(open(`${g.wsUrl}/ws/echo?tag=${t}`))).toMatchObject({
      status: 429, headers: { 'x-ws-guard-error': 'HANDSHAKE_RATE', 'retry-after': '1' },
    });
    expect(await upstream.seen(t)).toEqual([]);
  });

  it('idle timeout → 1001 to both sides; maxLifetime → 1001 even while active', async () => {
    const idle = await guardWith({ limits: { idleTimeout: '600ms' } });
    const t = tag();
    const ws = await open(`${idle.wsUrl}/ws/echo?tag=${t}`);
    expect((await closed(ws)).code).toBe(1001);
    await until(async () => (await upstream.seen(t)).some((e) => e.type === 'ws_disconnect'));
    expect((await upstream.seen(t)).find((e) => e.type === 'ws_disconnect')).toMatchObject({ code: 1001 });

    const life = await guardWith({ limits: { maxLifetime: '800ms' } });
    const busy = await open(`${life.wsUrl}/ws/echo`);
    const timer = setInterval(() => busy.send('still busy'), 100);
    expect((await closed(busy)).code).toBe(1001);
    clearInterval(timer);
  });

  it('an active connection outlives the idle timeout', async () => {
    const g = await guardWith({ limits: { idleTimeout: '600ms' } });
    const ws = await open(`${g.wsUrl}/ws/echo`);
    for (let i = 0; i < 8; i++) {
      await new Promise((r) => setTimeout(r, 200));
      ws.send(`keepalive ${i}`);
      await nextMessage(ws);
    }
    expect(ws.readyState).toBe(ws.OPEN);
    ws.close();
  });

  it('per-route limits: merged over the top level, with a pool of its own', async () => {
    const g = await guardWith({
      limits: { messages: { rate: '100/s', burst: 100 } },
      routes: [{ path: '/ws/echo', limits: { messages: { rate: '1/minute', burst: 1 }, connections: { total: 1 } } }],
    });
    const ws = await open(`${g.wsUrl}/ws/echo`);
    expect(await refusal(open(`${g.wsUrl}/ws/echo`))).toMatchObject({ status: 503 });
    (await open(`${g.wsUrl}/ws/close?code=4000`)).terminate();
    ws.send('one');
    await nextMessage(ws);
    const done = closed(ws);
    ws.send('two');
    expect((await done).code).toBe(1008);
  });

  it('drain closes open connections with 1001 and idle keep-alive connections', async () => {
    const g = await guardWith({ timeouts: { drain: '2s' } });
    const keepAlive = await rawConnect(g.port);
    keepAlive.write('GET /hello HTTP/1.1\r\nHost: x\r\n\r\n');
    expect((await keepAlive.readHttpResponse()).status).toBe(200);
    const ws = await open(`${g.wsUrl}/ws/echo`);
    const wsClosed = closed(ws);
    const draining = g.guard.drain();
    expect((await wsClosed).code).toBe(1001);
    await draining;
    expect(keepAlive.closed).toBe(true);
  });
});
