import type { Socket } from 'node:net';
import { getSystemErrorName } from 'node:util';

/**
 * The legs of an upgraded connection on the TCP handles under Node's sockets (docs/performance.md,
 * finding 13).
 *
 * Once the 101 is out, a WebSocket connection needs very little of a `net.Socket`: read, write, half-close
 * and close. The stream machinery around it (two stream states, an event table, a write queue of its own,
 * a tick after every write) is most of what an idle connection costs, and a part of every message. So a
 * plain TCP socket in a quiet state is taken apart: its handle is kept and driven directly, and the socket
 * itself is destroyed (it has no handle any more, so nothing is closed; its server stops counting it).
 * A TLS socket, or one with a write still queued or already ended, is kept as it is: `net.Socket` is a
 * `Leg` too, read with 'data'.
 *
 * Reads land in one process-wide buffer and are copied into a slab that is handed out from the bottom up.
 * The landing buffer is overwritten by the next read of any connection, and a chunk written to the other
 * leg may stay queued there after `write` returns (the kernel took part of it), hence the copy. A chunk
 * nobody refers to once it has been handled (written through at once, nothing held back) gives its bytes
 * back for the next read; one still referred to keeps them until the garbage collector frees the slab.
 * Most reads thus reuse the same bytes of the same slab: no allocation, no page fault.
 */

/** What the session, its pumps and its closing handshake use of a connection leg: `net.Socket` has all of it. */
export interface Leg {
  readonly destroyed: boolean;
  readonly closed: boolean;
  readonly readableEnded: boolean;
  readonly writableEnded: boolean;
  /** Bytes written and not yet taken by the kernel. */
  readonly writableLength: number;
  readonly readableLength: number;
  /** False when the caller should wait for 'drain' before writing more. */
  write(chunk: Buffer): boolean;
  /** Half-closes (FIN) once everything written before is out. */
  end(): unknown;
  /** Writes `chunk`, then half-closes. */
  end(chunk: Buffer): unknown;
  destroy(): unknown;
  pause(): unknown;
  resume(): unknown;
  read(): unknown;
  setNoDelay(noDelay: boolean): unknown;
  on(event: 'error' | 'close' | 'end' | 'drain' | 'data', listener: (...args: never[]) => void): unknown;
}

/** Whom a leg's reads go to: an object rather than a closure, one closure less per leg (row f). */
export interface PooledReceiver {
  /**
   * Handles one read, copied out of the landing buffer. True when nothing refers to `chunk` any more (all of
   * it was written through and nothing of it is held), so its bytes may serve the next read.
   */
  receivePooled(chunk: Buffer): boolean;
}

/** A libuv stream handle as Node's stream_base exposes it (TCPWrap): the calls this module makes. */
interface RawHandle extends Record<symbol, HandleLeg | undefined> {
  readStart(): number;
  readStop(): number;
  useUserBuffer(buffer: Buffer): void;
  writeBuffer(req: object, data: Buffer): number;
  shutdown(req: object): number;
  close(callback: () => void): void;
  setNoDelay(noDelay: boolean): number;
  onread: (this: RawHandle) => void;
}

interface Request {
  handle: RawHandle;
  oncomplete: (this: Request, status: number) => void;
  async: boolean;
  bytes: number;
  buffer: Buffer | null;
}

interface StreamBinding {
  WriteWrap: new () => Request;
  ShutdownWrap: new () => Request;
  streamBaseState: Int32Array;
  kReadBytesOrError: number;
  kLastWriteWasAsync: number;
}

/**
 * How a handle finds its leg: the field where Node keeps the socket a handle belongs to, found on the first
 * socket taken apart (the leg replaces the socket there, so the handle gets no property added), or a
 * field of ours on a Node that keeps none.
 */
let legKey: symbol | null = null;
const LEG = Symbol('leg');

/**
 * The session a leg belongs to, and the pump that writes to it (for their module-level listeners): a
 * `HandleLeg` has both as fields of its own, a `net.Socket` gets them as added properties.
 */
export const OWNER = Symbol('session');
export const WRITER = Symbol('writer');

