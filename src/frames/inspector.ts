import type { CloseReason } from '../errors.js';

/** RFC 6455 §5.2 opcodes. */
export const OP_CONTINUATION = 0x0;
export const OP_TEXT = 0x1;
export const OP_BINARY = 0x2;
export const OP_CLOSE = 0x8;
export const OP_PING = 0x9;
export const OP_PONG = 0xa;

// The inspector's states (RFC 6455 §5.2), named as in `ws`'s Receiver. A header that arrives whole in one
// chunk is read at once (HEADER → PAYLOAD); one that straddles chunks is collected through the states of
// its parts, and read when the last part is in.
/** Between frames, or the first of a header's two fixed bytes held (FIN, RSV1-3, opcode; MASK, length). */
const HEADER = 0;
/** Collecting the 16-bit extended payload length. */
const LENGTH_16 = 1;
/** Collecting the 64-bit extended payload length. */
const LENGTH_64 = 2;
/** Collecting the masking key (client frames, §5.3). */
const MASK_KEY = 3;
/** Inside the payload of an accepted frame: forwarded as it comes. */
const PAYLOAD = 4;
/** In front of a data message that waits for its rate token (verdict WAIT): the next `feed` asks again. */
const THROTTLED = 5;
/** Right after a compressed message handed out to be measured (verdict MEASURE): the next `feed` reads on. */
const MEASURING = 6;
/** A close frame went through: §5.5.1 forbids anything after it, so the rest is dropped. */
const CLOSED = 7;
/** A violation or a stop: nothing more is forwarded in this direction. */
const STOPPED = 8;

// What `feed` says of a chunk. Whatever the verdict, the first `accepted` bytes of the chunk go on, after
// the held header bytes in `released` (and from `gateFrom` on, into the compressed-message gate instead);
// the verdict says what becomes of the rest.
/** Read on: the rest of the chunk, if any, is the start of a header that the inspector holds. */
export const FORWARD = 0;
/** A data message waits `waitMs` for its rate token (`onExceed: throttle`): feed the rest again then. */
export const WAIT = 1;
/** A measured compressed message ends at `accepted`: hold it until it is measured, then feed the rest again. */
export const MEASURE = 2;
/** Nothing more goes on in this direction: an `error`, a close frame (`closeSeen`), or a stop the guard asked for. */
export const STOP = 3;
export type Verdict = typeof FORWARD | typeof WAIT | typeof MEASURE | typeof STOP;

/** 2^53: lengths at or above it cannot be held exactly in a JS number; no real message is that big. */
const MAX_SAFE_HIGH_WORD = 0x200000;

/** Allow the message: `onMessageStart`'s answer when a token was available. */
export const MESSAGE_OK = 0;
/** Refuse the message and close (rate exceeded with `onExceed: close`). */
export const MESSAGE_REFUSE = -1;

export interface MessageLimits {
  /** Payload bytes per message, summed over its fragments. */
  maxMessageBytes: number;
  maxFragments: number;
  /**
   * Asked once per data message, when its first frame header is complete and before any of it is
   * forwarded: MESSAGE_OK, MESSAGE_REFUSE, or a wait in ms (throttle: `feed` stops in front of the frame
   * with WAIT, and the caller feeds the rest again later). Synchronous and allocation-free by contract.
   */
  onMessageStart: (() => number) | null;
  /**
   * Asked for every ping and pong when its header is complete, before any of it is forwarded: false
   * refuses it (CONTROL_FRAME_RATE). Close frames are never asked: a peer's close must always be able to
   * end the connection. Synchronous and allocation-free by contract; data frames never reach it.
   */
  onControlFrame: (() => boolean) | null;
  /**
   * Set when compressed messages must be measured inflated: receives the unmasked payload of every
   * compressed message (a copy, on this path only), which `feed` marks with `gateFrom` and ends with the
   * verdict MEASURE, so the caller can hold the message until its inflated size is known.
   */
  onCompressedPayload: ((payload: Buffer) => void) | null;
}

export interface InspectorOptions {
  /** Frames must be masked (client → server) or must not be (server → client), RFC 6455 §5.1. */
  masked: boolean;
  /** permessage-deflate was negotiated in the 101, so RSV1 may mark a compressed message (RFC 7692 §6). */
  compressed: boolean;
  limits?: MessageLimits;
}

