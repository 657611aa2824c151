/**
 * Raw-socket WebSocket tooling for hostile tests. Deliberately independent of
 * the `ws` library: these helpers must be able to produce and observe bytes
 * that a conforming implementation would refuse to send or would hide.
 */
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const DEFAULT_TIMEOUT_MS = 5_000;
const HEAD_END = Buffer.from('\r\n\r\n');

export const Op = {
  CONTINUATION: 0x0,
  TEXT: 0x1,
  BINARY: 0x2,
  CLOSE: 0x8,
  PING: 0x9,
  PONG: 0xa,
} as const;

export interface HttpResponse {
  status: number;
  /** Lowercased names; repeated headers joined with ', '. */
  headers: Record<string, string>;
  /** The head as received, up to but excluding the blank line. */
  raw: string;
  /** Bytes that had arrived after the head when it was parsed (not consumed). */
  rest: Buffer;
}

export interface Frame {
  fin: boolean;
  rsv1: boolean;
  rsv2: boolean;
  rsv3: boolean;
  opcode: number;
  /** A server must not mask; reported so tests can assert it. */
  masked: boolean;
  /** Unmasked payload. */
  payload: Buffer;
  /** Only for close frames carrying a body. */
  closeCode?: number;
  closeReason?: string;
}

export class RawConn {
  /** True once the peer ended or the socket closed/errored. */
  closed = false;
  /** Last socket error (ECONNRESET etc.); hostile tests often provoke one. */
  error: Error | undefined;

  private all: Buffer[] = [];
  /** Received bytes not yet consumed by readHttpResponse/readFrame. */
  private pending: Buffer = Buffer.alloc(0);
  private headConsumed = false;
  private wakeups = new Set<() => void>();