/** Node's stream binding and libuv's end-of-file code, or null when this Node does not offer them (then sockets stay sockets). */
const binding: (StreamBinding & { eof: number; notConnected: number }) | null = (() => {
  try {
    const legacy = process as unknown as { binding(name: string): unknown };
    const stream = legacy.binding('stream_wrap') as Partial<StreamBinding>;
    const uv = legacy.binding('uv') as { UV_EOF?: unknown; UV_ENOTCONN?: unknown };
    if (typeof stream.WriteWrap !== 'function' || typeof stream.ShutdownWrap !== 'function' || !(stream.streamBaseState instanceof Int32Array)
      || typeof stream.kReadBytesOrError !== 'number' || typeof stream.kLastWriteWasAsync !== 'number'
      || typeof uv.UV_EOF !== 'number' || typeof uv.UV_ENOTCONN !== 'number') return null;
    return { ...(stream as StreamBinding), eof: uv.UV_EOF, notConnected: uv.UV_ENOTCONN };
  } catch {
    return null;
  }
})();

/** As much as Node reads at once by default. */
const LANDING_BYTES = 64 * 1024;
/** Room for a few full reads, so a chunk kept by a slow reader rarely forces a new slab. */
const SLAB_BYTES = 256 * 1024;
/** Queued bytes at which `write` asks for a 'drain' first: `net.Socket`'s default high-water mark. */
const HIGH_WATER = 16 * 1024;

let landing: Buffer | null = null;
let slab: Buffer | null = null;
/** Slab bytes below this are (or may be) referred to by chunks handed out earlier. */
let top = 0;

/** A copy of the read's bytes in the slab; `release` gives them back when nothing kept them. */
function copyOut(source: Buffer, n: number): Buffer {
  if (slab === null || top + n > SLAB_BYTES) {
    slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
    top = 0;
  }
  source.copy(slab, top, 0, n);
  const chunk = slab.subarray(top, top + n);
  top += n;
  return chunk;
}

function release(chunk: Buffer): void {
  // Only the latest chunk can go back; one handed out before it is below a chunk still kept.
  if (slab !== null && chunk.buffer === slab.buffer && chunk.byteOffset + chunk.length === top) top = chunk.byteOffset;
}

function systemError(status: number, syscall: string): Error {
  let name: string;
  try {
    name = getSystemErrorName(status);
  } catch {
    name = `error ${status}`;
  }
  return Object.assign(new Error(`${syscall} ${name}`), { code: name, errno: status, syscall });
}

/*
 * The handle's callbacks are module-level functions that find their leg through the handle: closures per
 * leg would cost every idle connection (row f).
 */
function onHandleRead(this: RawHandle): void {
  const n = binding!.streamBaseState[binding!.kReadBytesOrError]!;
  if (n !== 0) this[legKey!]!.onRead(n);
}

function onWritten(this: Request, status: number): void {
  this.handle[legKey!]!.onWritten(this, status);
}

function onShutdown(this: Request, status: number): void {
  this.handle[legKey!]!.onShutdown(status);
}

function onHandleClosed(this: RawHandle): void {
  this[legKey!]!.onClosed();
}

function emitEnd(leg: HandleLeg): void {
  leg.onEnded();
}

type Listener = (this: HandleLeg, ...args: never[]) => void;

/**
 * A leg on a raw TCP handle. It behaves as `net.Socket` does for what `Leg` covers, events included:
 * 'end' after the peer's FIN (and, without `allowHalfOpen`, a FIN back), 'drain' once a `write` that
 * returned false is out, 'error' then 'close' when it is destroyed, each emitted from a callback of its
 * own, never from inside a call. Each event has at most one listener, which is all a session needs.
 */
export class HandleLeg implements Leg {
  destroyed = false;
  closed = false;
  readableEnded = false;
  writableEnded = false;
  writableLength = 0;
  [OWNER]: unknown = null;
  [WRITER]: unknown = null;
  private readonly handle: RawHandle;
  private readonly allowHalfOpen: boolean;
  private finished = false;
  private reading = false;
  private needDrain = false;
  private failure: Error | null = null;
  private receiver: PooledReceiver | null = null;
  /** What the socket had buffered when it was taken apart, until the pump reads it. */
  private buffered: Buffer | null;
  private onError: Listener | null = null;
  private onClose: Listener | null = null;
  private onEnd: Listener | null = null;
  private onDrain: Listener | null = null;