const NO_LIMITS: MessageLimits = {
  maxMessageBytes: Infinity, maxFragments: Infinity, onMessageStart: null, onControlFrame: null, onCompressedPayload: null,
};

/**
 * The most compressed bytes a message under `limit` (inflated) may take before it is refused unmeasured.
 * Deflate can expand incompressible data (5 bytes per stored block, RFC 1951 §3.2.4; zlib uses small
 * blocks), so the allowance is generous; the exact check is on the inflated size (inflate-counter.ts).
 */
export function compressedAllowance(limit: number): number {
  return limit * 2 + 65_536;
}

/**
 * A pure state machine over the bytes of one direction of a WebSocket connection (RFC 6455 §5.2).
 *
 * It reads frame headers only and never copies payloads: `feed(chunk)` returns a verdict, and `accepted`
 * says how many bytes at the start of `chunk` go on as they are. A header split across chunks is held back
 * (at most 14 bytes) until it is complete and valid, so a refused frame never reaches the other side and a
 * frame the guard inserts (a close) always lands on a frame boundary. The verdict is the same however the
 * stream is split. Nothing is allocated per chunk: the verdict is a number, its details are read from the
 * getters below until the next `feed`.
 */
export class FrameInspector {
  private readonly masked: boolean;
  private readonly compressed: boolean;
  private readonly limits: MessageLimits;
  private state = HEADER;

  /** The details of the last verdict (see the getters of the same names). */
  private acceptedBytes = 0;
  private releasedHeader: Buffer | null = null;
  private gateStart = -1;
  private wait = 0;
  private failure: CloseReason | null = null;
  private failureDetail = '';
  private sawClose = false;
  private closeStatus = 1005;
  /** Counters for accounting and the idle timeout. */
  private messageCount = 0;
  private dataFrameCount = 0;
  private byteCount = 0;

  /** The current message: payload bytes so far, fragments so far, and whether it is compressed. */
  private messageBytes = 0;
  private fragments = 0;
  private messageCompressed = false;
  /** A fragmented data message is open: only continuations (and control frames) may follow (§5.4). */
  private inMessage = false;
  /** Inside a compressed message that is measured before it may go on (`gateFrom` … MEASURE). */
  private gating = false;
  /** The current frame: where it began in the chunk, its FIN bit, opcode, and payload bytes still to come. */
  private frameAt = 0;
  private fin = false;
  private opcode = 0;
  private remaining = 0;
  /** Allocated on the first header that straddles chunks; most connections never need it. */
  private header: Buffer | null = null;
  private headerLength = 0;
  /** `stopAtBoundary` came inside a frame: stop when it ends. */
  private stopAtFrameEnd = false;
  /** Stop in front of the next close frame instead of forwarding it (`stopBeforeClose`). */
  private closeStops = false;
  /** Masking key of the current frame and how far into its payload we are, to read a close code. */
  private mask0 = 0;
  private mask1 = 0;
  private mask2 = 0;
  private mask3 = 0;
  private payloadOffset = 0;
  /** Length on the wire, header included, of the close frame being read. */
  private closeLength = 0;

  constructor(options: InspectorOptions) {
    this.masked = options.masked;
    this.compressed = options.compressed;
    this.limits = options.limits ?? NO_LIMITS;
  }

  /** Bytes at the start of the last chunk that go on (into the gate from `gateFrom`). */
  get accepted(): number {
    return this.acceptedBytes;
  }

  /** Held header bytes that the last chunk completed: they go on in front of that chunk's bytes. */
  get released(): Buffer | null {
    return this.releasedHeader;
  }

  /** Where in the last chunk the bytes of a measured compressed message begin (0: it began earlier), -1 when none. */
  get gateFrom(): number {
    return this.gateStart;
  }

  /** After WAIT: ms until the message's rate token is due. */
  get waitMs(): number {
    return this.wait;
  }

  /** Why the stream was refused (set with STOP), or null. */
  get error(): CloseReason | null {
    return this.failure;
  }

  get errorDetail(): string {
    return this.failureDetail;
  }

  /** A complete close frame went through. */
  get closeSeen(): boolean {
    return this.sawClose;
  }

  /** That close frame's length on the wire, header included. */
  get closeFrameLength(): number {
    return this.closeLength;
  }

  /** The status code of that close frame, 1005 when it had none (RFC 6455 §7.1.5). */
  get closeCode(): number {
    return this.closeStatus;
  }

