import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { closed, freePort, nextMessage, open } from './helpers/clients.js';
import { startTestGuard, until, type TestGuard } from './helpers/guard.js';
import { Op, closePayload, frame, rawConnect, upgradeRequest } from './helpers/raw.js';
import { runPyClient, startUpstream, type Upstream } from './helpers/upstream.js';

let upstream: Upstream;
let guard: TestGuard;
let tagCount = 0;
const tag = () => `proxy-${process.pid}-${++tagCount}`;

beforeAll(async () => {
  upstream = await startUpstream();
  guard = await startTestGuard({ upstream: upstream.url });
});

afterAll(async () => {
  await guard?.close();
  await upstream?.stop();
});

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

describe('WebSocket traffic through the guard (real FastAPI upstream)', () => {
  it('echoes 200 ordered text messages with the ws client', async () => {
    const t = tag();
    const ws = await open(`${guard.wsUrl}/ws/echo?tag=${t}`);
    const replies: string[] = [];
    const done = new Promise<void>((resolve) => {
      ws.on('message', (data) => {
        replies.push(String(data));
        if (replies.length === 200) resolve();
      });
    });
    for (let i = 0; i < 200; i++) ws.send(`message ${i}`);
    await done;
    expect(replies).toEqual(Array.from({ length: 200 }, (_, i) => `message ${i}`));
    ws.close(1000);
    await closed(ws);
    const seen = await upstream.seen(t);
    expect(seen.filter((e) => e.type === 'ws_text').map((e) => e.data)).toEqual(replies);
  });

  it('echoes a 1 MiB binary message', async () => {
    const t = tag();
    const ws = await open(`${guard.wsUrl}/ws/echo?tag=${t}`);
    const payload = randomBytes(1024 * 1024);
    ws.send(payload);
    const reply = await nextMessage(ws);
    expect(reply.isBinary).toBe(true);
    expect(sha256(reply.data)).toBe(sha256(payload));
    ws.close();
    const seen = await upstream.seen(t);
    expect(seen.find((e) => e.type === 'ws_bytes')).toMatchObject({ len: payload.length, sha256: sha256(payload) });
  });

  it('passes a fragmented message with a ping between the fragments', async () => {
    const t = tag();
    const conn = await rawConnect(guard.port);
    conn.write(upgradeRequest(`/ws/echo?tag=${t}`));
    expect((await conn.readHttpResponse()).status).toBe(101);
    conn.write(frame({ opcode: Op.TEXT, fin: false, payload: 'frag' }));
    conn.write(frame({ opcode: Op.PING, payload: 'are you there' }));
    conn.write(frame({ opcode: Op.CONTINUATION, fin: false, payload: 'mented ' }));
    conn.write(frame({ opcode: Op.CONTINUATION, payload: 'message' }));
    const pong = await conn.readFrame();
    expect(pong.opcode).toBe(Op.PONG);
    expect(pong.payload.toString()).toBe('are you there');
    const echo = await conn.readFrame();
    expect(echo.opcode).toBe(Op.TEXT);
    expect(echo.payload.toString()).toBe('fragmented message');
    conn.write(frame({ opcode: Op.CLOSE, payload: closePayload(1000) }));
    expect((await conn.readFrame()).closeCode).toBe(1000);
    await conn.waitClosed();
    const seen = await upstream.seen(t);
    expect(seen.filter((e) => e.type === 'ws_text').map((e) => e.data)).toEqual(['fragmented message']);
  });

  it('keeps permessage-deflate negotiated end to end for Python websockets', async () => {
    const t = tag();
    const result = await runPyClient(`${guard.wsUrl}/ws/echo?tag=${t}`, 'echo', '50');
    expect(result).toMatchObject({ ok: true, replies_in_order: true });
    expect(result.extensions).toMatch(/^permessage-deflate/);
    const big = await runPyClient(`${guard.wsUrl}/ws/echo?tag=${tag()}`, 'big', String(2 * 1024 * 1024));
    expect(big).toMatchObject({ ok: true });
    await until(async () => (await upstream.seen(t)).filter((e) => e.type === 'ws_text').length === 50);
  });

  it('negotiates a subprotocol the client offered', async () => {
    const ws = await open(`${guard.wsUrl}/ws/echo?tag=${tag()}&proto=superchat`, ['chat', 'superchat']);
    expect(ws.protocol).toBe('superchat');
    ws.close();
  });

  it('relays a close code from the client to the upstream and back', async () => {
    const t = tag();
    const ws = await open(`${guard.wsUrl}/ws/echo?tag=${t}`);
    ws.close(4321, 'client says bye');
    const { code } = await closed(ws);
    expect(code).toBe(4321);
    await until(async () => (await upstream.seen(t)).some((e) => e.type === 'ws_disconnect'));
    expect((await upstream.seen(t)).find((e) => e.type === 'ws_disconnect')).toMatchObject({ code: 4321 });
    await until(() => guard.guard.sessions.size === 0);
  });

  it('relays a close code from the upstream to the client', async () => {
    const ws = await open(`${guard.wsUrl}/ws/close?code=4123&reason=server%20says%20bye`);
    expect(await closed(ws)).toEqual({ code: 4123, reason: 'server says bye' });
    const py = await runPyClient(`${guard.wsUrl}/ws/close?code=1001&reason=later`, 'recvclose');
    expect(py).toMatchObject({ close_code: 1001, close_reason: 'later' });
  });

  it('forwards the handshake with X-Forwarded-* set and a spoofed X-Forwarded-For replaced', async () => {
    const t = tag();
    const ws = await open(`${guard.wsUrl}/ws/echo?tag=${t}`, undefined, {
      headers: { 'X-Forwarded-For': '203.0.113.66', 'X-App-Header': 'kept' },
    });
    ws.close();
    const connect = (await upstream.seen(t)).find((e) => e.type === 'ws_connect');
    expect(connect.headers).toMatchObject({
      'x-forwarded-for': '127.0.0.1',
      'x-forwarded-proto': 'http',
      'x-forwarded-host': `127.0.0.1:${guard.port}`,
      'x-app-header': 'kept',
      upgrade: 'websocket',
    });
  });
});

