// Transparency with the default config: valid streams pass whole, and a protocol violation after a valid
// message still lets that message's echo reach the client before the close. Modelled on the Autobahn|Testsuite
// cases that a minimal-config guard used to fail (9.3.1–9.4.4; 3.2–3.4, 4.1.3–4.1.5, 4.2.3–4.2.5, 5.15), run
// with a raw client through the guard against the real FastAPI echo endpoint.
import { createHash, randomBytes } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTestGuard, until, type TestGuard } from './helpers/guard.js';
import { Op, frame, rawConnect, upgradeRequest, type Frame, type RawConn } from './helpers/raw.js';
import { startUpstream, type Upstream } from './helpers/upstream.js';

let upstream: Upstream;
/** No limits configured: only the defaults apply. */
let guard: TestGuard;
let count = 0;
const tag = (what: string) => `conformance-${process.pid}-${++count}-${what}`;

const conns = new Set<RawConn>();
afterEach(() => {
  for (const conn of conns) conn.destroy();
  conns.clear();
});

beforeAll(async () => {
  upstream = await startUpstream();
  guard = await startTestGuard({ upstream: upstream.url });
});
afterAll(async () => {
  await guard?.close();
  await upstream?.stop();
});

async function upgraded(t: string): Promise<RawConn> {
  const conn = await rawConnect(guard.port);
  conns.add(conn);
  conn.write(upgradeRequest(`/ws/echo?tag=${t}`));
  expect((await conn.readHttpResponse()).status).toBe(101);
  return conn;
}

/** One message in `size`-byte fragments, as one buffer of frames. */
function fragmented(opcode: number, payload: Buffer, size: number): Buffer {
  const frames: Buffer[] = [];
  for (let at = 0; at < payload.length; at += size) {
    const end = Math.min(at + size, payload.length);
    frames.push(frame({ opcode: at === 0 ? opcode : Op.CONTINUATION, fin: end === payload.length, payload: payload.subarray(at, end) }));
  }
  return Buffer.concat(frames);
}