  /** Data messages started, data frames, and bytes accepted. */
  get messages(): number {
    return this.messageCount;
  }

  get dataFrames(): number {
    return this.dataFrameCount;
  }

  get bytes(): number {
    return this.byteCount;
  }

  /** No frame is half forwarded: a frame inserted now lands on a boundary. */
  get atBoundary(): boolean {
    return this.state !== PAYLOAD;
  }

  /** Nothing more will be forwarded in this direction (violation, close frame or requested stop). */
  get stopped(): boolean {
    return this.state === STOPPED || this.state === CLOSED;
  }

  /**
   * Ends forwarding at the next frame boundary: now when between frames, else when the current frame
   * has been forwarded whole. `stopped` tells which.
   */
  stopAtBoundary(): void {
    if (this.state === PAYLOAD) this.stopAtFrameEnd = true;
    else if (this.state !== CLOSED) this.state = STOPPED;
  }

  /**
   * Keeps forwarding, but stops in front of the next close frame: it is not forwarded and the verdict is
   * STOP with no error, so the caller can send a close of its own in its place.
   */
  stopBeforeClose(): void {
    this.closeStops = true;
  }

  /** Ends forwarding now, even inside a frame: for when the rest of that frame was never forwarded. */
  stopNow(): void {
    this.state = STOPPED;
    this.gating = false;
  }

  feed(chunk: Buffer): Verdict {
    this.releasedHeader = null;
    this.gateStart = this.gating ? 0 : -1;
    // The session feeds again after WAIT (the token is due) and after MEASURE (the message went on).
    if (this.state === THROTTLED || this.state === MEASURING) this.state = partAt(this.headerLength, this.header?.[1] ?? 0);
    const length = chunk.length;
    let pos = 0;
    while (pos < length) {
      const state = this.state;
      if (state === PAYLOAD) {
        const available = length - pos;
        const take = this.remaining < available ? this.remaining : available;
        if (this.opcode === OP_CLOSE) this.readCloseCode(chunk, pos, take);
        else if (this.gating && this.opcode < 0x8) this.passCompressed(chunk, pos, take);
        pos += take;
        this.remaining -= take;
        this.byteCount += take;
        if (this.remaining === 0) {
          const verdict = this.endFrame();
          if (verdict !== FORWARD) return this.conclude(pos, verdict);
        }
        continue;
      }
      if (state > MASK_KEY) return this.conclude(pos, STOP);
      // The common case: a whole header in this chunk is read in place.
      if (this.headerLength === 0 && length - pos >= 2) {
        const size = headerSize(chunk[pos + 1]!);
        if (length - pos >= size) {
          this.frameAt = pos;
          const verdict = this.startFrame(chunk, pos);
          if (verdict !== FORWARD) return this.conclude(pos, verdict);
          pos += size;
          this.byteCount += size;
          if (this.remaining === 0) {
            const end = this.endFrame();
            if (end !== FORWARD) return this.conclude(pos, end);
          }
          continue;
        }
      }
      // The header straddles chunks: collect it; what was held from earlier chunks goes out in front of this one.
      const start = pos;
      const held = this.headerLength;
      const header = (this.header ??= Buffer.alloc(14));
      pos = this.collectHeader(header, chunk, pos);
      if (this.state !== HEADER || this.headerLength < 2) return this.conclude(start, FORWARD);
      const size = this.headerLength;
      this.headerLength = 0;
      this.frameAt = start;
      const verdict = this.startFrame(header, 0);
      if (verdict !== FORWARD) {
        // A throttled frame is fed again later: its bytes from this chunk will be collected once more.
        if (verdict === WAIT) this.headerLength = held;
        return this.conclude(start, verdict);
      }
      if (held > 0) this.releasedHeader = Buffer.from(header.subarray(0, held));
      this.byteCount += size;
      if (this.remaining === 0) {
        const end = this.endFrame();
        if (end !== FORWARD) return this.conclude(pos, end);
      }
    }
    return this.conclude(pos, FORWARD);
  }

  private conclude(accepted: number, verdict: Verdict): Verdict {
    this.acceptedBytes = accepted;
    return verdict;
  }

  /**
   * Collects a header that straddles chunks, part by part (§5.2), and returns where it stopped in `chunk`.
   * The state is left at the part still missing, or at HEADER with `headerLength` bytes once it is whole.
   */
  private collectHeader(header: Buffer, chunk: Buffer, pos: number): number {
    const length = chunk.length;
    while (pos < length) {
      header[this.headerLength++] = chunk[pos++]!;
      if (this.headerLength >= 2 && this.headerLength === headerSize(header[1]!)) {
        this.state = HEADER;
        break;
      }
      this.state = partAt(this.headerLength, header[1]!);
    }
    return pos;
  }

