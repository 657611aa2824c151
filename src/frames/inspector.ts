import type { CloseReason } from '../errors.js';

/** RFC 6455 §5.2 opcodes. */
export const OP_CONTINUATION = 0x0;
export const OP_TEXT = 0x1;
export const OP_BINARY = 0x2;
export const OP_CLOSE = 0x8;
export const OP_PING = 0x9;
export const OP_PONG = 0xa;

const S_HEADER = 0;
const S_PAYLOAD = 1;
/** A close frame went through: RFC 6455 §5.5.1 forbids anything after it, so the rest is dropped. */
const S_CLOSED = 2;
/** A violation or a stop: nothing more is forwarded in this direction. */
const S_STOPPED = 3;

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
   * forwarded: MESSAGE_OK, MESSAGE_REFUSE, or a wait in ms (throttle: the inspector stops in front of the
   * frame and the caller feeds the rest again later). Synchronous and allocation-free by contract.
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
   * compressed message (a copy, on this path only), which `feed` marks with `gateFrom` and ends with
   * `suspended`, so the caller can hold the message until its inflated size is known.
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
 * It reads frame headers only and never copies payloads: `feed(chunk)` returns how many bytes at the
 * start of `chunk` may be forwarded as they are. A header split across chunks is held back (at most 14
 * bytes) until it is complete and valid, so a refused frame never reaches the other side and a frame the
 * guard inserts (a close) always lands on a frame boundary. The verdict is the same however the stream
 * is split.
 */
export class FrameInspector {
  /** Held header bytes that were completed by the last chunk: write them before that chunk's bytes. */
  released: Buffer | null = null;
  /** Why the stream was refused; set together with the stop. */
  error: CloseReason | null = null;
  errorDetail = '';
  /** A complete close frame went through. */
  closeSeen = false;
  /** The status code of that close frame, 1005 when it had none (RFC 6455 §7.1.5). */
  closeCode = 1005;
  /** After `feed` stopped in front of a message to throttle it: ms to wait before feeding the rest. */
  waitMs = 0;
  /** Where in the last chunk a measured compressed message began (0: it began earlier), -1 when none. */
  gateFrom = -1;
  /** `feed` stopped right after the last frame of a measured compressed message. */
  suspended = false;
  /** Data messages started, data frames, and bytes accepted, for accounting and the idle timeout. */
  messages = 0;
  dataFrames = 0;
  bytes = 0;

  private readonly masked: boolean;
  private readonly compressed: boolean;
  private readonly limits: MessageLimits;
  /** The current message: payload bytes so far, fragments so far, and whether it is compressed. */
  private messageBytes = 0;
  private fragments = 0;
  private messageCompressed = false;
  /** Inside a measured compressed message; where the current frame began in the chunk; its FIN bit. */
  private gating = false;
  private frameAt = 0;
  private fin = false;
  private state = S_HEADER;
  /** Allocated on the first header that straddles chunks; most connections never need it. */
  private header: Buffer | null = null;
  private headerLength = 0;
  private remaining = 0;
  private opcode = 0;
  private inMessage = false;
  private stopPending = false;
  /** Stop in front of the next close frame instead of forwarding it (`stopBeforeClose`). */
  private closeStops = false;
  /** Masking key of the current frame and how far into its payload we are, to read a close code. */
  private mask0 = 0;
  private mask1 = 0;
  private mask2 = 0;
  private mask3 = 0;
  private payloadOffset = 0;

  constructor(options: InspectorOptions) {
    this.masked = options.masked;
    this.compressed = options.compressed;
    this.limits = options.limits ?? NO_LIMITS;
  }

  /** No frame is half forwarded: a frame inserted now lands on a boundary. */
  get atBoundary(): boolean {
    return this.state !== S_PAYLOAD;
  }

  /** Nothing more will be forwarded in this direction (violation, close frame or requested stop). */
  get stopped(): boolean {
    return this.state === S_STOPPED || this.state === S_CLOSED;
  }

  /**
   * Ends forwarding at the next frame boundary: now when between frames, else when the current frame
   * has been forwarded whole. `stopped` tells which.
   */
  stopAtBoundary(): void {
    if (this.state === S_HEADER) this.state = S_STOPPED;
    else if (this.state === S_PAYLOAD) this.stopPending = true;
  }

  /**
   * Keeps forwarding, but stops in front of the next close frame: it is not forwarded and `stopped`
   * becomes true with no error, so the caller can send a close of its own in its place.
   */
  stopBeforeClose(): void {
    this.closeStops = true;
  }

  /** Ends forwarding now, even inside a frame: for when the rest of that frame was never forwarded. */
  stopNow(): void {
    this.state = S_STOPPED;
    this.gating = false;
  }