  constructor(handle: RawHandle, allowHalfOpen: boolean, buffered: Buffer | null) {
    this.handle = handle;
    this.allowHalfOpen = allowHalfOpen;
    this.buffered = buffered;
    handle[legKey!] = this;
    handle.onread = onHandleRead;
  }

  on(event: 'error' | 'close' | 'end' | 'drain' | 'data', listener: (...args: never[]) => void): this {
    const fn = listener as Listener;
    const taken = event === 'error' ? this.onError : event === 'close' ? this.onClose : event === 'end' ? this.onEnd : this.onDrain;
    // One listener each: a second one would silently take the session's place.
    if (event === 'data' || taken !== null) throw new Error(`a handle leg takes one '${event}' listener and is read with readTo()`);
    if (event === 'error') this.onError = fn;
    else if (event === 'close') this.onClose = fn;
    else if (event === 'end') this.onEnd = fn;
    else this.onDrain = fn;
    return this;
  }

  /** Every read from now on goes to `receiver`, through the landing buffer; reading starts with `resume()`. */
  readTo(receiver: PooledReceiver): void {
    landing ??= Buffer.allocUnsafeSlow(LANDING_BYTES);
    this.receiver = receiver;
    this.handle.useUserBuffer(landing);
  }

  /** Bytes the socket had buffered before it was taken apart: later reads go to the receiver as they come. */
  get readableLength(): number {
    return this.buffered?.length ?? 0;
  }

  read(): Buffer | null {
    const bytes = this.buffered;
    this.buffered = null;
    return bytes;
  }

  pause(): this {
    if (this.reading) {
      this.reading = false;
      this.handle.readStop();
    }
    return this;
  }

  resume(): this {
    if (!this.reading && this.receiver !== null && !this.readableEnded && !this.destroyed) {
      this.reading = true;
      const status = this.handle.readStart();
      if (status !== 0) this.close(systemError(status, 'read'));
    }
    return this;
  }

  setNoDelay(noDelay: boolean): this {
    this.handle.setNoDelay(noDelay);
    return this;
  }

  write(chunk: Buffer): boolean {
    if (this.destroyed) return false;
    // As net.Socket does: a write after our FIN fails the leg, and the audit line says why.
    if (this.writableEnded) {
      this.close(Object.assign(new Error('write after end'), { code: 'ERR_STREAM_WRITE_AFTER_END' }));
      return false;
    }
    if (chunk.length === 0) return this.writableLength < HIGH_WATER;
    const req = new binding!.WriteWrap();
    req.handle = this.handle;
    req.oncomplete = onWritten;
    req.async = false;
    const status = this.handle.writeBuffer(req, chunk);
    if (status !== 0) {
      this.close(systemError(status, 'write'));
      return false;
    }
    if (binding!.streamBaseState[binding!.kLastWriteWasAsync] === 0) return this.writableLength < HIGH_WATER;
    // Queued in libuv: the request keeps the bytes alive until it completes.
    req.async = true;
    req.bytes = chunk.length;
    req.buffer = chunk;
    this.writableLength += chunk.length;
    if (this.writableLength < HIGH_WATER) return true;
    this.needDrain = true;
    return false;
  }

  end(chunk?: Buffer): this {
    if (this.destroyed || this.writableEnded) return this;
    if (chunk !== undefined) this.write(chunk);
    this.writableEnded = true;
    if (this.destroyed) return this;
    // libuv sends the FIN once the writes queued before it are out.
    const req = new binding!.ShutdownWrap();
    req.handle = this.handle;
    req.oncomplete = onShutdown;
    const status = this.handle.shutdown(req);
    if (status === 1 || status === binding!.notConnected) process.nextTick(emitShutdown, this);
    else if (status !== 0) this.close(systemError(status, 'shutdown'));
    return this;
  }

  destroy(): this {
    this.close(null);
    return this;
  }

  /** For the module-level read callback: bytes (n > 0), the peer's FIN or a read error. */
  onRead(n: number): void {
    if (n > 0) {
      const chunk = copyOut(landing!, n);
      if (this.receiver!.receivePooled(chunk)) release(chunk);
      return;
    }
    if (n !== binding!.eof) {
      this.close(systemError(n, 'read'));
      return;
    }
    // libuv has stopped reading at the FIN.
    this.reading = false;
    this.readableEnded = true;
    process.nextTick(emitEnd, this);
  }