describe('compression: off', () => {
  let plain: TestGuard;
  beforeAll(async () => {
    plain = await startTestGuard({ upstream: upstream.url, compression: 'off' });
  });
  afterAll(() => plain.close());

  it('strips the permessage-deflate offer so the connection runs uncompressed', async () => {
    const t = tag();
    const result = await runPyClient(`${plain.wsUrl}/ws/echo?tag=${t}`, 'echo', '5');
    expect(result).toMatchObject({ ok: true, replies_in_order: true, extensions: null });
    const connect = (await upstream.seen(t)).find((e) => e.type === 'ws_connect');
    expect(connect.headers['sec-websocket-extensions']).toBeUndefined();
  });
});

describe('HTTP pass-through', () => {
  it('forwards a GET with X-Forwarded-For', async () => {
    const t = tag();
    const res = await fetch(`${guard.httpUrl}/hello?tag=${t}`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ hello: 'world' });
    const [request] = await upstream.seen(t);
    expect(request).toMatchObject({ type: 'http', method: 'GET' });
    expect(request.headers['x-forwarded-for']).toBe('127.0.0.1');
  });

  it('streams a 5 MiB upload and a chunked download', async () => {
    const body = randomBytes(5 * 1024 * 1024);
    const res = await fetch(`${guard.httpUrl}/upload`, { method: 'POST', body });
    expect(await res.json()).toEqual({ bytes: body.length, sha256: sha256(body) });
    const stream = await fetch(`${guard.httpUrl}/stream?chunks=300`);
    expect((await stream.arrayBuffer()).byteLength).toBe(300 * 1024);
  });

  it('answers 502 when the upstream is down', async () => {
    const port = await freePort();
    const down = await startTestGuard({ upstream: `http://127.0.0.1:${port}` });
    try {
      const res = await fetch(`${down.httpUrl}/hello`);
      expect(res.status).toBe(502);
      expect(res.headers.get('x-ws-guard-error')).toBe('UPSTREAM_UNREACHABLE');
    } finally {
      await down.close();
    }
  });
});

