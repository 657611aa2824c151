// Self-check of the test fixtures, run directly against the upstream with no
// proxy in between, so a failing proxy test can't be blamed on the harness.
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Op, acceptFor, closePayload, frame, keyOf, rawConnect, upgradeRequest, type RawConn } from './raw.js';
import { runPyClient, startUpstream, type Upstream } from './upstream.js';

let upstream: Upstream;
const conns: RawConn[] = [];

beforeAll(async () => {
  upstream = await startUpstream();
});

afterAll(async () => {
  for (const c of conns) c.destroy();
  await upstream?.stop();
});

async function connect(): Promise<RawConn> {
  const c = await rawConnect(upstream.port);
  conns.push(c);
  return c;
}

/** The disconnect event is recorded after the close handshake, so poll briefly. */
async function seenUntil(tag: string, pred: (events: any[]) => boolean): Promise<any[]> {
  const deadline = Date.now() + 5_000;
  for (;;) {
    const events = await upstream.seen(tag);
    if (pred(events) || Date.now() > deadline) return events;
    await new Promise((r) => setTimeout(r, 50));
  }
}

function request(method: string, path: string, body?: Buffer): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${upstream.url}${path}`, { method, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('python upstream + pyclient', () => {
  it('echoes in order and negotiates permessage-deflate', async () => {
    const res = await runPyClient(`ws://127.0.0.1:${upstream.port}/ws/echo?tag=t1`, 'echo', '5');
    expect(res).toMatchObject({ ok: true, replies_in_order: true, count: 5, subprotocol: null });
    expect(res.extensions).toContain('permessage-deflate');

    const events = await seenUntil('t1', (e) => e.some((x) => x.type === 'ws_disconnect'));
    expect(events.filter((e) => e.type === 'ws_text').map((e) => e.data)).toEqual([0, 1, 2, 3, 4].map((i) => `msg-${i}`));
    expect(events[0]).toMatchObject({ type: 'ws_connect', path: '/ws/echo', subprotocols: [] });
    expect(events[0].headers['sec-websocket-extensions']).toContain('permessage-deflate');
    expect(events.at(-1)).toEqual({ type: 'ws_disconnect', code: 1000 });
  });

  it('accepts the subprotocol named by ?proto=', async () => {
    const res = await runPyClient(`ws://127.0.0.1:${upstream.port}/ws/echo?tag=t2&proto=b`, 'echo', '1', 'a,b');
    expect(res).toMatchObject({ ok: true, subprotocol: 'b' });
    const [connect] = await upstream.seen('t2');
    expect(connect).toMatchObject({ type: 'ws_connect', subprotocols: ['a', 'b'] });
  });

  it('round-trips a large binary message', async () => {
    const res = await runPyClient(`ws://127.0.0.1:${upstream.port}/ws/echo?tag=t3`, 'big', String(2 * 1024 * 1024));
    expect(res.ok).toBe(true);
    const bytes = (await upstream.seen('t3')).find((e) => e.type === 'ws_bytes');
    expect(bytes).toEqual({ type: 'ws_bytes', len: 2 * 1024 * 1024, sha256: res.sent_sha256 });
  });

  it('reports the close code the peer echoed back', async () => {
    const res = await runPyClient(`ws://127.0.0.1:${upstream.port}/ws/echo?tag=t4`, 'closecode', '4321');
    expect(res).toMatchObject({ ok: true, close_code: 4321 });
    const events = await seenUntil('t4', (e) => e.some((x) => x.type === 'ws_disconnect'));
    expect(events.at(-1)).toEqual({ type: 'ws_disconnect', code: 4321 });
  });

  it('reports a server-initiated close code and reason', async () => {
    const res = await runPyClient(`ws://127.0.0.1:${upstream.port}/ws/close?code=4001&reason=bye%20now`, 'recvclose');
    expect(res).toMatchObject({ ok: true, close_code: 4001, close_reason: 'bye now' });
  });

  it('returns ok:false with the HTTP status when the upgrade is refused', async () => {
    const res = await runPyClient(`ws://127.0.0.1:${upstream.port}/ws/reject`, 'echo', '1');
    expect(res).toMatchObject({ ok: false, status: 403 });
  });
});

