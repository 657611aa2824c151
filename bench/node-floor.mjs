// The bench's `node-floor` setup: the least a Node process can do to relay a connection, as the floor that
// ws-guard's CPU and memory per connection are held against (docs/performance.md, finding 12).
//
// A TCP relay with nothing of ws-guard in it: no HTTP parsing (the upgrade goes through as bytes), no frame
// inspection, no timers, and after the accept and the dial not even a net.Socket. Both sockets' raw TCP
// handles are taken over: every read lands in one shared buffer, is copied into a slab (the bytes go back
// when the write completed at once) and is handed to the other handle's write. A write the kernel could not
// take at once stops reading the source until it completes, so memory stays bounded. Whatever Node costs
// per read and per write beyond this is out of reach of JavaScript.
//
// Usage: node bench/node-floor.mjs <listen port> <upstream port>   (both on 127.0.0.1)
import net from 'node:net';

const [listenPort, upstreamPort] = process.argv.slice(2).map(Number);
if (!(listenPort > 0 && upstreamPort > 0)) {
  process.stderr.write('usage: node bench/node-floor.mjs <listen port> <upstream port>\n');
  process.exit(2);
}

// The raw handles' own write requests and the state their reads report through (Node's stream_base).
const { WriteWrap, streamBaseState, kReadBytesOrError, kLastWriteWasAsync } = process.binding('stream_wrap');

const landing = Buffer.allocUnsafeSlow(64 * 1024);
const SLAB = 256 * 1024;
let slab = Buffer.allocUnsafeSlow(SLAB);
let top = 0;

function copyOut(n) {
  if (top + n > SLAB) {
    slab = Buffer.allocUnsafeSlow(SLAB);
    top = 0;
  }
  landing.copy(slab, top, 0, n);
  const chunk = slab.subarray(top, top + n);
  top += n;
  return chunk;
}

function close(pair) {
  if (pair.closed) return;
  pair.closed = true;
  pair.a.close();
  pair.b.close();
}

/** A write the kernel queued completed: the source may be read again. */
function written(status) {
  if (status < 0) close(this.pair);
  else if (!this.pair.closed) this.source.readStart();
}

function relay(from, to, pair) {
  from.useUserBuffer(landing);
  from.onread = () => {
    const n = streamBaseState[kReadBytesOrError];
    if (n < 0) return close(pair); // EOF or an error: the floor does no half-close
    if (n === 0) return;
    const chunk = copyOut(n);
    const req = new WriteWrap();
    req.handle = to;
    req.pair = pair;
    req.source = from;
    req.oncomplete = written;
    req.async = false;
    if (to.writeBuffer(req, chunk) !== 0) return close(pair);
    if (streamBaseState[kLastWriteWasAsync]) from.readStop();
    else if (chunk.byteOffset + n === top) top = chunk.byteOffset;
  };
  from.readStart();
}

/** The handle out of a socket, with the socket forgotten: from here on only the handle lives. */
function takeHandle(socket) {
  const handle = socket._handle;
  socket._handle = null;
  for (const key of Object.getOwnPropertySymbols(handle)) if (handle[key] === socket) delete handle[key];
  handle.setNoDelay(true);
  return handle;
}

net
  .createServer({ pauseOnConnect: true }, (client) => {
    const upstream = net.connect({ port: upstreamPort, host: '127.0.0.1' });
    upstream.pause();
    upstream.once('error', () => client.destroy());
    client.once('error', () => upstream.destroy());
    upstream.once('connect', () => {
      if (client.destroyed) return upstream.destroy();
      const pair = { a: takeHandle(client), b: takeHandle(upstream), closed: false };
      relay(pair.a, pair.b, pair);
      relay(pair.b, pair.a, pair);
    });
  })
  .listen(listenPort, '127.0.0.1');