/** The next whole message (control frames skipped), reassembled from its frames. */
async function readMessage(conn: RawConn, timeoutMs = 20_000): Promise<{ opcode: number; payload: Buffer }> {
  const parts: Buffer[] = [];
  let opcode = -1;
  for (;;) {
    const f = await conn.readFrame(timeoutMs);
    if (f.opcode >= 0x8) {
      if (f.opcode === Op.CLOSE) throw new Error(`close ${f.closeCode} ${f.closeReason} instead of a message`);
      continue;
    }
    if (opcode === -1) opcode = f.opcode;
    parts.push(f.payload);
    if (f.fin) return { opcode, payload: Buffer.concat(parts) };
  }
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('valid messages in many fragments pass whole with no limit configured (Autobahn 9.3, 9.4)', () => {
  const FOUR_MIB = 4 * 1024 * 1024;
  it.each([
    ['binary', 64], ['binary', 256], ['binary', 1024], ['binary', 4096], ['text', 64], ['text', 4096],
  ] as const)('a 4 MiB %s message in %i-byte fragments is echoed intact', async (kind, size) => {
    const t = tag(`frag-${kind}-${size}`);
    const conn = await upgraded(t);
    const payload = kind === 'binary' ? randomBytes(FOUR_MIB) : Buffer.alloc(FOUR_MIB, 'abcdefghij');
    const frames = fragmented(kind === 'binary' ? Op.BINARY : Op.TEXT, payload, size);
    conn.write(frames);
    const echo = await readMessage(conn);
    expect(echo.opcode).toBe(kind === 'binary' ? Op.BINARY : Op.TEXT);
    expect(echo.payload.length).toBe(FOUR_MIB);
    expect(sha256(echo.payload)).toBe(sha256(payload));
    const seen = (await upstream.seen(t)).filter((e) => e.type === 'ws_bytes' || e.type === 'ws_text');
    expect(seen).toHaveLength(1);
    expect(seen[0].len).toBe(FOUR_MIB);
    if (kind === 'binary') expect(seen[0].sha256).toBe(sha256(payload));
  });

  it('65,537 frames: 4 MiB in 64-byte fragments plus an empty final fragment', async () => {
    const t = tag('frag-65537');
    const conn = await upgraded(t);
    const payload = randomBytes(4 * 1024 * 1024);
    const frames = fragmented(Op.BINARY, payload, 64);
    // 65,536 frames of 64 bytes (2 + 4 + 64 bytes each on the wire): clear FIN on the last, end with an empty one.
    frames[frames.length - 70]! &= 0x7f;
    conn.write(Buffer.concat([frames, frame({ opcode: Op.CONTINUATION, payload: Buffer.alloc(0) })]));
    const echo = await readMessage(conn);
    expect(sha256(echo.payload)).toBe(sha256(payload));
  });
});

/** What the client must see after a violation that follows a valid message: the echo, then close 1002. */
async function expectEchoThenClose(conn: RawConn, t: string, echoed: string): Promise<void> {
  const echo = await conn.readFrame();
  expect({ opcode: echo.opcode, fin: echo.fin, masked: echo.masked, payload: echo.payload.toString() })
    .toEqual({ opcode: Op.TEXT, fin: true, masked: false, payload: echoed });
  const frames: Frame[] = [];
  let close: Frame;
  // Nothing but pongs could come between them; a ping after the bad frame is never forwarded.
  while ((close = await conn.readFrame()).opcode !== Op.CLOSE) frames.push(close);
  expect(frames).toEqual([]);
  expect({ code: close.closeCode, masked: close.masked }).toEqual({ code: 1002, masked: false });
  await conn.waitClosed();
  expect(conn.error).toBeUndefined();
  await until(async () => (await upstream.seen(t)).some((e) => e.type === 'ws_disconnect'), 5000, 'the upstream disconnect');
  const events = await upstream.seen(t);
  expect(events.filter((e) => e.type !== 'ws_connect')).toEqual([
    { type: 'ws_text', len: echoed.length, data: echoed },
    { type: 'ws_disconnect', code: 1002 },
  ]);
}

const text = (payload: string, fin = true) => frame({ opcode: Op.TEXT, fin, payload });
const ping = (payload = '') => frame({ opcode: Op.PING, payload });

/** How the bytes are written: all at once, frame by frame, or one octet per write (Autobahn's "chops"). */
type Chop = 'one write' | 'frame-wise' | 'octet-wise';
async function send(conn: RawConn, frames: Buffer[], chop: Chop): Promise<void> {
  if (chop === 'one write') conn.write(Buffer.concat(frames));
  else if (chop === 'frame-wise') for (const f of frames) conn.write(f);
  else {
    for (const byte of Buffer.concat(frames)) {
      conn.write(Buffer.from([byte]));
      // Let the bytes leave one by one rather than be coalesced into one segment.
      await new Promise((r) => setImmediate(r));
    }
  }
}

describe('a valid message, then a protocol violation: the echo arrives before the close 1002', () => {
  const cases: [string, Chop, () => Buffer[], string][] = [
    ['3.2 RSV2 set, then a ping', 'one write', () => [text('Hello, world!'), frame({ opcode: Op.TEXT, rsv2: true, payload: 'Hello, world!' }), ping()], 'Hello, world!'],
    ['3.3 RSV3 set, then a ping', 'frame-wise', () => [text('Hello, world!'), frame({ opcode: Op.TEXT, rsv1: true, rsv2: true, payload: 'Hello, world!' }), ping()], 'Hello, world!'],
    ['3.4 RSV1 set without permessage-deflate, then a ping', 'octet-wise', () => [text('Hello, world!'), frame({ opcode: Op.TEXT, rsv1: true, payload: 'Hello, world!' }), ping()], 'Hello, world!'],
    ['4.1.3 reserved data opcode 5, then a ping', 'one write', () => [text('Hello, world!'), frame({ opcode: 0x5 }), ping()], 'Hello, world!'],
    ['4.1.4 reserved data opcode 6 with a payload, then a ping', 'frame-wise', () => [text('Hello, world!'), frame({ opcode: 0x6, payload: 'hello' }), ping()], 'Hello, world!'],
    ['4.1.5 reserved data opcode 7 with a payload, then a ping', 'octet-wise', () => [text('Hello, world!'), frame({ opcode: 0x7, payload: 'hello' }), ping()], 'Hello, world!'],
    ['4.2.3 reserved control opcode 0xC, then a ping', 'one write', () => [text('Hello, world!'), frame({ opcode: 0xc }), ping()], 'Hello, world!'],
    ['4.2.4 reserved control opcode 0xD with a payload, then a ping', 'frame-wise', () => [text('Hello, world!'), frame({ opcode: 0xd, payload: 'hello' }), ping()], 'Hello, world!'],
    ['4.2.5 reserved control opcode 0xE with a payload, then a ping', 'octet-wise', () => [text('Hello, world!'), frame({ opcode: 0xe, payload: 'hello' }), ping()], 'Hello, world!'],
    ['5.15 a fragmented message, then a continuation with nothing to continue', 'one write', () => [
      text('fragment1', false),
      frame({ opcode: Op.CONTINUATION, payload: 'fragment2' }),
      frame({ opcode: Op.CONTINUATION, fin: false, payload: 'fragment3' }),
      frame({ opcode: Op.CONTINUATION, payload: 'fragment4' }),
    ], 'fragment1fragment2'],
  ];

  it.each(cases)('%s (%s)', async (_, chop, frames, echoed) => {
    const t = tag('violation');
    const conn = await upgraded(t);
    await send(conn, frames(), chop);
    await expectEchoThenClose(conn, t, echoed);
  });

  it('the upstream\'s own close frame is not relayed: the client gets the guard\'s code and reason', async () => {
    const t = tag('reason');
    const conn = await upgraded(t);
    conn.write(Buffer.concat([text('first'), text('second'), frame({ opcode: Op.CONTINUATION, payload: 'orphan' })]));
    const echoes = [await conn.readFrame(), await conn.readFrame()].map((f) => f.payload.toString());
    expect(echoes).toEqual(['first', 'second']);
    const close = await conn.readFrame();
    expect({ opcode: close.opcode, code: close.closeCode, reason: close.closeReason }).toEqual({ opcode: Op.CLOSE, code: 1002, reason: 'WebSocket protocol violation' });
    await conn.waitClosed();
    await expect(conn.readFrame()).rejects.toThrow(/connection closed/);
  });
});