describe('raw socket helpers against the upstream', () => {
  it('completes a handshake and reads an echoed frame', async () => {
    const c = await connect();
    const req = upgradeRequest('/ws/echo?tag=raw1');
    c.write(req);
    const head = await c.readHttpResponse();
    expect(head.status).toBe(101);
    expect(head.headers['sec-websocket-accept']).toBe(acceptFor(keyOf(req)));
    // Not offered, so must not be negotiated.
    expect(head.headers['sec-websocket-extensions']).toBeUndefined();

    c.write(frame({ opcode: Op.TEXT, payload: 'hello raw' }));
    const echoed = await c.readFrame();
    expect(echoed).toMatchObject({ fin: true, rsv1: false, opcode: Op.TEXT, masked: false });
    expect(echoed.payload.toString()).toBe('hello raw');

    // 16-bit length form and a fixed mask key, to exercise those encoder paths.
    const bin = randomBytes(300);
    c.write(frame({ opcode: Op.BINARY, payload: bin, mask: Buffer.from([1, 2, 3, 4]), lengthForm: '16' }));
    expect((await c.readFrame()).payload.equals(bin)).toBe(true);

    c.write(frame({ opcode: Op.CLOSE, payload: closePayload(1000, 'done') }));
    const close = await c.readFrame();
    expect(close).toMatchObject({ opcode: Op.CLOSE, closeCode: 1000 });
    await c.waitClosed();
    expect(c.closed).toBe(true);

    const events = await seenUntil('raw1', (e) => e.some((x) => x.type === 'ws_disconnect'));
    expect(events.map((e) => e.type)).toEqual(['ws_connect', 'ws_text', 'ws_bytes', 'ws_disconnect']);
  });

  it('gets a 403 from /ws/reject', async () => {
    const c = await connect();
    c.write(upgradeRequest('/ws/reject'));
    expect((await c.readHttpResponse()).status).toBe(403);
  });

  it('reads pushed binary frames after the head', async () => {
    const c = await connect();
    c.write(upgradeRequest('/ws/push?tag=raw2&bytes=10000&size=4096'));
    expect((await c.readHttpResponse()).status).toBe(101);
    const got: Buffer[] = [];
    while (Buffer.concat(got).length < 10_000) got.push((await c.readFrame()).payload);
    expect(got.map((b) => b.length)).toEqual([4096, 4096, 1808]);
    const done = (await seenUntil('raw2', (e) => e.some((x) => x.type === 'ws_push_done'))).find(
      (e) => e.type === 'ws_push_done',
    );
    expect(done.sha256).toBe(createHash('sha256').update(Buffer.concat(got)).digest('hex'));
  });

  it('builds deliberately malformed frames', () => {
    const unmasked = frame({ opcode: Op.TEXT, payload: 'x', mask: false });
    expect([...unmasked]).toEqual([0x81, 0x01, 0x78]);
    const huge = frame({ opcode: Op.BINARY, rawLength: 1n << 63n, mask: false });
    expect(huge.length).toBe(10);
    expect(huge[1]).toBe(127);
    expect(huge.readBigUInt64BE(2)).toBe(1n << 63n);
    const rsv = frame({ opcode: 0x3, rsv2: true, fin: false });
    expect(rsv[0]).toBe(0x23);
    expect(upgradeRequest('/', { host: 'evil' }, { omit: ['Sec-WebSocket-Version'] })).toMatch(
      /^GET \/ HTTP\/1\.1\r\nhost: evil\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: \S+\r\n\r\n$/,
    );
  });
});

describe('python upstream HTTP endpoints', () => {
  it('serves /hello and records headers', async () => {
    const res = await request('GET', '/hello?tag=h1');
    expect(JSON.parse(res.body.toString())).toEqual({ hello: 'world' });
    const [ev] = await upstream.seen('h1');
    expect(ev).toMatchObject({ type: 'http', method: 'GET', path: '/hello' });
    expect(ev.headers.host).toBe(`127.0.0.1:${upstream.port}`);
  });

  it('hashes streamed uploads, streams chunks, and echoes headers', async () => {
    const body = randomBytes(100_000);
    const up = JSON.parse((await request('POST', '/upload', body)).body.toString());
    expect(up).toEqual({ bytes: body.length, sha256: createHash('sha256').update(body).digest('hex') });

    const stream = await request('GET', '/stream?chunks=3');
    expect(stream.body.length).toBe(3 * 1024);
    expect(stream.body.subarray(2048, 2056).toString()).toBe('00000002');

    const headers = JSON.parse((await request('GET', '/headers')).body.toString());
    expect(headers.host).toBe(`127.0.0.1:${upstream.port}`);
  });
});
