// Hostile clients and hostile upstreams: every refusal is checked for its exact status / error code or
// close code, and for what reached the upstream (nothing, or exactly the messages before the bad frame).
import net from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from './helpers/clients.js';
import { startTestGuard, until, type TestGuard } from './helpers/guard.js';
import {
  Op,
  acceptFor,
  closePayload,
  frame,
  rawConnect,
  upgradeRequest,
  type HttpResponse,
  type RawConn,
} from './helpers/raw.js';
import { startUpstream, type Upstream } from './helpers/upstream.js';

let upstream: Upstream;
let guard: TestGuard;
let tagCount = 0;
const tag = (what: string) => `hostile-${process.pid}-${++tagCount}-${what}`;

/** Every raw connection a test opens, destroyed after it whatever happened. */
const conns = new Set<RawConn>();
async function connect(port: number): Promise<RawConn> {
  const conn = await rawConnect(port);
  conns.add(conn);
  return conn;
}

beforeAll(async () => {
  upstream = await startUpstream();
  guard = await startTestGuard({ upstream: upstream.url });
});

afterEach(() => {
  for (const conn of conns) conn.destroy();
  conns.clear();
});

afterAll(async () => {
  await guard?.close();
  await upstream?.stop();
});

/** A masked text frame, the kind a well-behaved client sends. */
const text = (payload: string) => frame({ opcode: Op.TEXT, payload });

interface Refusal {
  status: number;
  /** The X-WS-Guard-Error code. */
  code: string;
  /** The tag the request carried: the upstream must have recorded nothing for it. */
  tag?: string;
  /** Bytes to push right behind the request (default: a masked text frame); they must go nowhere. */
  trailer?: Buffer;
  via?: TestGuard;
}

/**
 * Sends `request`, expects a refusal with `Connection: close`, the socket then closed by the guard, a log
 * line with the code, and that nothing at all reached the upstream, even frames written afterwards.
 */
async function expectRefusal(request: string, expected: Refusal): Promise<HttpResponse> {
  const via = expected.via ?? guard;
  const logged = via.logs.length;
  const conn = await connect(via.port);
  conn.write(request);
  conn.write(expected.trailer ?? text('smuggled behind the head'));
  const res = await conn.readHttpResponse();
  expect(res.status).toBe(expected.status);
  expect(res.headers['x-ws-guard-error']).toBe(expected.code);
  expect(res.headers.connection).toBe('close');
  await conn.waitClosed();
  // The refusal is final: frames written after it reach nothing.
  conn.write(text('written after the refusal'));
  expect(via.logs.slice(logged)).toContainEqual(expect.objectContaining({ msg: 'upgrade refused', code: expected.code, status: expected.status }));
  if (expected.tag !== undefined) expect(await upstream.seen(expected.tag)).toEqual([]);
  return res;
}