  /** The peer's FIN, a tick after it was read (as net.Socket emits 'end'). */
  onEnded(): void {
    if (this.destroyed) return;
    this.onEnd?.call(this);
    // Both ways are done once our FIN is out too; without allowHalfOpen the peer's FIN is answered with ours.
    if (this.finished) this.destroy();
    else if (!this.allowHalfOpen) this.end();
  }

  /** For the module-level write callback: a queued write is out (or failed). */
  onWritten(req: Request, status: number): void {
    this.writableLength -= req.bytes;
    req.buffer = null;
    if (this.destroyed) return;
    if (status < 0) {
      this.close(systemError(status, 'write'));
      return;
    }
    if (this.needDrain && this.writableLength === 0) {
      this.needDrain = false;
      this.onDrain?.call(this);
    }
  }

  /** Our FIN is out: with the peer's in too, the connection is over. */
  onShutdown(_status: number): void {
    this.finished = true;
    if (this.readableEnded && !this.destroyed) this.destroy();
  }

  onClosed(): void {
    this.closed = true;
    if (this.failure !== null) this.onError?.call(this, this.failure as never);
    this.onClose?.call(this);
  }

  /** Closes the handle; 'error' (if any) and 'close' follow from its close callback. */
  private close(err: Error | null): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.failure = err;
    this.reading = false;
    this.handle.close(onHandleClosed);
  }
}

function emitShutdown(leg: HandleLeg): void {
  leg.onShutdown(0);
}

/** The fields of net.Socket this module reads, beyond its typings. */
interface SocketInternals {
  _handle: (RawHandle & { reading?: boolean }) | null;
  /** `ended`: the peer's FIN was read, though 'end' may not have been emitted yet (readableEnded). */
  _readableState?: { ended?: boolean };
  connecting: boolean;
  allowHalfOpen: boolean;
  writableCorked: number;
}

/**
 * Whether `socket` can go on as a handle leg: a plain TCP socket, connected, nothing queued, nothing ended.
 * A FIN already read stays with the socket: libuv has stopped reading, so a leg would never see it.
 */
function takeable(socket: Socket): boolean {
  const s = socket as unknown as SocketInternals;
  const handle = s._handle;
  return binding !== null && !('encrypted' in socket) && handle != null && !s.connecting && !socket.destroyed
    && s._readableState?.ended === false && !socket.writableEnded && socket.writableLength === 0 && s.writableCorked === 0
    && socket.errored == null && socket.readableEncoding === null
    && typeof handle.writeBuffer === 'function' && typeof handle.shutdown === 'function' && typeof handle.useUserBuffer === 'function'
    && typeof handle.readStart === 'function' && typeof handle.readStop === 'function' && typeof handle.setNoDelay === 'function';
}

/**
 * The leg a session runs `socket` on. Bytes the socket had buffered stay readable from the leg with
 * `read()`, as from the socket. A socket that cannot be taken apart is its own leg.
 */
export function takeLeg(socket: Socket): Leg {
  socket.setTimeout(0);
  if (!takeable(socket)) return socket;
  const buffered = socket.readableLength > 0 ? socket.read() as Buffer | null : null;
  const s = socket as unknown as SocketInternals;
  const handle = s._handle!;
  // Stopping is idempotent in libuv: no trust in Node's own flag needed.
  handle.readStop();
  handle.reading = false;
  s._handle = null;
  // The handle's owner is the leg from now on: nothing may find the socket through it.
  const owners = Object.getOwnPropertySymbols(handle).filter((key) => (handle as unknown as Record<symbol, unknown>)[key] === socket);
  legKey ??= owners.find((key) => key.description === 'owner_symbol') ?? owners[0] ?? LEG;
  for (const key of owners) if (key !== legKey) delete handle[key];
  const leg = new HandleLeg(handle, s.allowHalfOpen, buffered);
  // Without a handle this closes nothing: it ends the socket's own bookkeeping (its server's count, its timers).
  socket.destroy();
  return leg;
}