  /** Validates a complete header at `buf[at]` and enters its payload; any other verdict than FORWARD refuses or defers it. */
  private startFrame(buf: Buffer, at: number): Verdict {
    const b0 = buf[at]!;
    const b1 = buf[at + 1]!;
    const fin = (b0 & 0x80) !== 0;
    const opcode = b0 & 0x0f;
    const control = opcode >= 0x8;

    if ((b0 & 0x30) !== 0) return this.fail('PROTOCOL_VIOLATION', 'RSV2/RSV3 set without a negotiated extension');
    if (b0 & 0x40) {
      // RFC 7692 §6: RSV1 marks a compressed message, only on its first frame, never on control frames.
      if (!this.compressed) return this.fail('PROTOCOL_VIOLATION', 'RSV1 set without permessage-deflate');
      if (opcode !== OP_TEXT && opcode !== OP_BINARY) return this.fail('PROTOCOL_VIOLATION', 'RSV1 set on a non-first or control frame');
    }
    if (control) {
      if (opcode > OP_PONG) return this.fail('PROTOCOL_VIOLATION', `reserved opcode ${opcode}`);
      if (!fin) return this.fail('PROTOCOL_VIOLATION', 'fragmented control frame');
      if ((b1 & 0x7f) > 125) return this.fail('PROTOCOL_VIOLATION', 'control frame longer than 125 bytes');
      if (opcode === OP_CLOSE && (b1 & 0x7f) === 1) return this.fail('PROTOCOL_VIOLATION', 'close frame with a 1-byte body');
    } else if (opcode === OP_CONTINUATION) {
      if (!this.inMessage) return this.fail('PROTOCOL_VIOLATION', 'continuation frame outside a message');
    } else if (opcode === OP_TEXT || opcode === OP_BINARY) {
      if (this.inMessage) return this.fail('PROTOCOL_VIOLATION', 'new data frame inside a fragmented message');
    } else {
      return this.fail('PROTOCOL_VIOLATION', `reserved opcode ${opcode}`);
    }
    if (((b1 & 0x80) !== 0) !== this.masked) {
      return this.fail('PROTOCOL_VIOLATION', this.masked ? 'unmasked client frame' : 'masked server frame');
    }

    let payloadLength = b1 & 0x7f;
    let maskAt = at + 2;
    // §5.2: "the minimal number of bytes MUST be used to encode the length".
    if (payloadLength === 126) {
      payloadLength = buf.readUInt16BE(at + 2);
      if (payloadLength < 126) return this.fail('PROTOCOL_VIOLATION', '16-bit length not minimally encoded');
      maskAt = at + 4;
    } else if (payloadLength === 127) {
      const high = buf.readUInt32BE(at + 2);
      if (high & 0x80000000) return this.fail('PROTOCOL_VIOLATION', '64-bit length with the most significant bit set');
      if (high >= MAX_SAFE_HIGH_WORD) return this.fail('MESSAGE_TOO_BIG', 'frame length beyond 2^53');
      payloadLength = high * 0x100000000 + buf.readUInt32BE(at + 6);
      if (payloadLength <= 0xffff) return this.fail('PROTOCOL_VIOLATION', '64-bit length not minimally encoded');
      maskAt = at + 10;
    }
    if (this.masked) {
      this.mask0 = buf[maskAt]!;
      this.mask1 = buf[maskAt + 1]!;
      this.mask2 = buf[maskAt + 2]!;
      this.mask3 = buf[maskAt + 3]!;
    }

    if (control) {
      if (opcode === OP_CLOSE) {
        if (this.closeStops) {
          this.state = STOPPED;
          this.headerLength = 0;
          return STOP;
        }
        this.closeLength = maskAt - at + (this.masked ? 4 : 0) + payloadLength;
      } else if (this.limits.onControlFrame !== null && !this.limits.onControlFrame()) {
        return this.fail('CONTROL_FRAME_RATE', 'control frame rate exceeded');
      }
    } else {
      const verdict = this.checkMessage(opcode, payloadLength, (b0 & 0x40) !== 0);
      if (verdict !== FORWARD) return verdict;
      if (opcode !== OP_CONTINUATION) this.messageCount++;
      this.dataFrameCount++;
      this.inMessage = !fin;
    }
    this.opcode = opcode;
    this.fin = fin;
    this.remaining = payloadLength;
    this.payloadOffset = 0;
    this.state = PAYLOAD;
    return FORWARD;
  }