  feed(chunk: Buffer): number {
    this.released = null;
    this.gateFrom = this.gating ? 0 : -1;
    const length = chunk.length;
    let pos = 0;
    while (pos < length) {
      const state = this.state;
      if (state === S_PAYLOAD) {
        const available = length - pos;
        const take = this.remaining < available ? this.remaining : available;
        if (this.opcode === OP_CLOSE) this.readCloseCode(chunk, pos, take);
        else if (this.gating && this.opcode < 0x8) this.passCompressed(chunk, pos, take);
        pos += take;
        this.remaining -= take;
        this.bytes += take;
        if (this.remaining === 0 && this.endFrame()) return pos;
        continue;
      }
      if (state !== S_HEADER) return pos;
      if (this.headerLength === 0 && length - pos >= 2) {
        const size = headerSize(chunk[pos + 1]!);
        if (length - pos >= size) {
          this.frameAt = pos;
          if (!this.startFrame(chunk, pos)) return pos;
          pos += size;
          this.bytes += size;
          if (this.remaining === 0 && this.endFrame()) return pos;
          continue;
        }
      }
      const start = pos;
      const held = this.headerLength;
      const header = (this.header ??= Buffer.alloc(14));
      pos = this.collectHeader(header, chunk, pos);
      const size = this.headerLength >= 2 ? headerSize(header[1]!) : 14;
      if (this.headerLength < size) return start;
      // The header straddled chunks: what was held from earlier chunks goes out in front of this one.
      this.headerLength = 0;
      this.frameAt = start;
      if (!this.startFrame(header, 0)) {
        // A throttled frame is fed again later: its bytes from this chunk will be collected once more.
        if (this.waitMs > 0) this.headerLength = held;
        return start;
      }
      if (held > 0) this.released = Buffer.from(header.subarray(0, held));
      this.bytes += size;
      if (this.remaining === 0 && this.endFrame()) return pos;
    }
    return pos;
  }

  private collectHeader(header: Buffer, chunk: Buffer, pos: number): number {
    const length = chunk.length;
    while (pos < length) {
      header[this.headerLength++] = chunk[pos++]!;
      if (this.headerLength >= 2 && this.headerLength >= headerSize(header[1]!)) break;
    }
    return pos;
  }

  /** Validates a complete header at `buf[at]` and enters its payload; false when it was refused. */
  private startFrame(buf: Buffer, at: number): boolean {
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
          this.state = S_STOPPED;
          this.headerLength = 0;
          return false;
        }
      } else if (this.limits.onControlFrame !== null && !this.limits.onControlFrame()) {
        return this.fail('CONTROL_FRAME_RATE', 'control frame rate exceeded');
      }
    } else {
      if (!this.checkMessage(opcode, payloadLength, (b0 & 0x40) !== 0)) return false;
      if (opcode !== OP_CONTINUATION) this.messages++;
      this.dataFrames++;
      this.inMessage = !fin;
    }
    this.opcode = opcode;
    this.fin = fin;
    this.remaining = payloadLength;
    this.payloadOffset = 0;
    this.state = S_PAYLOAD;
    return true;
  }

  /**
   * The message limits, checked from the header before any payload is forwarded: the start of a message
   * asks `onMessageStart`, every frame adds to the size and fragment count (RFC 6455 §5.4: a message is
   * the sum of its fragments).
   */
  private checkMessage(opcode: number, payloadLength: number, rsv1: boolean): boolean {
    const limits = this.limits;
    if (opcode !== OP_CONTINUATION) {
      if (limits.onMessageStart !== null) {
        const verdict = limits.onMessageStart();
        if (verdict === MESSAGE_REFUSE) return this.fail('MESSAGE_RATE', 'message rate exceeded');
        if (verdict > 0) {
          this.waitMs = verdict;
          return false;
        }
      }
      this.messageBytes = 0;
      this.fragments = 0;
      this.messageCompressed = rsv1;
      if (rsv1 && limits.onCompressedPayload !== null) {
        this.gating = true;
        if (this.gateFrom < 0) this.gateFrom = this.frameAt;
      }
    }
    this.messageBytes += payloadLength;
    if (++this.fragments > limits.maxFragments) return this.fail('TOO_MANY_FRAGMENTS', `more than ${limits.maxFragments} fragments`);
    const cap = this.messageCompressed ? compressedAllowance(limits.maxMessageBytes) : limits.maxMessageBytes;
    if (this.messageBytes > cap) return this.fail('MESSAGE_TOO_BIG', `message longer than ${limits.maxMessageBytes} bytes`);
    return true;
  }

  /** The current frame has been forwarded whole; true when forwarding in this direction ends here. */
  private endFrame(): boolean {
    if (this.gating && this.fin && this.opcode < 0x8) {
      this.gating = false;
      this.suspended = true;
      this.state = this.stopPending ? S_STOPPED : S_HEADER;
      return true;
    }
    if (this.opcode === OP_CLOSE) {
      this.closeSeen = true;
      this.state = S_CLOSED;
      return true;
    }
    if (this.stopPending) {
      this.state = S_STOPPED;
      return true;
    }
    this.state = S_HEADER;
    return false;
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
      this.closeCode = this.payloadOffset === 0 ? byte << 8 : this.closeCode | byte;
    }
  }

  private fail(code: CloseReason, detail: string): false {
    this.error = code;
    this.errorDetail = detail;
    this.state = S_STOPPED;
    this.headerLength = 0;
    return false;
  }
}

/** Bytes in a frame header given its second byte (RFC 6455 §5.2). */
function headerSize(b1: number): number {
  const length = b1 & 0x7f;
  return 2 + (length === 126 ? 2 : length === 127 ? 8 : 0) + (b1 & 0x80 ? 4 : 0);
}
