// Benchmark upstream, raw variant: a WebSocket echo server that works per received chunk, not per
// message. It answers the upgrade, then for each chunk rewrites every (possibly partial) masked client
// frame into the matching unmasked server frame and writes the whole chunk's echo with ONE write. It
// costs far less CPU per message than the `ws` echo server when many messages arrive per chunk, so the
// saturation rows measure the proxy and not the upstream. Binary/text/continuation frames are echoed,
// ping is answered with pong, close is echoed and the socket ended.
// Usage: node bench/raw-upstream.mjs <port>; prints `ready <port>`; exits when stdin closes.
import { exitWithBench } from './proc.mjs';
import { createHash } from 'node:crypto';
import http from 'node:http';

const port = Number(process.argv[2] ?? 0);
const MAX_LIFETIME_MS = 15 * 60_000;
const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

/**
 * XORs buf[at, at+n) in place with the 4-byte mask starting at mask phase `mp`; returns the next phase.
 * Long runs go 32 bits at a time through an aligned Uint32Array view (little-endian, as on x86/arm64).
 */
function unmask(buf, at, n, mask, mp) {
  let i = 0;
  if (n >= 64) {
    while ((buf.byteOffset + at + i) & 3) {
      buf[at + i++] ^= mask[mp];
      mp = (mp + 1) & 3;
    }
    const words = (n - i) >>> 2;
    const word = (mask[mp] | (mask[(mp + 1) & 3] << 8) | (mask[(mp + 2) & 3] << 16) | (mask[(mp + 3) & 3] << 24)) >>> 0;
    if (word !== 0) {
      const view = new Uint32Array(buf.buffer, buf.byteOffset + at + i, words);
      for (let w = 0; w < words; w++) view[w] ^= word;
    }
    i += words * 4;
  }
  for (; i < n; i++) {
    buf[at + i] ^= mask[mp];
    mp = (mp + 1) & 3;
  }
  return mp;
}

class Echo {
  constructor(socket) {
    this.socket = socket;
    this.hdr = Buffer.alloc(14);
    this.hlen = 0;
    this.remaining = 0; // payload bytes left in the current frame
    this.inPayload = false;
    this.mask = Buffer.alloc(4);
    this.maskPos = 0;
    this.closing = false;
  }

  /** Writes into `out` at `o` the server header for a complete client header `h` at `at`; returns new `o`. */
  header(h, at, out, o) {
    const b0 = h[at];
    const b1 = h[at + 1];
    const l7 = b1 & 0x7f;
    let len = l7;
    let k = at + 2;
    if (l7 === 126) {
      len = h.readUInt16BE(k);
      k += 2;
    } else if (l7 === 127) {
      len = h.readUInt32BE(k) * 2 ** 32 + h.readUInt32BE(k + 4);
      k += 8;
    }
    const opcode = b0 & 0x0f;
    if (b1 & 0x80) {
      this.mask[0] = h[k];
      this.mask[1] = h[k + 1];
      this.mask[2] = h[k + 2];
      this.mask[3] = h[k + 3];
    } else this.mask.fill(0);
    this.maskPos = 0;
    this.remaining = len;
    this.inPayload = len > 0;
    if (opcode === 0x8) this.closing = true;
    out[o++] = opcode === 0x9 ? (b0 & 0xf0) | 0xa : b0; // ping -> pong
    out[o++] = l7;
    if (l7 === 126) {
      out[o++] = h[at + 2];
      out[o++] = h[at + 3];
    } else if (l7 === 127) {
      for (let i = 2; i < 10; i++) out[o++] = h[at + i];
    }
    return o;
  }

  /**
   * Echoes one received chunk. Headers and short payload pieces are rewritten into one scratch buffer;
   * long payload pieces are unmasked in place and written as they are (no copy). The writes of one
   * chunk are corked, so they leave in one writev.
   */
  onData(chunk) {
    const len = chunk.length;
    const socket = this.socket;
    let out = null;
    let o = 0;
    let flushed = 0;
    let pos = 0;
    socket.cork();
    while (pos < len) {
      if (this.inPayload) {
        const take = this.remaining < len - pos ? this.remaining : len - pos;
        if (take >= 1024) {
          if (o > flushed) {
            socket.write(out.subarray(flushed, o));
            flushed = o;
          }
          this.maskPos = unmask(chunk, pos, take, this.mask, this.maskPos);
          socket.write(chunk.subarray(pos, pos + take));
        } else {
          out ??= Buffer.allocUnsafe(len + 14);
          chunk.copy(out, o, pos, pos + take);
          this.maskPos = unmask(out, o, take, this.mask, this.maskPos);
          o += take;
        }
        pos += take;
        this.remaining -= take;
        if (this.remaining === 0) this.inPayload = false;
        continue;
      }
      out ??= Buffer.allocUnsafe(len + 14);
      if (this.hlen === 0 && len - pos >= 2) {
        const b1 = chunk[pos + 1];
        const l7 = b1 & 0x7f;
        const hs = (l7 < 126 ? 2 : l7 === 126 ? 4 : 10) + (b1 & 0x80 ? 4 : 0);
        if (len - pos >= hs) {
          o = this.header(chunk, pos, out, o);
          pos += hs;
          continue;
        }
      }
      // A header split across chunks: collect it byte by byte.
      while (pos < len) {
        this.hdr[this.hlen++] = chunk[pos++];
        if (this.hlen >= 2) {
          const b1 = this.hdr[1];
          const l7 = b1 & 0x7f;
          const hs = (l7 < 126 ? 2 : l7 === 126 ? 4 : 10) + (b1 & 0x80 ? 4 : 0);
          if (this.hlen === hs) {
            this.hlen = 0;
            o = this.header(this.hdr, 0, out, o);
            break;
          }
        }
      }
    }
    if (o > flushed) socket.write(out.subarray(flushed, o));
    socket.uncork();
    if (this.closing && !this.inPayload) socket.end();
  }
}

const server = http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/plain' });
  res.end('bench raw upstream\n');
});
server.on('upgrade', (req, socket, head) => {
  const key = req.headers['sec-websocket-key'];
  if (typeof key !== 'string' || (req.headers.upgrade ?? '').toLowerCase() !== 'websocket') {
    socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
    return;
  }
  const accept = createHash('sha1').update(key + GUID).digest('base64');
  socket.setNoDelay(true);
  socket.on('error', () => socket.destroy());
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
  const echo = new Echo(socket);
  socket.on('data', (chunk) => echo.onData(chunk));
  socket.on('end', () => socket.end());
  if (head.length > 0) echo.onData(head);
});

exitWithBench(MAX_LIFETIME_MS);

server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`ready ${server.address().port}\n`);
});