  constructor(readonly socket: net.Socket) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      this.all.push(chunk);
      this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
      this.wake();
    });
    const onGone = (): void => {
      this.closed = true;
      this.wake();
    };
    socket.on('end', onGone);
    socket.on('close', onGone);
    // Without a listener an ECONNRESET from the peer would crash the worker.
    socket.on('error', (err) => {
      this.error = err;
      onGone();
    });
  }

  /** Every byte received since connect, including the HTTP head. */
  get received(): Buffer {
    return Buffer.concat(this.all);
  }

  write(data: Buffer | string): void {
    this.socket.write(data);
  }

  destroy(): void {
    this.socket.destroy();
  }

  async readHttpResponse(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<HttpResponse> {
    const end = await this.waitUntil(
      () => {
        const i = this.pending.indexOf(HEAD_END);
        return i === -1 ? undefined : i;
      },
      timeoutMs,
      'an HTTP response head',
    );
    const raw = this.pending.subarray(0, end).toString('latin1');
    this.pending = this.pending.subarray(end + HEAD_END.length);
    this.headConsumed = true;

    const [statusLine = '', ...lines] = raw.split('\r\n');
    const m = /^HTTP\/\d(?:\.\d)? (\d{3})/.exec(statusLine);
    if (m?.[1] === undefined) throw new Error(`not an HTTP status line: ${JSON.stringify(statusLine)}`);
    const headers: Record<string, string> = {};
    for (const line of lines) {
      const colon = line.indexOf(':');
      if (colon <= 0) continue;
      const name = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim();
      headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
    }
    return { status: Number(m[1]), headers, raw, rest: Buffer.from(this.pending) };
  }

  /** Reads the next server→client frame; skips the HTTP head first if nobody read it. */
  async readFrame(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Frame> {
    const deadline = Date.now() + timeoutMs;
    if (!this.headConsumed) await this.readHttpResponse(timeoutMs);
    const parsed = await this.waitUntil(() => parseFrame(this.pending), Math.max(0, deadline - Date.now()), 'a frame');
    this.pending = this.pending.subarray(parsed.size);
    return parsed.frame;
  }

  /** Resolves once the peer has ended or closed the connection. */
  async waitClosed(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<void> {
    await this.waitUntil(() => (this.closed ? true : undefined), timeoutMs, 'the connection to close', true);
  }

  private wake(): void {
    for (const w of [...this.wakeups]) w();
  }

  /**
   * Re-evaluates `check` on every data/close event. Rejects if the socket is
   * gone first (unless waiting for exactly that), so a test fails with what
   * was actually received instead of a bare timeout.
   */
  private waitUntil<T>(check: () => T | undefined, timeoutMs: number, what: string, closeIsSuccess = false): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const done = (): void => {
        this.wakeups.delete(evaluate);
        if (timer) clearTimeout(timer);
      };
      const describe = (): string =>
        `${this.pending.length} unconsumed bytes: ${JSON.stringify(this.pending.subarray(0, 200).toString('latin1'))}` +
        (this.error ? `; socket error: ${this.error.message}` : '');
      const evaluate = (): void => {
        let value: T | undefined;
        try {
          value = check();
        } catch (err) {
          done();
          reject(err);
          return;
        }
        if (value !== undefined) {
          done();
          resolve(value);
        } else if (this.closed && !closeIsSuccess) {
          done();
          reject(new Error(`connection closed while waiting for ${what}; ${describe()}`));
        }
      };
      timer = setTimeout(() => {
        done();
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; ${describe()}`));
      }, timeoutMs);
      this.wakeups.add(evaluate);
      evaluate();
    });
  }
}

export function rawConnect(port: number, host = '127.0.0.1'): Promise<RawConn> {
  return new Promise<RawConn>((resolve, reject) => {
    const socket = net.connect({ port, host });
    const onError = (err: Error): void => reject(err);
    socket.once('error', onError);
    socket.once('connect', () => {
      socket.off('error', onError);
      resolve(new RawConn(socket));
    });
  });
}

/** Returns undefined until a whole frame is buffered; throws on an unparseable length. */
function parseFrame(buf: Buffer): { frame: Frame; size: number } | undefined {
  if (buf.length < 2) return undefined;
  const b0 = buf[0]!;
  const b1 = buf[1]!;
  const masked = (b1 & 0x80) !== 0;
  let len = b1 & 0x7f;
  let offset = 2;
  if (len === 126) {
    if (buf.length < 4) return undefined;
    len = buf.readUInt16BE(2);
    offset = 4;
  } else if (len === 127) {
    if (buf.length < 10) return undefined;
    const big = buf.readBigUInt64BE(2);
    if (big > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`frame length ${big} is absurd`);
    len = Number(big);
    offset = 10;
  }
  const maskKey = masked ? buf.subarray(offset, offset + 4) : undefined;
  if (masked) offset += 4;
  if (buf.length < offset + len) return undefined;

  const payload = Buffer.from(buf.subarray(offset, offset + len));
  if (maskKey) for (let i = 0; i < payload.length; i++) payload[i]! ^= maskKey[i % 4]!;

  const frame: Frame = {
    fin: (b0 & 0x80) !== 0,
    rsv1: (b0 & 0x40) !== 0,
    rsv2: (b0 & 0x20) !== 0,
    rsv3: (b0 & 0x10) !== 0,
    opcode: b0 & 0x0f,
    masked,
    payload,
  };
  if (frame.opcode === Op.CLOSE && payload.length >= 2) {
    frame.closeCode = payload.readUInt16BE(0);
    frame.closeReason = payload.subarray(2).toString('utf8');
  }
  return { frame, size: offset + len };
}

export function randomKey(): string {
  return randomBytes(16).toString('base64');
}

/** The Sec-WebSocket-Key inside a request built by upgradeRequest. */
export function keyOf(request: string): string {
  const m = /^sec-websocket-key:[ \t]*(\S*)/im.exec(request);
  if (m?.[1] === undefined) throw new Error('request has no Sec-WebSocket-Key');
  return m[1];
}

export function acceptFor(key: string): string {
  return createHash('sha1').update(key + WS_GUID).digest('base64');
}

export interface UpgradeOptions {
  method?: string;
  /** Request-line version, default 'HTTP/1.1'. */
  version?: string;
  /** Header names (case-insensitive) to leave out entirely. */
  omit?: string[];
}

/**
 * A valid RFC 6455 client handshake, to be bent by the caller.
 *
 * `extraHeaders` as a record replaces a default header of the same name
 * (case-insensitive) in place, name spelling included, or appends. As an array of raw "Name: value"
 * lines it is appended verbatim, which is how to send duplicates or
 * malformed lines.
 */
export function upgradeRequest(
  path: string,
  extraHeaders?: Record<string, string> | string[],
  opts: UpgradeOptions = {},
): string {
  const headers: [string, string][] = [
    ['Host', '127.0.0.1'],
    ['Upgrade', 'websocket'],
    ['Connection', 'Upgrade'],
    ['Sec-WebSocket-Key', randomKey()],
    ['Sec-WebSocket-Version', '13'],
  ];
  const rawLines: string[] = [];
  if (Array.isArray(extraHeaders)) {
    rawLines.push(...extraHeaders);
  } else if (extraHeaders) {
    for (const [name, value] of Object.entries(extraHeaders)) {
      // The caller's spelling of the name wins too, so casing can be tested.
      const i = headers.findIndex(([n]) => n.toLowerCase() === name.toLowerCase());
      if (i === -1) headers.push([name, value]);
      else headers[i] = [name, value];
    }
  }
  const omit = new Set((opts.omit ?? []).map((h) => h.toLowerCase()));
  const lines = [
    `${opts.method ?? 'GET'} ${path} ${opts.version ?? 'HTTP/1.1'}`,
    ...headers.filter(([n]) => !omit.has(n.toLowerCase())).map(([n, v]) => `${n}: ${v}`),
    ...rawLines,
  ];
  return `${lines.join('\r\n')}\r\n\r\n`;
}

export interface FrameSpec {
  fin?: boolean;
  rsv1?: boolean;
  rsv2?: boolean;
  rsv3?: boolean;
  /** 0–15; reserved opcodes are allowed on purpose. */
  opcode: number;
  payload?: Buffer | string;
  /** true: random key (default); Buffer: this 4-byte key; false: unmasked (illegal from a client). */
  mask?: boolean | Buffer;
  /** Force a length encoding; '16'/'64' on a short payload gives a non-minimal (illegal) encoding. */
  lengthForm?: 'auto' | '16' | '64';
  /** Declared length instead of the real one, e.g. 1n << 63n; the payload is still written as given. */
  rawLength?: bigint;
}

/** Builds a client→server frame, including deliberately broken ones. */
export function frame(spec: FrameSpec): Buffer {
  const { fin = true, rsv1 = false, rsv2 = false, rsv3 = false, opcode, mask = true, lengthForm = 'auto' } = spec;
  if (!Number.isInteger(opcode) || opcode < 0 || opcode > 0xf) throw new RangeError(`opcode ${opcode} does not fit 4 bits`);
  const payload = typeof spec.payload === 'string' ? Buffer.from(spec.payload, 'utf8') : (spec.payload ?? Buffer.alloc(0));
  const declared = spec.rawLength ?? BigInt(payload.length);
  if (declared < 0n) throw new RangeError('rawLength must be non-negative');

  const form = lengthForm === 'auto' ? (declared < 126n ? '7' : declared <= 0xffffn ? '16' : '64') : lengthForm;
  let lenBytes: Buffer;
  let len7: number;
  if (form === '7') {
    len7 = Number(declared);
    lenBytes = Buffer.alloc(0);
  } else if (form === '16') {
    if (declared > 0xffffn) throw new RangeError(`length ${declared} does not fit 16 bits`);
    len7 = 126;
    lenBytes = Buffer.alloc(2);
    lenBytes.writeUInt16BE(Number(declared));
  } else {
    if (declared > 0xffff_ffff_ffff_ffffn) throw new RangeError(`length ${declared} does not fit 64 bits`);
    len7 = 127;
    lenBytes = Buffer.alloc(8);
    lenBytes.writeBigUInt64BE(declared);
  }

  let key: Buffer | undefined;
  if (mask === true) key = randomBytes(4);
  else if (Buffer.isBuffer(mask)) {
    if (mask.length !== 4) throw new RangeError('mask key must be 4 bytes');
    key = mask;
  }

  const b0 = (fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | (rsv2 ? 0x20 : 0) | (rsv3 ? 0x10 : 0) | opcode;
  const b1 = (key ? 0x80 : 0) | len7;
  const body = Buffer.from(payload);
  if (key) for (let i = 0; i < body.length; i++) body[i]! ^= key[i % 4]!;
  return Buffer.concat([Buffer.from([b0, b1]), lenBytes, key ?? Buffer.alloc(0), body]);
}

export function closePayload(code: number, reason: string | Buffer = ''): Buffer {
  const head = Buffer.alloc(2);
  head.writeUInt16BE(code);
  return Buffer.concat([head, typeof reason === 'string' ? Buffer.from(reason, 'utf8') : reason]);
}

/** Frames up to and including the close frame; each read is bounded by readFrame's own timeout. */
export async function untilClose(conn: RawConn): Promise<{ frames: Frame[]; close: Frame }> {
  const frames: Frame[] = [];
  for (;;) {
    const f = await conn.readFrame();
    if (f.opcode === Op.CLOSE) return { frames, close: f };
    frames.push(f);
  }
}

/** Two connected TCP sockets on 127.0.0.1: the guard's end (`ours`) and the peer's (`theirs`). */
export async function tcpPair(): Promise<{ ours: net.Socket; theirs: net.Socket; close: () => void }> {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const ours = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  const [theirs] = (await once(server, 'connection')) as [net.Socket];
  await once(ours, 'connect');
  return { ours, theirs, close: () => server.close() };
}
