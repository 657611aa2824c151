import { describe, expect, it } from 'vitest';
import { FORWARD, FrameInspector, MEASURE, MESSAGE_OK, MESSAGE_REFUSE, STOP, WAIT, type InspectorOptions, type Verdict } from './inspector.js';

const hex = (text: string) => Buffer.from(text.replace(/\s+/g, ''), 'hex');

/** RFC 6455 §5.7 examples. */
const MASKED_HELLO = hex('81 85 37fa213d 7f9f4d5158');
const HELLO = hex('81 05 48656c6c6f');
const FRAGMENTS = hex('01 03 48656c 80 02 6c6f');
const PING = hex('89 05 48656c6c6f');
const PONG_MASKED = hex('8a 85 37fa213d 7f9f4d5158');
const BINARY_256 = Buffer.concat([hex('82 7e 0100'), Buffer.alloc(256, 7)]);
const BINARY_64K = Buffer.concat([hex('82 7f 0000000000010000'), Buffer.alloc(65536, 9)]);

const CLIENT: InspectorOptions = { masked: true, compressed: false };
const SERVER: InspectorOptions = { masked: false, compressed: false };

/** A masked client frame with an all-zero key, so the payload stays readable. */
function masked(b0: number, payload: Buffer | string): Buffer {
  const body = Buffer.from(payload);
  if (body.length > 125) throw new Error('use a short payload');
  return Buffer.concat([Buffer.from([b0, 0x80 | body.length, 0, 0, 0, 0]), body]);
}

interface Outcome {
  forwarded: Buffer;
  /** The verdict of the last chunk. */
  verdict: Verdict;
  error: string | null;
  closeSeen: boolean;
  closeCode: number;
  messages: number;
}

/** Feeds one chunk and appends what goes on to `out`: the released header bytes, then the accepted ones. */
function feed(inspector: FrameInspector, chunk: Buffer, out: Buffer[]): Verdict {
  const verdict = inspector.feed(chunk);
  if (inspector.released) out.push(inspector.released);
  out.push(chunk.subarray(0, inspector.accepted));
  return verdict;
}

function run(options: InspectorOptions, chunks: Buffer[]): Outcome {
  const inspector = new FrameInspector(options);
  const out: Buffer[] = [];
  let verdict: Verdict = FORWARD;
  for (const chunk of chunks) verdict = feed(inspector, chunk, out);
  return {
    forwarded: Buffer.concat(out),
    verdict,
    error: inspector.error,
    closeSeen: inspector.closeSeen,
    closeCode: inspector.closeCode,
    messages: inspector.messages,
  };
}

/** Every way the tests split a stream: whole, at each single split point, and one byte at a time. */
function* splits(stream: Buffer): Generator<[string, Buffer[]]> {
  yield ['whole', [stream]];
  for (let i = 1; i < stream.length; i++) yield [`split at ${i}`, [stream.subarray(0, i), stream.subarray(i)]];
  yield ['byte by byte', [...stream].map((b) => Buffer.from([b]))];
}

/** Asserts the same verdict and the same forwarded bytes however `stream` is split. */
function expectEverySplit(options: InspectorOptions, stream: Buffer, expected: Partial<Outcome> & { forwarded: Buffer }) {
  for (const [how, chunks] of splits(stream)) {
    const outcome = run(options, chunks);
    expect(outcome.forwarded.equals(expected.forwarded), `${how}: forwarded bytes`).toBe(true);
    expect(outcome.error, `${how}: error`).toBe(expected.error ?? null);
    if (expected.verdict !== undefined) expect(outcome.verdict, `${how}: verdict`).toBe(expected.verdict);
    if (expected.closeSeen !== undefined) expect(outcome.closeSeen, how).toBe(expected.closeSeen);
    if (expected.closeCode !== undefined) expect(outcome.closeCode, how).toBe(expected.closeCode);
    if (expected.messages !== undefined) expect(outcome.messages, how).toBe(expected.messages);
  }
}