  /**
   * The message limits, checked from the header before any payload is forwarded: the start of a message
   * asks `onMessageStart`, every frame adds to the size and fragment count (RFC 6455 §5.4: a message is
   * the sum of its fragments).
   */
  private checkMessage(opcode: number, payloadLength: number, rsv1: boolean): Verdict {
    const limits = this.limits;
    if (opcode !== OP_CONTINUATION) {
      if (limits.onMessageStart !== null) {
        const answer = limits.onMessageStart();
        if (answer === MESSAGE_REFUSE) return this.fail('MESSAGE_RATE', 'message rate exceeded');
        if (answer > 0) {
          this.wait = answer;
          this.state = THROTTLED;
          return WAIT;
        }
      }
      this.messageBytes = 0;
      this.fragments = 0;
      this.messageCompressed = rsv1;
      if (rsv1 && limits.onCompressedPayload !== null) {
        this.gating = true;
        if (this.gateStart < 0) this.gateStart = this.frameAt;
      }
    }
    this.messageBytes += payloadLength;
    if (++this.fragments > limits.maxFragments) return this.fail('TOO_MANY_FRAGMENTS', `more than ${limits.maxFragments} fragments`);
    const cap = this.messageCompressed ? compressedAllowance(limits.maxMessageBytes) : limits.maxMessageBytes;
    if (this.messageBytes > cap) return this.fail('MESSAGE_TOO_BIG', `message longer than ${limits.maxMessageBytes} bytes`);
    return FORWARD;
  }

  /** The current frame has been forwarded whole: FORWARD to read on, or why this chunk ends here. */
  private endFrame(): Verdict {
    if (this.gating && this.fin && this.opcode < 0x8) {
      this.gating = false;
      this.state = this.stopAtFrameEnd ? STOPPED : MEASURING;
      return MEASURE;
    }
    if (this.opcode === OP_CLOSE) {
      this.sawClose = true;
      this.state = CLOSED;
      return STOP;
    }
    if (this.stopAtFrameEnd) {
      this.state = STOPPED;
      return STOP;
    }
    this.state = HEADER;
    return FORWARD;
  }

  /** Hands the unmasked payload of a compressed message to the inflated-size check. */
  private passCompressed(chunk: Buffer, pos: number, take: number): void {
    const payload = Buffer.from(chunk.subarray(pos, pos + take));
    if (this.masked) {
      for (let i = 0, k = this.payloadOffset; i < take; i++, k++) {
        const j = k & 3;
        payload[i]! ^= j === 0 ? this.mask0 : j === 1 ? this.mask1 : j === 2 ? this.mask2 : this.mask3;
      }
    }
    this.payloadOffset += take;
    this.limits.onCompressedPayload!(payload);
  }

  private readCloseCode(chunk: Buffer, pos: number, take: number): void {
    for (let i = 0; i < take && this.payloadOffset < 2; i++, this.payloadOffset++) {
      let byte = chunk[pos + i]!;
      if (this.masked) byte ^= this.payloadOffset === 0 ? this.mask0 : this.mask1;
      this.closeStatus = this.payloadOffset === 0 ? byte << 8 : this.closeStatus | byte;
    }
  }

  private fail(code: CloseReason, detail: string): Verdict {
    this.failure = code;
    this.failureDetail = detail;
    this.state = STOPPED;
    this.headerLength = 0;
    return STOP;
  }
}

/** Bytes in a frame header given its second byte (RFC 6455 §5.2). */
function headerSize(b1: number): number {
  const length = b1 & 0x7f;
  return 2 + (length === 126 ? 2 : length === 127 ? 8 : 0) + (b1 & 0x80 ? 4 : 0);
}

/** The part of a header that its byte at `offset` belongs to, given the header's second byte (§5.2). */
function partAt(offset: number, b1: number): number {
  if (offset < 2) return HEADER;
  const length = b1 & 0x7f;
  if (length === 126 && offset < 4) return LENGTH_16;
  if (length === 127 && offset < 10) return LENGTH_64;
  return MASK_KEY;
}
