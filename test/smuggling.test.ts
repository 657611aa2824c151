import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGuard, type TestGuard } from './helpers/guard.js';
import { startUpstream, type Upstream } from './helpers/upstream.js';

// Request smuggling through the plain HTTP pass-through (RFC 9112 §11.2): whatever framing the client
// uses, the real uvicorn app must see exactly the requests the client made, one for one, and never a
// second request hidden in a body, with forged identity headers, on the guard's pooled connection.

let upstream: Upstream;
let guard: TestGuard;
let count = 0;
const tag = () => `smuggle-${process.pid}-${++count}`;

beforeAll(async () => {
  upstream = await startUpstream();
  guard = await startTestGuard({
    upstream: upstream.url,
    auth: { jwt: { secret: 'smuggling-secret-long-enough-for-hs256-0123456789', algorithms: ['HS256'], forwardClaims: { sub: 'X-Auth-Sub' } } },
    // These cases are about framing, not tokens: plain HTTP passes without one, as before `http: auth` was the default.
    http: 'pass',
  });
});

afterAll(async () => {
  await guard?.close();
  await upstream?.stop();
});

/** Writes raw bytes to the guard (`later` after 150 ms) and reads until it closes the connection (or 5 s pass). */
function exchange(bytes: string, later?: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect(guard.port, '127.0.0.1');
    if (later !== undefined) setTimeout(() => socket.write(later, 'latin1'), 150);
    let text = '';
    const done = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(text);
    };
    const timer = setTimeout(done, 5000);
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => (text += chunk));
    socket.on('close', done);
    socket.on('error', done);
    socket.write(bytes, 'latin1');
  });
}

const statusLines = (text: string) => [...text.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]));

/** A complete request hidden in a body: what a smuggler wants the app to run as the guard's own. */
function hidden(t: string, kind: 'request' | 'upgrade'): string {
  const forged = 'X-Auth-Sub: admin\r\nX-Forwarded-For: 203.0.113.66\r\n';
  return kind === 'request'
    ? `GET /headers?tag=${t}-smuggled HTTP/1.1\r\nHost: app\r\n${forged}\r\n`
    : `GET /ws/echo?tag=${t}-smuggled HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n${forged}\r\n`;
}

const FRAMINGS: Record<string, (body: string) => string> = {
  'Transfer-Encoding: chunked': (body) => `Transfer-Encoding: chunked\r\n\r\n${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`,
  'chunked, Connection: transfer-encoding': (body) =>
    `Connection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`,
  'Content-Length': (body) => `Content-Length: ${body.length}\r\n\r\n${body}`,
  'Content-Length that Connection nominates': (body) => `Connection: content-length\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
  'Content-Length, Connection: keep-alive, content-length': (body) =>
    `Connection: keep-alive, Content-Length\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
};

describe('plain HTTP framing: the upstream sees exactly the requests the client made', () => {
  for (const method of ['GET', 'HEAD', 'DELETE', 'OPTIONS', 'POST', 'PUT']) {
    for (const [name, framed] of Object.entries(FRAMINGS)) {
      for (const kind of ['request', 'upgrade'] as const) {
        it(`${method} with ${name} and a hidden ${kind} in its body`, async () => {
          const t = tag();
          const first = `${method} /headers?tag=${t} HTTP/1.1\r\nHost: app\r\n${framed(hidden(t, kind))}`;
          const innocent = `GET /hello?tag=${t}-after HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n`;
          const text = await exchange(first + innocent);

          expect(statusLines(text)).toHaveLength(2);
          expect(text).toContain('{"hello":"world"}');
          const seen = await upstream.seen(t);
          expect(seen).toHaveLength(1);
          expect(seen[0]).toMatchObject({ type: 'http', method, path: '/headers' });
          expect(seen[0].headers['x-auth-sub']).toBeUndefined();
          expect(await upstream.seen(`${t}-smuggled`)).toEqual([]);
          expect(await upstream.seen(`${t}-after`)).toHaveLength(1);
        });
      }
    }
  }

  it('pipelined requests without bodies reach the app one for one, in order', async () => {
    const t = tag();
    const one = (n: number, last = false) => `GET /hello?tag=${t}-${n} HTTP/1.1\r\nHost: app\r\n${last ? 'Connection: close\r\n' : ''}\r\n`;
    const text = await exchange(one(1) + one(2) + one(3, true));
    expect(statusLines(text)).toEqual([200, 200, 200]);
    for (const n of [1, 2, 3]) expect(await upstream.seen(`${t}-${n}`)).toHaveLength(1);
  });

  it('a transfer coding other than chunked is refused (501) and reaches nothing', async () => {
    const t = tag();
    const body = hidden(t, 'request');
    const text = await exchange(
      `POST /upload?tag=${t} HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: gzip, chunked\r\n\r\n${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`,
    );
    expect(statusLines(text)).toEqual([501]);
    expect(text).toMatch(/X-WS-Guard-Error: TRANSFER_CODING/i);
    expect(await upstream.seen(t)).toEqual([]);
    expect(await upstream.seen(`${t}-smuggled`)).toEqual([]);
  });

  it('Content-Length with Transfer-Encoding, or two Content-Lengths, are refused (400) by the parser', async () => {
    for (const framing of [
      'Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
      'Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!',
    ]) {
      const t = tag();
      const text = await exchange(`POST /upload?tag=${t} HTTP/1.1\r\nHost: app\r\n${framing}`);
      expect(statusLines(text)).toEqual([400]);
      expect(await upstream.seen(t)).toEqual([]);
    }
  });

  it('two Host headers → 400, as on an upgrade: the app could pick another host than the guard forwarded', async () => {
    const t = tag();
    const text = await exchange(`GET /headers?tag=${t} HTTP/1.1\r\nHost: evil.example\r\nHost: app\r\n\r\n`);
    expect(statusLines(text)).toEqual([400]);
    expect(await upstream.seen(t)).toEqual([]);
  });

  describe('nothing is written into an answer still going out on the same connection', () => {
    const streaming = 'GET /stream?chunks=20000 HTTP/1.1\r\nHost: app\r\n\r\n';

    it('a malformed request pipelined behind it: the connection ends, no 400 inside the body', async () => {
      const text = await exchange(streaming, 'GET / HTTP/1.1\r\nHost: app\r\nBad Header: y\r\n\r\n');
      expect(statusLines(text)).toEqual([200]);
    });

    it('an upgrade pipelined behind it: refused and logged, no 101 inside the body', async () => {
      const t = tag();
      const logged = guard.logs.length;
      const upgrade = `GET /ws/echo?tag=${t} HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n';
      const text = await exchange(streaming + upgrade);
      // The connection is dropped: whatever of the 200 was already out, and nothing else.
      expect(statusLines(text).filter((status) => status !== 200)).toEqual([]);
      expect(await upstream.seen(t)).toEqual([]);
      expect(guard.logs.slice(logged)).toContainEqual(expect.objectContaining({ msg: 'upgrade refused', code: 'BAD_REQUEST' }));
    });
  });

  it('a body is forwarded intact with the framing the guard states', async () => {
    const body = 'x'.repeat(100_000);
    const chunked = await fetch(`${guard.httpUrl}/upload`, {
      method: 'POST',
      body: new ReadableStream({ start(c) { c.enqueue(new TextEncoder().encode(body)); c.close(); } }),
      duplex: 'half',
    } as RequestInit);
    expect(await chunked.json()).toMatchObject({ bytes: 100_000 });
    const sized = await fetch(`${guard.httpUrl}/upload`, { method: 'POST', body });
    expect(await sized.json()).toMatchObject({ bytes: 100_000 });
  });
});
