import net, { type Socket } from 'node:net';

/**
 * Reads without an allocation per read (docs/performance.md, finding 10).
 *
 * A socket read the usual way gets a fresh 64 KiB buffer from Node for every read, shrunk to the bytes that
 * came: one malloc and one free per read, and glibc hands the freed memory back to the kernel only to fault
 * it in again on the next read. Node's `onread` option (a buffer of the caller's, reused for every read) is
 * the cure, but only `net.connect` takes it, and the sockets here exist before the guard knows it wants them:
 * `http.Server` accepts the client's and `http.request` dials the upstream's. So once a connection is
 * upgraded, both sockets are switched to that mode by hand, through the same fields `onread` sets (found
 * by name on a probe socket, never assumed): every read lands in one process-wide landing buffer.
 *
 * The landing buffer is overwritten by the next read of any socket, and a chunk written to the other socket
 * may stay queued there after `write` returns (the kernel took part of it), so each read is copied out
 * first, into a slab that is handed out from the bottom up. A chunk nobody refers to any more once it has
 * been handled (written through at once, nothing held back) gives its bytes back for the next read; one
 * still referred to keeps them until the garbage collector frees the slab, like a chunk of Node's own.
 * Most reads thus reuse the same bytes of the same slab: no allocation, no page fault.
 */

/** As much as Node reads at once by default. */
const LANDING_BYTES = 64 * 1024;
/** Room for a few full reads, so a chunk kept by a slow reader rarely forces a new slab. */
const SLAB_BYTES = 256 * 1024;

/** Whom a socket's reads go to: an object rather than a closure, one closure less per socket (row f). */
export interface PooledReceiver {
  /**
   * Handles one read, copied out of the landing buffer. True when nothing refers to `chunk` any more (all of
   * it was written through and nothing of it is held), so its bytes may serve the next read.
   */
  receivePooled(chunk: Buffer): boolean;
}

interface ReadFields {
  buffer: symbol;
  callback: symbol;
  generator: symbol;
}

/** The symbols behind `onread`, or null when this Node keeps them elsewhere (then sockets emit 'data'). */
const fields: ReadFields | null = findReadFields();

function findReadFields(): ReadFields | null {
  try {
    // Typed for net.connect only, though the constructor reads it too.
    const probe = new net.Socket({ onread: { buffer: Buffer.alloc(1), callback: () => true } } as net.SocketConstructorOpts);
    const symbols = Object.getOwnPropertySymbols(probe);
    probe.destroy();
    const find = (name: string) => symbols.find((s) => s.description === name);
    const buffer = find('kBuffer');
    const callback = find('kBufferCb');
    const generator = find('kBufferGen');
    if (buffer === undefined || callback === undefined || generator === undefined) return null;
    return { buffer, callback, generator };
  } catch {
    return null;
  }
}

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

/** Whether a socket can be read this way: a plain TCP socket (TLS decrypts in a stream of its own) on a Node that has the fields. */
function adoptable(socket: Socket): boolean {
  const handle = (socket as unknown as { _handle?: { useUserBuffer?: unknown } | null })._handle;
  return fields !== null && !('encrypted' in socket) && handle != null && typeof handle.useUserBuffer === 'function';
}

/**
 * Makes `receiver` the socket's reader for every later read, until EOF ('end' and 'close' are emitted as
 * before, and `pause()`/`resume()` still stop and start reading). Bytes the stream buffered before the
 * switch stay where they are: the caller takes them with `socket.read()` first. Returns false, changing
 * nothing, when the socket cannot be read this way; its owner then listens for 'data'.
 */
export function readPooled(socket: Socket, receiver: PooledReceiver): boolean {
  if (!adoptable(socket)) return false;
  const f = fields!;
  landing ??= Buffer.allocUnsafeSlow(LANDING_BYTES);
  const target = socket as unknown as Record<symbol, unknown> & { _handle: { useUserBuffer(b: Buffer): void } };
  // A Node whose handle refuses the buffer keeps the socket as it was: reading with 'data' is slower, not wrong.
  try {
    target._handle.useUserBuffer(landing);
  } catch {
    return false;
  }
  target[f.buffer] = landing;
  target[f.generator] = null;
  target[f.callback] = (nread: number, into: Buffer): void => {
    const chunk = copyOut(into, nread);
    if (receiver.receivePooled(chunk)) release(chunk);
  };
  return true;
}
