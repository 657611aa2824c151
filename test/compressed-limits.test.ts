import zlib from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { open } from './helpers/clients.js';
import { startTestGuard, until, type TestGuard } from './helpers/guard.js';
import { frame, Op, rawConnect, upgradeRequest, type Frame, type RawConn } from './helpers/raw.js';
import { runPyClient, startUpstream, type Upstream } from './helpers/upstream.js';

// messageSize on a permessage-deflate connection is enforced on the inflated size: compressed messages are
// held until they are measured, and only then forwarded as the original bytes.
let upstream: Upstream;
let guard: TestGuard;
let n = 0;
const tag = () => `deflate-${process.pid}-${++n}`;

beforeAll(async () => {
  upstream = await startUpstream();
  guard = await startTestGuard({ upstream: upstream.url, limits: { messageSize: '1MiB' } });
});
afterAll(async () => {
  await guard?.close();
  await upstream?.stop();
});

describe('messageSize with permessage-deflate', () => {
  it('passes compressed messages within the limit, in order, across the shared compression context', async () => {
    const t = tag();
    const result = await runPyClient(`${guard.wsUrl}/ws/echo?tag=${t}`, 'echo', '100');
    expect(result).toMatchObject({ ok: true, replies_in_order: true });
    expect(result.extensions).toMatch(/permessage-deflate/);
    expect(await runPyClient(`${guard.wsUrl}/ws/echo?tag=${tag()}`, 'big', String(1024 * 1024))).toMatchObject({ ok: true });
  });

  it('closes with 1009 a small compressed message that inflates past the limit; the upstream never sees it', async () => {
    const t = tag();
    const ws = await open(`${guard.wsUrl}/ws/echo?tag=${t}`, undefined, { perMessageDeflate: true });
    expect(ws.extensions).toMatch(/permessage-deflate/);
    ws.send('before');
    await new Promise((resolve) => ws.once('message', resolve));
    const closed = new Promise<number>((resolve) => ws.once('close', resolve));
    ws.send(Buffer.alloc(16 * 1024 * 1024));
    expect(await closed).toBe(1009);
    await until(async () => (await upstream.seen(t)).some((e) => e.type === 'ws_disconnect'));
    const seen = await upstream.seen(t);
    expect(seen.filter((e) => e.type === 'ws_text' || e.type === 'ws_bytes')).toEqual([expect.objectContaining({ type: 'ws_text', data: 'before' })]);
    expect(seen.find((e) => e.type === 'ws_disconnect')).toMatchObject({ code: 1009 });
  });

  it('one byte over the limit inflated is refused, exactly at the limit passes', async () => {
    const t = tag();
    const ws = await open(`${guard.wsUrl}/ws/echo?tag=${t}`, undefined, { perMessageDeflate: true });
    ws.send(Buffer.alloc(1024 * 1024, 7));
    const echo = await new Promise<Buffer>((resolve) => ws.once('message', (d: Buffer) => resolve(d)));
    expect(echo.length).toBe(1024 * 1024);
    const closed = new Promise<number>((resolve) => ws.once('close', resolve));
    ws.send(Buffer.alloc(1024 * 1024 + 1, 7));
    expect(await closed).toBe(1009);
  });
});

