import net from 'node:net';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createUpstreamPool, sendUpstream, upstreamError } from './upstream-http.js';
import type { GuardError } from '../errors.js';

// The upstream leg against a raw TCP server that answers whatever a test scripts: the codes undici
// reports map to one answer each, interim answers are skipped, and a bodyless status is complete.

let server: net.Server;
let script: (request: string, socket: net.Socket) => void = () => {};
let origin = '';

beforeAll(async () => {
  server = net.createServer((socket) => {
    let text = '';
    socket.on('error', () => {});
    socket.on('data', (d) => {
      text += d.toString('latin1');
      if (text.includes('\r\n\r\n')) script(text, socket);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  origin = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
});

afterAll(() => new Promise<void>((r) => server.close(() => r())));

type Outcome = { status?: number; reason?: string; headers?: string[]; body: string; end: boolean; err?: GuardError };

function send(headersTimeoutMs = 1000, body: Readable | null = null, headers: string[] = ['Host', 'x']): Promise<Outcome> {
  const pool = createUpstreamPool({ origin, connectTimeoutMs: 1000, headersTimeoutMs });
  return new Promise((resolve) => {
    const out: Outcome = { body: '', end: false };
    const done = () => {
      void pool.destroy();
      resolve(out);
    };
    sendUpstream(pool, { method: 'POST', path: '/p', headers, body }, {
      onHead(status, reason, raw) {
        Object.assign(out, { status, reason, headers: raw });
        return true;
      },
      onData(chunk) {
        out.body += chunk.toString('latin1');
        return true;
      },
      onEnd() {
        out.end = true;
        done();
      },
      onError(err) {
        out.err = err;
        done();
      },
    });
  });
}

describe('sendUpstream', () => {
  it('streams the answer with its raw header names and skips interim answers', async () => {
    script = (_req, s) => s.write('HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 Fine\r\nX-Case: Kept\r\nContent-Length: 2\r\n\r\nok');
    const out = await send();
    expect(out).toMatchObject({ status: 200, reason: 'Fine', body: 'ok', end: true });
    expect(out.headers).toContain('X-Case');
  });

  it('a 204 claiming a body is complete once its head is out', async () => {
    script = (_req, s) => s.write('HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello');
    expect(await send()).toMatchObject({ status: 204, body: '', end: true });
  });

  it('sends a body of unknown length chunked, and a known one with its length', async () => {
    let seen = '';
    script = (req, s) => {
      seen = req;
      s.end('HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    };
    await send(1000, Readable.from([Buffer.from('abc')]));
    expect(seen.toLowerCase()).toContain('transfer-encoding: chunked');
    await send(1000, Readable.from([Buffer.from('abc')]), ['Host', 'x', 'Content-Length', '3']);
    expect(seen.toLowerCase()).toContain('content-length: 3');
    expect(seen.toLowerCase()).not.toContain('transfer-encoding');
  });

  it('a 101 to a plain request → 502 UPSTREAM_BAD_RESPONSE; no answer in time → 504; a broken answer → 502', async () => {
    script = (_req, s) => s.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
    expect((await send()).err).toMatchObject({ code: 'UPSTREAM_BAD_RESPONSE', status: 502 });
    script = () => {};
    expect((await send(200)).err).toMatchObject({ code: 'UPSTREAM_TIMEOUT', status: 504 });
    script = (_req, s) => s.end('HTTP/1.1 2x0 What\r\n\r\n');
    expect((await send()).err).toMatchObject({ code: 'UPSTREAM_BAD_RESPONSE', status: 502 });
  });
});

describe('upstreamError', () => {
  it.each([
    ['UND_ERR_CONNECT_TIMEOUT', 'UPSTREAM_TIMEOUT'],
    ['UND_ERR_HEADERS_TIMEOUT', 'UPSTREAM_TIMEOUT'],
    ['UND_ERR_BODY_TIMEOUT', 'UPSTREAM_TIMEOUT'],
    ['ECONNREFUSED', 'UPSTREAM_UNREACHABLE'],
    ['UND_ERR_SOCKET', 'UPSTREAM_UNREACHABLE'],
    ['HPE_INVALID_CONSTANT', 'UPSTREAM_BAD_RESPONSE'],
    ['UND_ERR_INVALID_ARG', 'BAD_REQUEST'],
  ])('%s → %s', (code, expected) => {
    expect(upstreamError(Object.assign(new Error('x'), { code })).code).toBe(expected);
  });
});