describe('FrameInspector: valid streams are forwarded untouched', () => {
  it('masked client frames', () => {
    const stream = Buffer.concat([MASKED_HELLO, PONG_MASKED, MASKED_HELLO]);
    expectEverySplit(CLIENT, stream, { forwarded: stream, messages: 2 });
  });

  it('server frames: text, fragments with a ping between them, 16- and 64-bit lengths', () => {
    const stream = Buffer.concat([HELLO, FRAGMENTS.subarray(0, 5), PING, FRAGMENTS.subarray(5), BINARY_256, BINARY_64K]);
    const outcome = run(SERVER, [stream]);
    expect(outcome.forwarded.equals(stream)).toBe(true);
    expect(outcome.messages).toBe(4);
    const small = Buffer.concat([HELLO, FRAGMENTS.subarray(0, 5), PING, FRAGMENTS.subarray(5), BINARY_256]);
    expectEverySplit(SERVER, small, { forwarded: small, messages: 3 });
  });

  it('RSV1 on the first frame of a message when permessage-deflate was negotiated', () => {
    const stream = Buffer.concat([masked(0x41, 'abc'), masked(0x80, 'de'), masked(0xc1, 'x')]);
    expectEverySplit({ masked: true, compressed: true }, stream, { forwarded: stream, messages: 2 });
  });

  it('zero-length frames', () => {
    const stream = hex('81 00 89 00 82 00');
    expectEverySplit(SERVER, stream, { forwarded: stream, messages: 2 });
  });

  it('forwards the chunks it was given: a whole chunk is FORWARD with everything accepted and nothing released', () => {
    const inspector = new FrameInspector(SERVER);
    expect(inspector.feed(BINARY_64K)).toBe(FORWARD);
    expect(inspector.accepted).toBe(BINARY_64K.length);
    expect(inspector.released).toBeNull();
  });

  it('holds a header that straddles chunks, part by part, and releases it in front of the chunk that completes it', () => {
    // A masked frame with a 16-bit length (2 fixed bytes, 2 length bytes, 4 mask bytes) and a server frame
    // with a 64-bit one (2 fixed bytes, 8 length bytes).
    const cases: [InspectorOptions, Buffer, number][] = [
      [CLIENT, Buffer.concat([hex('82 fe 007e 00000000'), Buffer.alloc(126, 1)]), 8],
      [SERVER, BINARY_64K, 10],
    ];
    for (const [options, frame, headerLength] of cases) for (let cut = 1; cut < headerLength; cut++) {
      const inspector = new FrameInspector(options);
      expect(inspector.feed(frame.subarray(0, cut)), `cut at ${cut}`).toBe(FORWARD);
      expect(inspector.accepted, `cut at ${cut}`).toBe(0);
      expect(inspector.atBoundary, `cut at ${cut}`).toBe(true);
      const rest = frame.subarray(cut);
      expect(inspector.feed(rest), `cut at ${cut}`).toBe(FORWARD);
      expect(inspector.released?.equals(frame.subarray(0, cut)), `cut at ${cut}`).toBe(true);
      expect(inspector.accepted, `cut at ${cut}`).toBe(rest.length);
    }
  });
});

describe('FrameInspector: close frames', () => {
  it('reads the close code of a masked close frame and drops anything after it (RFC 6455 §5.5.1)', () => {
    const close = masked(0x88, Buffer.from([0x0f, 0xa0, 0x62, 0x79, 0x65]));
    const stream = Buffer.concat([MASKED_HELLO, close, MASKED_HELLO]);
    expectEverySplit(CLIENT, stream, {
      forwarded: Buffer.concat([MASKED_HELLO, close]),
      closeSeen: true,
      closeCode: 4000,
      verdict: STOP,
    });
  });

  it('reads an unmasked close frame and reports 1005 for an empty one', () => {
    expectEverySplit(SERVER, hex('88 02 03e8'), { forwarded: hex('88 02 03e8'), closeSeen: true, closeCode: 1000 });
    expectEverySplit(SERVER, hex('88 00'), { forwarded: hex('88 00'), closeSeen: true, closeCode: 1005 });
  });
});