describe('faults', () => {
  it('gives the client close 1014 when the upstream dies mid-connection', async () => {
    const doomed = await startUpstream();
    const g = await startTestGuard({ upstream: doomed.url, timeouts: { close: '30s' } });
    try {
      const ws = await open(`${g.wsUrl}/ws/echo`);
      ws.send('still there?');
      await nextMessage(ws);
      doomed.kill();
      expect((await closed(ws)).code).toBe(1014);
      await until(() => g.guard.sessions.size === 0);
    } finally {
      await g.close();
      await doomed.stop();
    }
  });

  it('ends the upstream connection when the client vanishes', async () => {
    const t = tag();
    const conn = await rawConnect(guard.port);
    conn.write(upgradeRequest(`/ws/echo?tag=${t}`));
    expect((await conn.readHttpResponse()).status).toBe(101);
    await until(async () => (await upstream.seen(t)).some((e) => e.type === 'ws_connect'));
    conn.socket.resetAndDestroy();
    await until(async () => (await upstream.seen(t)).some((e) => e.type === 'ws_disconnect'));
    await until(() => guard.guard.sessions.size === 0);
  });

  it('a fault while the session is handed over closes both legs and is reported; the next connection is served', async () => {
    const t = tag();
    const faults: string[] = [];
    const onFault = (e: { where: string }) => void faults.push(e.where);
    guard.guard.events.on('internalError', onFault);
    guard.guard.events.once('opened', () => {
      throw new Error('injected fault');
    });
    try {
      const ws = new WebSocket(`${guard.wsUrl}/ws/echo?tag=${t}`);
      ws.on('error', () => {});
      expect((await closed(ws)).code).toBe(1006);
      await until(async () => (await upstream.seen(t)).some((e) => e.type === 'ws_disconnect'), 5000, 'the upstream leg closed');
      expect(faults).toEqual(['upgrade']);
      expect(guard.store.count('').total).toBe(0);
    } finally {
      guard.guard.events.off('internalError', onFault);
    }
    const ws = await open(`${guard.wsUrl}/ws/echo`);
    ws.send('after');
    expect((await nextMessage(ws)).data.toString()).toBe('after');
    ws.close();
    await closed(ws);
    await until(() => guard.guard.sessions.size === 0);
  });

  it('a client that stops reading pauses the upstream; nothing is lost when it reads again', async () => {
    const t = tag();
    const total = 32 * 1024 * 1024;
    const ws = await open(`${guard.wsUrl}/ws/push?tag=${t}&bytes=${total}&size=65536`, undefined, { perMessageDeflate: false });
    ws.pause();
    const [session] = guard.guard.sessions;
    await until(() => (session?.bufferedBytes ?? 0) > 0, 5000, 'bytes to pile up');
    // Give the upstream time to fill every buffer it can: the guard's share must stay small.
    await new Promise((r) => setTimeout(r, 1000));
    expect(session!.bufferedBytes).toBeLessThan(1024 * 1024);
    expect((await upstream.seen(t)).some((e) => e.type === 'ws_push_done')).toBe(false);

    const hash = createHash('sha256');
    let received = 0;
    const all = new Promise<void>((resolve) => {
      ws.on('message', (data: Buffer) => {
        hash.update(data);
        received += data.length;
        if (received === total) resolve();
      });
    });
    ws.resume();
    await all;
    const done = (await upstream.seen(t)).find((e) => e.type === 'ws_push_done');
    expect(done).toMatchObject({ bytes: total, sha256: hash.digest('hex') });
    ws.close();
  });

  it('an upstream that stops reading pauses the client', async () => {
    const { port, close } = await silentUpstream();
    const g = await startTestGuard({ upstream: `http://127.0.0.1:${port}` });
    try {
      const ws = await open(`${g.wsUrl}/`, undefined, { perMessageDeflate: false });
      const chunk = Buffer.alloc(64 * 1024);
      for (let i = 0; i < 512; i++) ws.send(chunk);
      const [session] = g.guard.sessions;
      await until(() => ws.bufferedAmount < 31 * 1024 * 1024, 5000, 'the client to push');
      await new Promise((r) => setTimeout(r, 1000));
      expect(session!.bufferedBytes).toBeLessThan(1024 * 1024);
      expect(ws.bufferedAmount).toBeGreaterThan(8 * 1024 * 1024);
      ws.terminate();
    } finally {
      await g.close();
      await close();
    }
  });
});

/** An upstream that completes the WebSocket handshake and then never reads again. */
async function silentUpstream(): Promise<{ port: number; close(): Promise<void> }> {
  const { acceptFor } = await import('./helpers/raw.js');
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    let head = '';
    const onData = (chunk: Buffer) => {
      head += chunk.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      socket.off('data', onData);
      socket.pause();
      const key = /sec-websocket-key:\s*(\S+)/i.exec(head)?.[1] ?? '';
      socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptFor(key)}\r\n\r\n`);
    };
    socket.on('data', onData);
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