describe('refused before the upgrade (raw client, real upstream)', () => {
  it('POST with upgrade headers → 405 with Allow: GET', async () => {
    const t = tag('post');
    const res = await expectRefusal(upgradeRequest(`/ws/echo?tag=${t}`, undefined, { method: 'POST' }), {
      status: 405, code: 'BAD_METHOD', tag: t,
    });
    expect(res.headers.allow).toBe('GET');
  });

  it('CONNECT → 405 with Allow: GET', async () => {
    const t = tag('connect');
    const res = await expectRefusal(`CONNECT /ws/echo?tag=${t} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`, {
      status: 405, code: 'BAD_METHOD', tag: t,
    });
    expect(res.headers.allow).toBe('GET');
  });

  it('HTTP/1.0 → 400 BAD_HTTP_VERSION', async () => {
    const t = tag('http10');
    await expectRefusal(upgradeRequest(`/ws/echo?tag=${t}`, undefined, { version: 'HTTP/1.0' }), {
      status: 400, code: 'BAD_HTTP_VERSION', tag: t,
    });
  });

  it('Upgrade: h2c (Connection: Upgrade, HTTP2-Settings) → 400 BAD_UPGRADE', async () => {
    const t = tag('h2c');
    const request = upgradeRequest(`/ws/echo?tag=${t}`, {
      Upgrade: 'h2c',
      Connection: 'Upgrade, HTTP2-Settings',
      'HTTP2-Settings': 'AAMAAABkAARAAAAAAAIAAAAA',
    });
    await expectRefusal(request, { status: 400, code: 'BAD_UPGRADE', tag: t });
  });

  it('Upgrade: websocket, h2c → 400 BAD_UPGRADE', async () => {
    const t = tag('ws-h2c');
    await expectRefusal(upgradeRequest(`/ws/echo?tag=${t}`, { Upgrade: 'websocket, h2c' }), {
      status: 400, code: 'BAD_UPGRADE', tag: t,
    });
  });

  it('missing Sec-WebSocket-Key → 400 BAD_KEY', async () => {
    const t = tag('no-key');
    await expectRefusal(upgradeRequest(`/ws/echo?tag=${t}`, undefined, { omit: ['Sec-WebSocket-Key'] }), {
      status: 400, code: 'BAD_KEY', tag: t,
    });
  });

  it.each([
    ['not base64 at all', 'not a key'],
    ['15 bytes', Buffer.alloc(15, 7).toString('base64')],
    ['17 bytes', Buffer.alloc(17, 7).toString('base64')],
    ['16 bytes, unpadded', Buffer.alloc(16, 7).toString('base64').replace(/=+$/, '')],
  ])('invalid Sec-WebSocket-Key (%s) → 400 BAD_KEY', async (_, key) => {
    const t = tag('bad-key');
    await expectRefusal(upgradeRequest(`/ws/echo?tag=${t}`, { 'Sec-WebSocket-Key': key }), {
      status: 400, code: 'BAD_KEY', tag: t,
    });
  });

  it('two Sec-WebSocket-Key headers → 400 BAD_KEY', async () => {
    const t = tag('dup-key');
    const request = upgradeRequest(`/ws/echo?tag=${t}`, [`Sec-WebSocket-Key: ${Buffer.alloc(16, 1).toString('base64')}`]);
    await expectRefusal(request, { status: 400, code: 'BAD_KEY', tag: t });
  });

  it('Sec-WebSocket-Version: 8 → 426 with Sec-WebSocket-Version: 13', async () => {
    const t = tag('v8');
    const res = await expectRefusal(upgradeRequest(`/ws/echo?tag=${t}`, { 'Sec-WebSocket-Version': '8' }), {
      status: 426, code: 'BAD_VERSION', tag: t,
    });
    expect(res.headers['sec-websocket-version']).toBe('13');
  });

  it('missing Sec-WebSocket-Version → 426 with Sec-WebSocket-Version: 13', async () => {
    const t = tag('no-version');
    const res = await expectRefusal(upgradeRequest(`/ws/echo?tag=${t}`, undefined, { omit: ['Sec-WebSocket-Version'] }), {
      status: 426, code: 'BAD_VERSION', tag: t,
    });
    expect(res.headers['sec-websocket-version']).toBe('13');
  });

  it('a body with Content-Length: 5 → 400 HANDSHAKE_BODY', async () => {
    const t = tag('content-length');
    await expectRefusal(upgradeRequest(`/ws/echo?tag=${t}`, { 'Content-Length': '5' }), {
      status: 400, code: 'HANDSHAKE_BODY', tag: t, trailer: Buffer.from('hello'),
    });
  });

  it('a chunked body → 400 HANDSHAKE_BODY', async () => {
    const t = tag('chunked');
    await expectRefusal(upgradeRequest(`/ws/echo?tag=${t}`, { 'Transfer-Encoding': 'chunked' }), {
      status: 400, code: 'HANDSHAKE_BODY', tag: t, trailer: Buffer.from('5\r\nhello\r\n0\r\n\r\n'),
    });
  });

  it('an invalid Sec-WebSocket-Protocol entry → 400 BAD_SUBPROTOCOL', async () => {
    const t = tag('bad-proto');
    await expectRefusal(upgradeRequest(`/ws/echo?tag=${t}`, { 'Sec-WebSocket-Protocol': 'chat, bad{token}' }), {
      status: 400, code: 'BAD_SUBPROTOCOL', tag: t,
    });
  });

  it('no Host header → 400 BAD_REQUEST', async () => {
    const t = tag('no-host');
    await expectRefusal(upgradeRequest(`/ws/echo?tag=${t}`, undefined, { omit: ['Host'] }), {
      status: 400, code: 'BAD_REQUEST', tag: t,
    });
  });

  it('two Host headers → 400 BAD_REQUEST (the upstream must not pick another host than the guard saw)', async () => {
    const t = tag('two-hosts');
    await expectRefusal(upgradeRequest(`/ws/echo?tag=${t}`, ['Host: other.example']), {
      status: 400, code: 'BAD_REQUEST', tag: t,
    });
  });

  it('a 20 KiB header → 431 HEADERS_TOO_LARGE', async () => {
    const t = tag('big-header');
    await expectRefusal(upgradeRequest(`/ws/echo?tag=${t}`, { 'X-Padding': 'a'.repeat(20 * 1024) }), {
      status: 431, code: 'HEADERS_TOO_LARGE', tag: t,
    });
  });

  it('logs every refusal with its code, status and path', async () => {
    const t = tag('logged');
    const path = `/ws/echo?tag=${t}`;
    await expectRefusal(upgradeRequest(path, { 'Sec-WebSocket-Key': 'short' }), { status: 400, code: 'BAD_KEY', tag: t });
    const line = guard.logs.find((l) => l.msg === 'upgrade refused' && l.path === path);
    expect(line).toMatchObject({ code: 'BAD_KEY', status: 400, ip: '127.0.0.1' });
  });

  it('the upstream refuses (403): relayed with Connection: close, socket closed, no tunnel', async () => {
    const t = tag('reject');
    const logged = guard.logs.length;
    const conn = await connect(guard.port);
    conn.write(upgradeRequest(`/ws/reject?tag=${t}`));
    const res = await conn.readHttpResponse();
    expect(res.status).toBe(403);
    expect(res.headers.connection).toBe('close');
    expect(res.headers['x-ws-guard-error']).toBeUndefined();
    await conn.waitClosed();
    conn.write(text('after the 403'));
    const events = await upstream.seen(t);
    expect(events.map((e) => e.type)).toEqual(['ws_connect']);
    expect(events[0]).toMatchObject({ path: '/ws/reject' });
    expect(guard.logs.slice(logged)).toContainEqual(expect.objectContaining({ msg: 'upstream refused the upgrade', status: 403 }));
  });

  describe('handshake timeout (timeouts.handshake: 500ms)', () => {
    let slow: TestGuard;
    beforeAll(async () => {
      slow = await startTestGuard({ upstream: upstream.url, timeouts: { handshake: '500ms' } });
    });
    afterAll(() => slow?.close());

    it('half a request head, then silence → 408 HANDSHAKE_TIMEOUT', async () => {
      const t = tag('half-head');
      const request = upgradeRequest(`/ws/echo?tag=${t}`);
      const half = request.slice(0, request.indexOf('Sec-WebSocket-Key'));
      await expectRefusal(half, { status: 408, code: 'HANDSHAKE_TIMEOUT', tag: t, trailer: Buffer.alloc(0), via: slow });
    });

    it('a connection that sends nothing at all → 408 HANDSHAKE_TIMEOUT', async () => {
      await expectRefusal('', { status: 408, code: 'HANDSHAKE_TIMEOUT', trailer: Buffer.alloc(0), via: slow });
    });
  });
});