describe('FrameInspector: violations close with 1002 and nothing from the bad frame on is forwarded', () => {
  const cases: [string, InspectorOptions, Buffer, string?][] = [
    ['an unmasked client frame (§5.1)', CLIENT, HELLO],
    ['a masked server frame (§5.1)', SERVER, MASKED_HELLO],
    ['RSV2 set (§5.2)', CLIENT, masked(0xa1, 'x')],
    ['RSV3 set (§5.2)', CLIENT, masked(0x91, 'x')],
    ['RSV1 without permessage-deflate (§5.2)', CLIENT, masked(0xc1, 'x')],
    ['reserved data opcode 3 (§5.2)', CLIENT, masked(0x83, 'x')],
    ['reserved control opcode 0xB (§5.2)', CLIENT, masked(0x8b, 'x')],
    ['a fragmented ping (§5.5)', CLIENT, masked(0x09, 'x')],
    ['a control frame longer than 125 bytes (§5.5)', SERVER, Buffer.concat([hex('89 7e 007e'), Buffer.alloc(126)])],
    ['a continuation outside a message (§5.4)', CLIENT, masked(0x80, 'x')],
    ['a close frame with a 1-byte body (§5.5.1)', CLIENT, masked(0x88, 'x')],
    ['a 64-bit length with the top bit set (§5.2)', SERVER, hex('82 7f 8000000000000001 00')],
    ['a frame longer than 2^53', SERVER, hex('82 7f 0020000000000000 00'), 'MESSAGE_TOO_BIG'],
    ['a 16-bit length for a 5-byte payload (§5.2)', SERVER, hex('81 7e 0005 48656c6c6f')],
    ['a 64-bit length for a 65535-byte payload (§5.2)', SERVER, hex('82 7f 000000000000ffff')],
  ];

  for (const [name, options, bad, code = 'PROTOCOL_VIOLATION'] of cases) {
    it(name, () => {
      const good = options.masked ? MASKED_HELLO : HELLO;
      const stream = Buffer.concat([good, bad, good]);
      expectEverySplit(options, stream, { forwarded: good, error: code, verdict: STOP });
    });
  }

  it('a new data frame inside a fragmented message (§5.4)', () => {
    const first = masked(0x01, 'ab');
    const stream = Buffer.concat([first, masked(0x81, 'cd'), masked(0x80, 'ef')]);
    expectEverySplit(CLIENT, stream, { forwarded: first, error: 'PROTOCOL_VIOLATION' });
  });

  it('RSV1 on a continuation frame even with permessage-deflate (RFC 7692 §6)', () => {
    const first = masked(0x41, 'ab');
    const stream = Buffer.concat([first, masked(0xc0, 'cd')]);
    expectEverySplit({ masked: true, compressed: true }, stream, { forwarded: first, error: 'PROTOCOL_VIOLATION' });
  });

  it('RSV1 on a control frame even with permessage-deflate (RFC 7692 §6)', () => {
    const stream = Buffer.concat([MASKED_HELLO, masked(0xc9, 'x')]);
    expectEverySplit({ masked: true, compressed: true }, stream, { forwarded: MASKED_HELLO, error: 'PROTOCOL_VIOLATION' });
  });

  it('stays stopped: later chunks forward nothing', () => {
    const inspector = new FrameInspector(CLIENT);
    expect(inspector.feed(HELLO)).toBe(STOP);
    expect(inspector.accepted).toBe(0);
    expect(inspector.stopped).toBe(true);
    expect(inspector.feed(MASKED_HELLO)).toBe(STOP);
    expect(inspector.accepted).toBe(0);
  });
});

describe('FrameInspector: stopping at a frame boundary', () => {
  it('stops at once between frames, discarding a held partial header', () => {
    const inspector = new FrameInspector(SERVER);
    expect(inspector.feed(Buffer.concat([HELLO, HELLO.subarray(0, 1)]))).toBe(FORWARD);
    expect(inspector.accepted).toBe(HELLO.length);
    expect(inspector.atBoundary).toBe(true);
    inspector.stopAtBoundary();
    expect(inspector.stopped).toBe(true);
    expect(inspector.feed(HELLO.subarray(1))).toBe(STOP);
    expect(inspector.accepted).toBe(0);
    expect(inspector.released).toBeNull();
  });

  it('finishes the frame in flight, then stops', () => {
    const inspector = new FrameInspector(SERVER);
    expect(inspector.feed(BINARY_256.subarray(0, 100))).toBe(FORWARD);
    expect(inspector.accepted).toBe(100);
    expect(inspector.atBoundary).toBe(false);
    inspector.stopAtBoundary();
    expect(inspector.stopped).toBe(false);
    const rest = Buffer.concat([BINARY_256.subarray(100), HELLO]);
    expect(inspector.feed(rest)).toBe(STOP);
    expect(inspector.accepted).toBe(BINARY_256.length - 100);
    expect(inspector.stopped).toBe(true);
    expect(inspector.error).toBeNull();
  });
});