// RFC 7692 §7.2.3.4: a sender may end a message's DEFLATE data with a final block (BFINAL=1). The inflate
// counter used to stay ended after one: later messages were refused with 1007 under
// client_no_context_takeover, and no longer measured at all under context takeover.
describe('messageSize with permessage-deflate, after a message ending with a BFINAL block', () => {
  const TAIL = Buffer.from([0x00, 0x00, 0xff, 0xff]);
  /** RFC 7692 §7.2.3.4's example: "Hello" in a final block, then the header byte of an empty stored block. */
  const HELLO_FINAL = Buffer.from([0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00]);
  /** A message compressed the usual way (Z_SYNC_FLUSH, tail removed, §7.2.1) by a fresh sender stream. */
  const syncFlushed = (data: Buffer | string) => {
    const out = zlib.deflateRawSync(data, { finishFlush: zlib.constants.Z_SYNC_FLUSH });
    expect(out.subarray(-4)).toEqual(TAIL);
    return out.subarray(0, out.length - 4);
  };
  let small: TestGuard;

  beforeAll(async () => {
    small = await startTestGuard({ upstream: upstream.url, limits: { messageSize: '64KiB' } });
  });
  afterAll(async () => {
    await small?.close();
  });

  /** A raw client through the guard offering permessage-deflate; server messages come without context takeover. */
  async function connect(t: string, offer: string): Promise<{ conn: RawConn; extensions: string }> {
    const conn = await rawConnect(small.port);
    conn.write(upgradeRequest(`/ws/echo?tag=${t}`, { 'Sec-WebSocket-Extensions': offer }));
    const head = await conn.readHttpResponse();
    expect(head.status).toBe(101);
    return { conn, extensions: head.headers['sec-websocket-extensions'] ?? '' };
  }

  /** The next data frame's text; a compressed one is inflated on its own (server_no_context_takeover). */
  async function nextText(conn: RawConn): Promise<string> {
    const f: Frame = await conn.readFrame();
    expect(f.opcode, f.closeCode === undefined ? 'a text frame' : `closed ${f.closeCode} ${f.closeReason}`).toBe(Op.TEXT);
    return (f.rsv1 ? zlib.inflateRawSync(Buffer.concat([f.payload, TAIL]), { finishFlush: zlib.constants.Z_SYNC_FLUSH }) : f.payload).toString();
  }

  async function nextClose(conn: RawConn): Promise<Frame> {
    for (;;) {
      const f = await conn.readFrame();
      if (f.opcode === Op.CLOSE) return f;
    }
  }

  it('client_no_context_takeover: the next compressed messages are accepted and echoed, not closed with 1007', async () => {
    const t = tag();
    const { conn, extensions } = await connect(t, 'permessage-deflate; client_no_context_takeover; server_no_context_takeover');
    expect(extensions).toMatch(/permessage-deflate/);
    expect(extensions).toMatch(/client_no_context_takeover/);
    try {
      conn.write(frame({ opcode: Op.TEXT, rsv1: true, payload: HELLO_FINAL }));
      expect(await nextText(conn)).toBe('Hello');
      conn.write(frame({ opcode: Op.TEXT, rsv1: true, payload: syncFlushed('after the final block') }));
      expect(await nextText(conn)).toBe('after the final block');
      // Again, fragmented, and then a message compressed by a sender using final blocks throughout.
      const wire = syncFlushed('x'.repeat(5000));
      conn.write(frame({ opcode: Op.TEXT, rsv1: true, fin: false, payload: wire.subarray(0, 3) }));
      conn.write(frame({ opcode: Op.CONTINUATION, fin: true, payload: wire.subarray(3) }));
      expect(await nextText(conn)).toBe('x'.repeat(5000));
      conn.write(frame({ opcode: Op.TEXT, rsv1: true, payload: Buffer.concat([zlib.deflateRawSync('y'.repeat(60_000)), Buffer.from([0])]) }));
      expect(await nextText(conn)).toBe('y'.repeat(60_000));
      const texts = (await upstream.seen(t)).filter((e) => e.type === 'ws_text').map((e) => e.len);
      expect(texts).toEqual([5, 21, 5000, 60_000]);
    } finally {
      conn.destroy();
    }
  });

  it('a close between the fragments of a compressed message reaches the app by itself, which answers it at once', async () => {
    const t = tag();
    const { conn } = await connect(t, 'permessage-deflate; server_no_context_takeover');
    try {
      const wire = syncFlushed('never finished');
      conn.write(frame({ opcode: Op.TEXT, rsv1: true, fin: false, payload: wire.subarray(0, 5) }));
      conn.write(frame({ opcode: Op.CLOSE, payload: Buffer.from([0x03, 0xe8]) }));
      // The app's own answer: held with the message, the close never reached it, and the guard's close timer
      // ended both legs without a close frame.
      expect((await nextClose(conn)).closeCode).toBe(1000);
      await until(async () => (await upstream.seen(t)).some((e) => e.type === 'ws_disconnect'));
      const events = await upstream.seen(t);
      expect(events.filter((e) => e.type === 'ws_text')).toEqual([]);
      expect(events.find((e) => e.type === 'ws_disconnect')?.code).toBe(1000);
    } finally {
      conn.destroy();
    }
  });

  it('context takeover: a 2 MiB message after it is measured, closed with 1009, and never reaches the app', async () => {
    const t = tag();
    const { conn, extensions } = await connect(t, 'permessage-deflate; server_no_context_takeover');
    expect(extensions).toMatch(/permessage-deflate/);
    expect(extensions).not.toMatch(/client_no_context_takeover/);
    try {
      conn.write(frame({ opcode: Op.TEXT, rsv1: true, payload: HELLO_FINAL }));
      expect(await nextText(conn)).toBe('Hello');
      // The sender's stream ended with the final block; it starts a new one. 2 MiB compress to ~2 KiB.
      const bomb = syncFlushed('z'.repeat(2 * 1024 * 1024));
      expect(bomb.length).toBeLessThan(64 * 1024);
      conn.write(frame({ opcode: Op.TEXT, rsv1: true, fin: false, payload: bomb.subarray(0, 100) }));
      conn.write(frame({ opcode: Op.CONTINUATION, fin: true, payload: bomb.subarray(100) }));
      const close = await nextClose(conn);
      expect(close.closeCode).toBe(1009);
      await until(async () => (await upstream.seen(t)).some((e) => e.type === 'ws_disconnect'));
      const seen = await upstream.seen(t);
      expect(seen.filter((e) => e.type === 'ws_text' || e.type === 'ws_bytes')).toEqual([expect.objectContaining({ type: 'ws_text', data: 'Hello' })]);
      expect(seen.find((e) => e.type === 'ws_disconnect')).toMatchObject({ code: 1009 });
    } finally {
      conn.destroy();
    }
  });
});