// ---------------------------------------------------------------------------------------------------------
// Fake upstreams: a raw TCP server that reads the guard's request head and answers bytes the test chooses.

interface FakeRequest {
  head: string;
  path: string;
  query: URLSearchParams;
  /** Lowercased names, repeated headers joined with ', '. */
  headers: Record<string, string>;
  socket: net.Socket;
  /** Every byte the guard sent after the head. */
  after: Buffer;
  /** Resolves when the guard's connection is gone. */
  closed: Promise<void>;
}

interface FakeUpstream {
  port: number;
  url: string;
  /** The request that carried `?tag=<tag>`, once it has arrived. */
  request(tag: string): Promise<FakeRequest>;
  close(): Promise<void>;
}

async function startFakeUpstream(respond: (req: FakeRequest) => void): Promise<FakeUpstream> {
  const requests: FakeRequest[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
    let resolveClosed!: () => void;
    const closed = new Promise<void>((resolve) => (resolveClosed = resolve));
    socket.once('close', () => {
      sockets.delete(socket);
      resolveClosed();
    });
    let buffered = Buffer.alloc(0);
    let req: FakeRequest | undefined;
    socket.on('data', (chunk: Buffer) => {
      if (req) {
        req.after = Buffer.concat([req.after, chunk]);
        return;
      }
      buffered = Buffer.concat([buffered, chunk]);
      const end = buffered.indexOf('\r\n\r\n');
      if (end === -1) return;
      const head = buffered.subarray(0, end).toString('latin1');
      const [requestLine = '', ...lines] = head.split('\r\n');
      const target = requestLine.split(' ')[1] ?? '/';
      const url = new URL(target, 'http://fake');
      const headers: Record<string, string> = {};
      for (const line of lines) {
        const colon = line.indexOf(':');
        const name = line.slice(0, colon).trim().toLowerCase();
        const value = line.slice(colon + 1).trim();
        headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
      }
      req = { head, path: url.pathname, query: url.searchParams, headers, socket, after: buffered.subarray(end + 4), closed };
      requests.push(req);
      respond(req);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    request: async (t) => {
      const find = () => requests.find((r) => r.query.get('tag') === t);
      await until(() => find() !== undefined, 5000, `the fake upstream to get ?tag=${t}`);
      return find()!;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** A valid 101 for the request's key, with extra header lines. */
function switching(req: FakeRequest, extra: string[] = []): string {
  const key = req.headers['sec-websocket-key'] ?? '';
  return ['HTTP/1.1 101 Switching Protocols', 'Upgrade: websocket', 'Connection: Upgrade',
    `Sec-WebSocket-Accept: ${acceptFor(key)}`, ...extra, '', ''].join('\r\n');
}

/** Server → client frames of the masked-frame cases: a valid one, then one that is masked (illegal). */
const upstreamFrames = () => Buffer.concat([
  frame({ opcode: Op.TEXT, payload: 'welcome', mask: false }),
  frame({ opcode: Op.TEXT, payload: 'masked by the server' }),
]);

/** The fake's behaviour is chosen by the request path. */
function fakeAnswer(req: FakeRequest): void {
  const { socket } = req;
  switch (req.path) {
    case '/bad-accept':
      socket.write(switching(req).replace(/Sec-WebSocket-Accept: \S+/, `Sec-WebSocket-Accept: ${acceptFor('wrong key')}`));
      break;
    case '/proto':
      socket.write(switching(req, [`Sec-WebSocket-Protocol: ${req.query.get('proto')}`]));
      break;
    case '/deflate':
      socket.write(switching(req, ['Sec-WebSocket-Extensions: permessage-deflate']));
      break;
    case '/ok':
    case '/masked': // the test writes the frames once the client has the 101
      socket.write(switching(req));
      break;
    case '/masked-in-head':
      socket.write(Buffer.concat([Buffer.from(switching(req), 'latin1'), upstreamFrames()]));
      break;
    case '/101-no-connection':
      socket.write(switching(req).replace('Connection: Upgrade\r\n', ''));
      break;
    case '/101-keep-alive':
      socket.write(switching(req).replace('Connection: Upgrade', 'Connection: keep-alive'));
      break;
    case '/101-no-upgrade':
      socket.write(switching(req).replace('Upgrade: websocket\r\n', ''));
      break;
    case '/101-h2c':
      socket.write(switching(req).replace('Upgrade: websocket', 'Upgrade: h2c'));
      break;
    case '/status-42': // a status below 100, for a plain request and for an upgrade alike
      socket.end('HTTP/1.1 042 Odd\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno');
      break;
    case '/reason-ctl': // a control character in the reason phrase
      socket.end(`HTTP/1.1 ${req.query.get('status') ?? '200'} O\x01K\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok`);
      break;
    case '/204-body':
    case '/304-body': // a body on a status that has none: the bytes would be the next response
      socket.write(`HTTP/1.1 ${req.path.slice(1, 4)} Nothing\r\nContent-Length: 5\r\n\r\nhello`);
      break;
    case '/long-body': // more body than Content-Length says: the extra byte would be the next response
      socket.end('HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab');
      break;
    case '/plain-101': // a protocol switch nobody asked for, on a plain request
      socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
      break;
    case '/silent':
      break;
    case '/endless-403': // a refusal whose body never ends
      socket.write('HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n\r\nnot you');
      break;
    default:
      socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
  }
}

describe('hostile upstream answers are checked before they reach the client', () => {
  let fake: FakeUpstream;
  let viaFake: TestGuard;
  beforeAll(async () => {
    fake = await startFakeUpstream(fakeAnswer);
    viaFake = await startTestGuard({ upstream: fake.url });
  });
  afterAll(async () => {
    await viaFake?.close();
    await fake?.close();
  });

  /** The guard is still alive and proxying: a plain request and an upgrade through it are answered. */
  async function stillServes(): Promise<void> {
    expect((await fetch(`${viaFake.httpUrl}/not-here`)).status).toBe(404);
    const conn = await connect(viaFake.port);
    conn.write(upgradeRequest(`/ok?tag=${tag('alive')}`));
    expect((await conn.readHttpResponse()).status).toBe(101);
  }

  it('a plain request answered with a status below 100 → 502 UPSTREAM_BAD_RESPONSE', async () => {
    const res = await fetch(`${viaFake.httpUrl}/status-42?tag=${tag('42')}`);
    expect(res.status).toBe(502);
    expect(res.headers.get('x-ws-guard-error')).toBe('UPSTREAM_BAD_RESPONSE');
    await stillServes();
  });

  it('an upgrade answered with a status below 100 → 502 UPSTREAM_BAD_RESPONSE, nothing relayed', async () => {
    const conn = await connect(viaFake.port);
    conn.write(upgradeRequest(`/status-42?tag=${tag('42-upgrade')}`));
    const res = await conn.readHttpResponse();
    expect(res.status).toBe(502);
    expect(res.headers['x-ws-guard-error']).toBe('UPSTREAM_BAD_RESPONSE');
    await stillServes();
  });

  it('a control character in the reason phrase is replaced by the standard one, plain and refused upgrade', async () => {
    const plain = await rawConnect(viaFake.port);
    conns.add(plain);
    plain.write(`GET /reason-ctl?tag=${tag('reason')} HTTP/1.1\r\nHost: x\r\n\r\n`);
    const res = await plain.readHttpResponse();
    expect(res.raw.split('\r\n')[0]).toBe('HTTP/1.1 200 OK');
    const conn = await connect(viaFake.port);
    conn.write(upgradeRequest(`/reason-ctl?status=403&tag=${tag('reason-upgrade')}`));
    const refused = await conn.readHttpResponse();
    expect(refused.raw.split('\r\n')[0]).toBe('HTTP/1.1 403 Forbidden');
    await conn.waitClosed();
    await stillServes();
  });

  it.each(['/204-body', '/304-body'])('%s: the client gets the complete answer, not a bare close', async (path) => {
    const conn = await connect(viaFake.port);
    conn.write(`GET ${path}?tag=${tag('nobody')} HTTP/1.1\r\nHost: x\r\n\r\n`);
    const res = await conn.readHttpResponse();
    expect(res.status).toBe(Number(path.slice(1, 4)));
    expect(res.headers['content-length']).toBe(path === '/204-body' ? undefined : '5');
    await stillServes();
  });

  it('more body than Content-Length: the client gets the answer the length frames, the rest is dropped', async () => {
    for (let i = 0; i < 20; i++) {
      const res = await fetch(`${viaFake.httpUrl}/long-body?tag=${tag('long')}`);
      expect(res.status).toBe(200);
      expect(await res.text()).toBe('a');
    }
    await stillServes();
  });

  it('a client that leaves while the upstream is dialled gets nothing and is not logged as a refusal', async () => {
    const logged = viaFake.logs.length;
    const t = tag('gone');
    const conn = await connect(viaFake.port);
    conn.write(upgradeRequest(`/silent?tag=${t}`));
    await fake.request(t);
    conn.socket.end();
    await conn.waitClosed();
    expect(conn.received.length).toBe(0);
    await new Promise((r) => setTimeout(r, 100));
    expect(viaFake.logs.slice(logged).filter((l) => l.msg === 'upgrade refused')).toEqual([]);
    await stillServes();
  });

  it('a 101 to a plain request → 502, and the pooled connection is not reused as a tunnel', async () => {
    const res = await fetch(`${viaFake.httpUrl}/plain-101?tag=${tag('plain-101')}`);
    expect(res.status).toBe(502);
    await stillServes();
  });
});

describe('request targets no parser agrees on', () => {
  it.each([
    ['GET //[? with Upgrade (URL cannot parse it)', '//[?'],
    ['a fragment', '/ws/echo#x'],
    ['a dot segment', '/ws/../echo'],
    ['an encoded slash', '/ws%2fecho'],
    ['absolute-form', 'http://evil.example/ws/echo'],
  ])('%s → 400 BAD_REQUEST on an upgrade and on plain HTTP, and the guard lives on', async (_, target) => {
    const t = tag('target');
    await expectRefusal(upgradeRequest(target), { status: 400, code: 'BAD_REQUEST' });
    const conn = await connect(guard.port);
    conn.write(`GET ${target} HTTP/1.1\r\nHost: x\r\n\r\n`);
    const res = await conn.readHttpResponse();
    expect(res.status).toBe(400);
    expect(res.headers['x-ws-guard-error']).toBe('BAD_REQUEST');
    expect(await upstream.seen(t)).toEqual([]);
    expect((await fetch(`${guard.httpUrl}/hello`)).status).toBe(200);
  });
});

/** Parses frames as they reached the fake upstream (unmasking them). */
function parseFrames(buf: Buffer): { opcode: number; masked: boolean; payload: Buffer }[] {
  const frames: { opcode: number; masked: boolean; payload: Buffer }[] = [];
  let pos = 0;
  while (buf.length - pos >= 2) {
    const b1 = buf[pos + 1]!;
    let length = b1 & 0x7f;
    let at = pos + 2;
    if (length === 126) {
      length = buf.readUInt16BE(at);
      at += 2;
    } else if (length === 127) {
      length = Number(buf.readBigUInt64BE(at));
      at += 8;
    }
    const masked = (b1 & 0x80) !== 0;
    const key = masked ? buf.subarray(at, at + 4) : undefined;
    if (masked) at += 4;
    if (buf.length < at + length) throw new Error(`truncated frame at ${pos}`);
    const payload = Buffer.from(buf.subarray(at, at + length));
    if (key) for (let i = 0; i < payload.length; i++) payload[i]! ^= key[i % 4]!;
    frames.push({ opcode: buf[pos]! & 0x0f, masked, payload });
    pos = at + length;
  }
  if (pos !== buf.length) throw new Error(`${buf.length - pos} trailing bytes`);
  return frames;
}

describe('hostile upstreams (fake upstream)', () => {
  let fake: FakeUpstream;
  let viaFake: TestGuard;
  let viaFakeOff: TestGuard;
  beforeAll(async () => {
    fake = await startFakeUpstream(fakeAnswer);
    viaFake = await startTestGuard({ upstream: fake.url });
    viaFakeOff = await startTestGuard({ upstream: fake.url, compression: 'off' });
  });
  afterAll(async () => {
    await viaFake?.close();
    await viaFakeOff?.close();
    await fake?.close();
  });

  /**
   * The guard's answer to a 101 it must not accept: the exact refusal, and on the upstream side nothing
   * but the head, then the connection closed by the guard (no tunnel).
   */
  async function expectBadHandshake(path: string, t: string, via: TestGuard, headers: Record<string, string> = {}) {
    const logged = via.logs.length;
    const conn = await connect(via.port);
    conn.write(Buffer.concat([Buffer.from(upgradeRequest(path, headers), 'latin1'), text('pushed with the handshake')]));
    const res = await conn.readHttpResponse();
    expect(res.status).toBe(502);
    expect(res.headers['x-ws-guard-error']).toBe('UPSTREAM_BAD_HANDSHAKE');
    expect(res.headers.connection).toBe('close');
    await conn.waitClosed();
    const req = await fake.request(t);
    await req.closed;
    expect(req.after.length).toBe(0);
    expect(via.logs.slice(logged)).toContainEqual(expect.objectContaining({ msg: 'upgrade refused', code: 'UPSTREAM_BAD_HANDSHAKE', status: 502 }));
    return req;
  }

  it('101 with a wrong Sec-WebSocket-Accept → 502 UPSTREAM_BAD_HANDSHAKE', async () => {
    const t = tag('bad-accept');
    await expectBadHandshake(`/bad-accept?tag=${t}`, t, viaFake);
  });

  it.each([
    ['without a Connection header', '/101-no-connection'],
    ['with Connection: keep-alive', '/101-keep-alive'],
    ['without an Upgrade header', '/101-no-upgrade'],
    ['with Upgrade: h2c', '/101-h2c'],
  ])('101 %s → 502 UPSTREAM_BAD_HANDSHAKE, never a relayed 101', async (_, path) => {
    const t = tag('101');
    await expectBadHandshake(`${path}?tag=${t}`, t, viaFake);
  });

  it('101 naming a subprotocol the client did not offer → 502', async () => {
    const t = tag('proto');
    const req = await expectBadHandshake(`/proto?tag=${t}&proto=evil`, t, viaFake, { 'Sec-WebSocket-Protocol': 'chat, superchat' });
    expect(req.headers['sec-websocket-protocol']).toBe('chat, superchat');
    const t2 = tag('proto-none-offered');
    await expectBadHandshake(`/proto?tag=${t2}&proto=chat`, t2, viaFake);
  });

  it('101 naming permessage-deflate when the client offered none → 502', async () => {
    const t = tag('deflate-unoffered');
    const req = await expectBadHandshake(`/deflate?tag=${t}`, t, viaFake);
    expect(req.headers['sec-websocket-extensions']).toBeUndefined();
  });

  it('compression off: no extension is offered upstream, and a 101 naming permessage-deflate → 502', async () => {
    const t = tag('deflate-off');
    const req = await expectBadHandshake(`/deflate?tag=${t}`, t, viaFakeOff, {
      'Sec-WebSocket-Extensions': 'permessage-deflate; client_max_window_bits',
    });
    expect(req.headers['sec-websocket-extensions']).toBeUndefined();
  });

  it('an unknown extension offered by the client is not forwarded; permessage-deflate offers are', async () => {
    const t = tag('x-foo-only');
    const only = await connect(viaFake.port);
    only.write(upgradeRequest(`/ok?tag=${t}`, { 'Sec-WebSocket-Extensions': 'x-foo' }));
    expect((await only.readHttpResponse()).status).toBe(101);
    expect((await fake.request(t)).headers['sec-websocket-extensions']).toBeUndefined();

    const t2 = tag('x-foo-mixed');
    const mixed = await connect(viaFake.port);
    mixed.write(upgradeRequest(`/ok?tag=${t2}`, {
      'Sec-WebSocket-Extensions': 'x-foo; bar=1, permessage-deflate; client_max_window_bits, x-webkit-deflate-frame',
    }));
    expect((await mixed.readHttpResponse()).status).toBe(101);
    expect((await fake.request(t2)).headers['sec-websocket-extensions']).toBe('permessage-deflate; client_max_window_bits');
  });

  it('upstream accepts TCP but never answers → 504 UPSTREAM_TIMEOUT (upstreamResponse: 300ms)', async () => {
    const impatient = await startTestGuard({ upstream: fake.url, timeouts: { upstreamResponse: '300ms' } });
    try {
      const t = tag('silent');
      const conn = await connect(impatient.port);
      conn.write(upgradeRequest(`/silent?tag=${t}`));
      const res = await conn.readHttpResponse();
      expect(res.status).toBe(504);
      expect(res.headers['x-ws-guard-error']).toBe('UPSTREAM_TIMEOUT');
      expect(res.headers.connection).toBe('close');
      await conn.waitClosed();
      const req = await fake.request(t);
      await req.closed;
      expect(req.after.length).toBe(0);
      expect(impatient.logs).toContainEqual(expect.objectContaining({ msg: 'upgrade refused', code: 'UPSTREAM_TIMEOUT', status: 504 }));
    } finally {
      await impatient.close();
    }
  });

  it('a relayed refusal whose body never ends: the client leaving ends the upstream leg too', async () => {
    const t = tag('endless');
    const conn = await connect(viaFake.port);
    conn.write(upgradeRequest(`/endless-403?tag=${t}`));
    const res = await conn.readHttpResponse();
    expect(res.status).toBe(403);
    expect(res.headers.connection).toBe('close');
    const req = await fake.request(t);
    conn.destroy();
    await req.closed;
  });

  it('guard.close() ends a relay still in flight', async () => {
    const g = await startTestGuard({ upstream: fake.url });
    const t = tag('endless-close');
    const conn = await connect(g.port);
    conn.write(upgradeRequest(`/endless-403?tag=${t}`));
    expect((await conn.readHttpResponse()).status).toBe(403);
    await g.close();
    await conn.waitClosed();
    await (await fake.request(t)).closed;
  });

  it('a Connection header naming Sec-WebSocket-Key cannot strip it from the upstream handshake', async () => {
    const t = tag('conn-key');
    const conn = await connect(viaFake.port);
    conn.write(upgradeRequest(`/ok?tag=${t}`, { Connection: 'Upgrade, Sec-WebSocket-Key, Sec-WebSocket-Version' }));
    expect((await conn.readHttpResponse()).status).toBe(101);
    const req = await fake.request(t);
    expect(req.headers['sec-websocket-key']).toMatch(/^[A-Za-z0-9+/]{22}==$/);
    expect(req.headers['sec-websocket-version']).toBe('13');
  });

  it('upstream port closed → 502 UPSTREAM_UNREACHABLE', async () => {
    const down = await startTestGuard({ upstream: `http://127.0.0.1:${await freePort()}` });
    try {
      await expectRefusal(upgradeRequest('/ws/echo?tag=unreachable'), { status: 502, code: 'UPSTREAM_UNREACHABLE', via: down });
    } finally {
      await down.close();
    }
  });

  it.each([
    ['after the 101', '/masked'],
    ['in the same write as the 101', '/masked-in-head'],
  ])('a masked frame from the upstream (%s) → client gets close 1002, upstream a masked close 1002', async (_, path) => {
    const t = tag('masked');
    const logged = viaFake.logs.length;
    const conn = await connect(viaFake.port);
    conn.write(upgradeRequest(`${path}?tag=${t}`));
    expect((await conn.readHttpResponse()).status).toBe(101);
    const req = await fake.request(t);
    if (path === '/masked') req.socket.write(upstreamFrames());

    const welcome = await conn.readFrame();
    expect(welcome).toMatchObject({ opcode: Op.TEXT, masked: false });
    expect(welcome.payload.toString()).toBe('welcome');
    const close = await conn.readFrame();
    expect(close).toMatchObject({ opcode: Op.CLOSE, masked: false, closeCode: 1002 });
    await conn.waitClosed();
    await expect(conn.readFrame()).rejects.toThrow(/connection closed/);

    await req.closed;
    const toUpstream = parseFrames(req.after);
    expect(toUpstream).toHaveLength(1);
    expect(toUpstream[0]).toMatchObject({ opcode: Op.CLOSE, masked: true });
    expect(toUpstream[0]!.payload.readUInt16BE(0)).toBe(1002);
    await until(() => viaFake.logs.slice(logged).some((l) => l.msg === 'connection closed'));
    expect(viaFake.logs.slice(logged)).toContainEqual(expect.objectContaining({
      msg: 'connection closed', closedBy: 'guard', reason: 'PROTOCOL_VIOLATION', closeCode: 1002, detail: expect.stringMatching(/^from the upstream: /),
    }));
  });
});

// ---------------------------------------------------------------------------------------------------------
// After the upgrade: the raw client talks through the guard to the real upstream's echo endpoint.

const violations: [string, () => Buffer][] = [
  ['an unmasked frame', () => frame({ opcode: Op.TEXT, payload: 'unmasked', mask: false })],
  ['RSV2 set', () => frame({ opcode: Op.TEXT, rsv2: true, payload: 'rsv2' })],
  ['RSV1 without permessage-deflate negotiated', () => frame({ opcode: Op.TEXT, rsv1: true, payload: 'rsv1' })],
  ['reserved opcode 3', () => frame({ opcode: 0x3, payload: 'op3' })],
  ['reserved opcode 0xB', () => frame({ opcode: 0xb, payload: 'opB' })],
  ['a fragmented ping', () => frame({ opcode: Op.PING, fin: false, payload: 'ping' })],
  ['a ping with a 126-byte payload', () => frame({ opcode: Op.PING, payload: Buffer.alloc(126, 0x70) })],
  ['a continuation without a start', () => frame({ opcode: Op.CONTINUATION, payload: 'orphan' })],
  ['a new text frame inside a fragmented message', () => Buffer.concat([
    frame({ opcode: Op.TEXT, fin: false, payload: 'first half' }),
    frame({ opcode: Op.TEXT, payload: 'intruder' }),
  ])],
  ['a 64-bit length with the top bit set', () => frame({ opcode: Op.BINARY, lengthForm: '64', rawLength: 1n << 63n, payload: 'huge' })],
  ['a 16-bit length for a 5-byte payload', () => frame({ opcode: Op.TEXT, lengthForm: '16', payload: 'short' })],
  ['a 64-bit length for a 5-byte payload', () => frame({ opcode: Op.TEXT, lengthForm: '64', payload: 'short' })],
  ['a close frame with a 1-byte body', () => frame({ opcode: Op.CLOSE, payload: Buffer.from([0x03]) })],
];

/** After a violation the upstream must have seen exactly: the connect, `messages`, and a disconnect 1002. */
async function expectUpstreamSawOnly(t: string, messages: string[]): Promise<void> {
  await until(async () => (await upstream.seen(t)).some((e) => e.type === 'ws_disconnect'), 5000, 'the upstream disconnect');
  const events = await upstream.seen(t);
  expect(events.map((e) => e.type)).toEqual(['ws_connect', ...messages.map(() => 'ws_text'), 'ws_disconnect']);
  expect(events.filter((e) => e.type === 'ws_text').map((e) => e.data)).toEqual(messages);
  expect(events.at(-1)).toEqual({ type: 'ws_disconnect', code: 1002 });
}

describe('refused after the upgrade (raw client → guard → real upstream)', () => {
  it.each(violations)('%s → close 1002; the upstream saw only the message before it', async (_, bad) => {
    const t = tag('violation');
    const logged = guard.logs.length;
    const conn = await connect(guard.port);
    conn.write(upgradeRequest(`/ws/echo?tag=${t}`));
    expect((await conn.readHttpResponse()).status).toBe(101);
    conn.write(text('before'));
    const echo = await conn.readFrame();
    expect(echo).toMatchObject({ opcode: Op.TEXT, masked: false });
    expect(echo.payload.toString()).toBe('before');

    conn.write(bad());
    conn.write(text('after'));
    const close = await conn.readFrame();
    expect(close).toMatchObject({ opcode: Op.CLOSE, masked: false, closeCode: 1002 });
    await conn.waitClosed();
    expect(conn.error).toBeUndefined();
    // Nothing follows the close frame.
    await expect(conn.readFrame()).rejects.toThrow(/connection closed/);

    await expectUpstreamSawOnly(t, ['before']);
    await until(() => guard.logs.slice(logged).some((l) => l.msg === 'connection closed'));
    expect(guard.logs.slice(logged)).toContainEqual(expect.objectContaining({
      msg: 'connection closed', closedBy: 'guard', reason: 'PROTOCOL_VIOLATION', closeCode: 1002, detail: expect.stringMatching(/^from the client: /),
    }));
  });

  it('the handshake, a valid frame and a bad frame in one write: the bad frame is still refused', async () => {
    const t = tag('one-write');
    const conn = await connect(guard.port);
    conn.write(Buffer.concat([
      Buffer.from(upgradeRequest(`/ws/echo?tag=${t}`), 'latin1'),
      text('before'),
      frame({ opcode: Op.TEXT, rsv2: true, payload: 'bad' }),
      text('after'),
    ]));
    expect((await conn.readHttpResponse()).status).toBe(101);
    // The upstream's echo of "before" was on its way when the guard refused the bad frame: it still
    // reaches the client, in front of the guard's close (Autobahn 3.2, 4.1.3, 5.15).
    const echo = await conn.readFrame();
    expect(echo).toMatchObject({ opcode: Op.TEXT, masked: false });
    expect(echo.payload.toString()).toBe('before');
    const close = await conn.readFrame();
    expect(close).toMatchObject({ opcode: Op.CLOSE, masked: false, closeCode: 1002 });
    await conn.waitClosed();
    await expect(conn.readFrame()).rejects.toThrow(/connection closed/);
    await expectUpstreamSawOnly(t, ['before']);
  });

  it('a well-behaved closing handshake still works next to all this (control case)', async () => {
    const t = tag('control');
    const conn = await connect(guard.port);
    conn.write(upgradeRequest(`/ws/echo?tag=${t}`));
    expect((await conn.readHttpResponse()).status).toBe(101);
    conn.write(text('fine'));
    expect((await conn.readFrame()).payload.toString()).toBe('fine');
    conn.write(frame({ opcode: Op.CLOSE, payload: closePayload(1000) }));
    expect(await conn.readFrame()).toMatchObject({ opcode: Op.CLOSE, closeCode: 1000 });
    await conn.waitClosed();
    await until(async () => (await upstream.seen(t)).some((e) => e.type === 'ws_disconnect'), 5000, 'the upstream disconnect');
    expect((await upstream.seen(t)).at(-1)).toEqual({ type: 'ws_disconnect', code: 1000 });
  });
});