describe('FrameInspector: message limits, checked from the header before anything is forwarded', () => {
  const three = Buffer.concat([masked(0x81, 'one'), masked(0x89, 'ping'), masked(0x81, 'two'), masked(0x81, 'three')]);

  it('counts a message once at its first frame, never control frames, and refuses one over the rate', () => {
    let allowed = 2;
    const limits = { maxMessageBytes: Infinity, maxFragments: Infinity, onMessageStart: () => (allowed-- > 0 ? MESSAGE_OK : MESSAGE_REFUSE), onControlFrame: null, onCompressedPayload: null };
    for (const [how, chunks] of splits(three)) {
      allowed = 2;
      const inspector = new FrameInspector({ ...CLIENT, limits });
      const out: Buffer[] = [];
      for (const chunk of chunks) feed(inspector, chunk, out);
      expect(inspector.error, how).toBe('MESSAGE_RATE');
      expect(Buffer.concat(out).equals(three.subarray(0, three.length - masked(0x81, 'three').length)), how).toBe(true);
    }
  });

  it('throttle: stops in front of the message and forwards everything once fed again', () => {
    for (const [how, chunks] of splits(three)) {
      let tokens = 1;
      const inspector = new FrameInspector({
        ...CLIENT,
        limits: { maxMessageBytes: Infinity, maxFragments: Infinity, onMessageStart: () => (tokens-- > 0 ? MESSAGE_OK : 25), onControlFrame: null, onCompressedPayload: null },
      });
      const out: Buffer[] = [];
      let waits = 0;
      for (let chunk of chunks) {
        while (feed(inspector, chunk, out) === WAIT) {
          expect(inspector.waitMs).toBe(25);
          expect(inspector.atBoundary).toBe(true);
          waits++;
          tokens = 1;
          chunk = chunk.subarray(inspector.accepted);
        }
      }
      expect(Buffer.concat(out).equals(three), how).toBe(true);
      expect(inspector.messages, how).toBe(3);
      expect(waits, how).toBe(2);
    }
  });

  it('sums the size over fragments and refuses the frame that goes over, from its header', () => {
    const first = masked(0x01, 'abcd');
    const second = masked(0x00, 'efgh');
    const stream = Buffer.concat([first, second, masked(0x80, 'ij')]);
    const limits = { maxMessageBytes: 9, maxFragments: Infinity, onMessageStart: null, onControlFrame: null, onCompressedPayload: null };
    expectEverySplit({ ...CLIENT, limits }, stream, { forwarded: Buffer.concat([first, second]), error: 'MESSAGE_TOO_BIG' });
    const ok = Buffer.concat([first, second, masked(0x80, 'i'), masked(0x81, '123456789')]);
    expectEverySplit({ ...CLIENT, limits }, ok, { forwarded: ok });
  });

  it('caps the fragments of one message', () => {
    const frags = [masked(0x01, 'a'), masked(0x00, 'b'), masked(0x00, 'c'), masked(0x80, 'd')];
    const limits = { maxMessageBytes: Infinity, maxFragments: 3, onMessageStart: null, onControlFrame: null, onCompressedPayload: null };
    expectEverySplit({ ...CLIENT, limits }, Buffer.concat(frags), { forwarded: Buffer.concat(frags.slice(0, 3)), error: 'TOO_MANY_FRAGMENTS' });
  });
  it('asks the control-frame check for pings and pongs only: never for data frames, never for a close', () => {
    let tokens = 2;
    let asked = 0;
    const limits = {
      maxMessageBytes: Infinity, maxFragments: Infinity, onMessageStart: null, onCompressedPayload: null,
      onControlFrame: () => (asked++, tokens-- > 0),
    };
    const allowed = [masked(0x89, 'p1'), masked(0x81, 'data'), masked(0x01, 'frag'), masked(0x8a, 'p2'), masked(0x80, 'ment')];
    const refused = masked(0x89, 'p3');
    for (const [how, chunks] of splits(Buffer.concat([...allowed, refused, masked(0x81, 'after')]))) {
      tokens = 2;
      asked = 0;
      const outcome = run({ ...CLIENT, limits }, chunks);
      expect(outcome.error, how).toBe('CONTROL_FRAME_RATE');
      expect(outcome.forwarded.equals(Buffer.concat(allowed)), how).toBe(true);
      expect(asked, how).toBe(3);
    }
    // Out of tokens, a close still goes through (and is never asked about).
    const close = masked(0x88, Buffer.from([0x03, 0xe8]));
    for (const [how, chunks] of splits(Buffer.concat([masked(0x81, 'x'), close]))) {
      tokens = 0;
      asked = 0;
      const outcome = run({ ...CLIENT, limits }, chunks);
      expect({ error: outcome.error, closeSeen: outcome.closeSeen, closeCode: outcome.closeCode, asked }, how).toEqual({ error: null, closeSeen: true, closeCode: 1000, asked: 0 });
    }
  });
});

describe('FrameInspector: stopBeforeClose', () => {
  it('forwards everything up to the close frame, then stops in front of it without an error', () => {
    const before = Buffer.concat([HELLO, FRAGMENTS, PING]);
    const close = hex('88 02 03ea');
    for (const [how, chunks] of splits(Buffer.concat([before, close]))) {
      const inspector = new FrameInspector(SERVER);
      inspector.stopBeforeClose();
      const out: Buffer[] = [];
      let verdict: Verdict = FORWARD;
      for (const chunk of chunks) verdict = feed(inspector, chunk, out);
      expect(verdict, how).toBe(STOP);
      expect(Buffer.concat(out).equals(before), how).toBe(true);
      expect({ stopped: inspector.stopped, error: inspector.error, closeSeen: inspector.closeSeen, atBoundary: inspector.atBoundary }, how)
        .toEqual({ stopped: true, error: null, closeSeen: false, atBoundary: true });
    }
  });
});

describe('FrameInspector: compressed messages measured before they go on', () => {
  it('marks each compressed message with gateFrom and ends it with MEASURE, however the stream is split', () => {
    const first = [masked(0x41, 'abc'), masked(0x89, 'p'), masked(0x80, 'de')];
    const second = masked(0xc1, 'x');
    const stream = Buffer.concat([MASKED_HELLO, ...first, MASKED_HELLO, second]);
    for (const [how, chunks] of splits(stream)) {
      const payloads: Buffer[] = [];
      const limits = { maxMessageBytes: 100, maxFragments: Infinity, onMessageStart: null, onControlFrame: null, onCompressedPayload: (p: Buffer) => payloads.push(p) };
      const inspector = new FrameInspector({ masked: true, compressed: true, limits });
      const forwarded: Buffer[] = [];
      let gate: Buffer[] = [];
      const measured: Buffer[] = [];
      for (let chunk of chunks) {
        for (;;) {
          const verdict = inspector.feed(chunk);
          const n = inspector.accepted;
          const from = inspector.gateFrom;
          const released = inspector.released;
          if (from < 0) {
            if (released) forwarded.push(released);
            forwarded.push(chunk.subarray(0, n));
          } else {
            if (released) (from === 0 ? gate : forwarded).push(released);
            forwarded.push(chunk.subarray(0, from));
            gate.push(chunk.subarray(from, n));
          }
          if (verdict !== MEASURE) break;
          expect(inspector.atBoundary, how).toBe(true);
          measured.push(Buffer.concat(gate));
          gate = [];
          chunk = chunk.subarray(n);
          if (chunk.length === 0) break;
        }
      }
      expect(Buffer.concat(forwarded).equals(Buffer.concat([MASKED_HELLO, MASKED_HELLO])), how).toBe(true);
      expect(measured.map((m) => m.toString('hex')), how).toEqual([Buffer.concat(first).toString('hex'), second.toString('hex')]);
      // Only data payloads are inflated, never the ping inside the message.
      expect(Buffer.concat(payloads).toString(), how).toBe('abcdex');
      expect(inspector.messages, how).toBe(4);
    }
  });
});
