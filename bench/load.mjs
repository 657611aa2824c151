// Benchmark load generator: a raw-socket WebSocket client (no `ws`), so that it costs as little CPU as
// possible. Frames are binary, masked with one fixed key and built once; echoed frames are only counted
// (header parsing, no payload copy). The CPU and RSS of the process(es) under test are read from /proc by
// this process at the exact edges of the measured window.
//
// Usage: node bench/load.mjs '<json options>'   (spawned by bench/run.mjs)
//   common:  { mode, port, pids: [..proxy pids..], otherPids: [..upstream pid..], proxyCpus, loadCpus }
//            (the taskset lists the proxy and the rest are pinned to: the CPU other processes took on
//            them in the window is reported, the noise of a shared machine)
//   rate:    { size, rate, conns, warmupMs, durationMs }          fixed offered rate, latency + CPU
//   pipe:    { size, conns, depth, warmupMs, durationMs }         saturation, `depth` in flight per conn
//   idle:    { conns, concurrency, settleMs }                     RSS per idle connection
//   http:    { conns, rate, warmupMs, durationMs, upstreamPort }                plain HTTP/1.1 keep-alive GETs, one in
//            flight per connection; rate 0: saturation (each answer is followed at once by the next
//            request), rate N: N req/s offered (a request waits for a free connection if none is idle)
//   handshake: { conns, rate, warmupMs, durationMs }   short-lived WebSockets: connect, upgrade, closing
//            handshake, TCP close; rate N: N upgrades/s offered with at most `conns` connections alive
//            (past that a due upgrade waits), rate 0: closed loop, `conns` connections at all times
//   with any mode: { storePids: [..redis-server pid..], storePort } the limit store, read like the proxy
//            (its CPU) plus the scripts it ran (INFO commandstats) over the measured window
// Prints exactly one JSON line with the result on stdout (progress on stderr), then exits.
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { readFileSync } from 'node:fs';
import { CLK_TCK, cpuMicros, cpuMicrosSum, cpuSplitMicros, minorFaults, rssKiBSum } from './proc.mjs';

const opts = JSON.parse(process.argv[2]);
const HOST = '127.0.0.1';
const MAX_LIFETIME_MS = 10 * 60_000;
setTimeout(() => fail(new Error('load generator lifetime cap reached')), MAX_LIFETIME_MS).unref();
process.stdin.on('end', () => process.exit(3));
process.stdin.on('error', () => process.exit(3));
process.stdin.resume();

/** Chunks ('data' events) received by all connections: reads per echoed message tell how the path batches. */
let chunksReceived = 0;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function fail(err) {
  process.stderr.write(`load: ${err.stack ?? err}\n`);
  process.exit(2);
}

/** One masked binary frame of `size` payload bytes, pre-masked with a fixed key. */
function maskedFrame(size) {
  const hs = size < 126 ? 2 : size < 65536 ? 4 : 10;
  const frame = Buffer.alloc(hs + 4 + size);
  frame[0] = 0x82;
  if (size < 126) frame[1] = 0x80 | size;
  else if (size < 65536) {
    frame[1] = 0x80 | 126;
    frame.writeUInt16BE(size, 2);
  } else {
    frame[1] = 0x80 | 127;
    frame.writeUInt32BE(Math.floor(size / 2 ** 32), 2);
    frame.writeUInt32BE(size >>> 0, 6);
  }
  const key = Buffer.from([0x37, 0xfa, 0x21, 0x3d]);
  key.copy(frame, hs);
  for (let i = 0; i < size; i++) frame[hs + 4 + i] = (i * 31 + 7) & 0xff ^ key[i & 3];
  return frame;
}

/** `count` copies of a frame back to back, so k frames are written as one subarray. */
function frameBatch(size, count) {
  const one = maskedFrame(size);
  const batch = Buffer.alloc(one.length * count);
  for (let i = 0; i < count; i++) one.copy(batch, i * one.length);
  return { batch, frameLength: one.length };
}

/**
 * A raw WebSocket connection: handshake, then counts server frames. `onFrames(n)` is called once per
 * received chunk with the number of frames it completed.
 */
class Conn {
  constructor(socket) {
    this.socket = socket;
    this.remaining = 0; // payload bytes left in the current frame
    this.hdr = Buffer.alloc(14);
    this.hlen = 0;
    this.inFrame = false;
    this.frames = 0;
    this.closed = false;
    this.onFrames = null;
    this.sendTimes = []; // FIFO of send timestamps (rate mode)
    this.head = 0;
  }

  /** Counts complete frames in `chunk`; returns how many it completed. */
  parse(chunk) {
    const len = chunk.length;
    let pos = 0;
    let done = 0;
    while (pos < len) {
      if (this.inFrame) {
        const avail = len - pos;
        if (this.remaining <= avail) {
          pos += this.remaining;
          this.remaining = 0;
          this.inFrame = false;
          done++;
        } else {
          this.remaining -= avail;
          pos = len;
        }
        continue;
      }
      let buf = chunk;
      let at = pos;
      if (this.hlen === 0 && len - pos >= 2) {
        const l7 = chunk[pos + 1] & 0x7f;
        const hs = l7 < 126 ? 2 : l7 === 126 ? 4 : 10;
        if (len - pos < hs) {
          // fall through to the slow path
        } else {
          pos += hs;
          this.startFrame(buf, at);
          if (!this.inFrame) done++;
          continue;
        }
      }
      // Slow path: header split across chunks.
      while (pos < len) {
        this.hdr[this.hlen++] = chunk[pos++];
        if (this.hlen >= 2) {
          const l7 = this.hdr[1] & 0x7f;
          const hs = l7 < 126 ? 2 : l7 === 126 ? 4 : 10;
          if (this.hlen === hs) {
            this.hlen = 0;
            this.startFrame(this.hdr, 0);
            if (!this.inFrame) done++;
            break;
          }
        }
      }
    }
    return done;
  }

  startFrame(buf, at) {
    const b0 = buf[at];
    if ((b0 & 0x0f) === 0x8) {
      this.closed = true;
      this.socket.destroy();
    }
    if (buf[at + 1] & 0x80) fail(new Error('masked frame from server'));
    const l7 = buf[at + 1] & 0x7f;
    const plen = l7 < 126 ? l7 : l7 === 126 ? buf.readUInt16BE(at + 2) : buf.readUInt32BE(at + 2) * 2 ** 32 + buf.readUInt32BE(at + 6);
    this.remaining = plen;
    this.inFrame = plen > 0;
  }
}

/** Opens a WebSocket connection with a raw HTTP/1.1 upgrade. */
function connect(port) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: HOST, port, noDelay: true });
    const conn = new Conn(socket);
    let head = Buffer.alloc(0);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error('handshake timeout'));
    }, 15_000);
    const onError = (err) => {
      clearTimeout(timer);
      reject(err);
    };
    socket.once('error', onError);
    socket.once('connect', () => {
      socket.write(
        `GET /bench HTTP/1.1\r\nHost: ${HOST}:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n` +
          (opts.authorization ? `Authorization: Bearer ${opts.authorization}\r\n` : '') +
          '\r\n',
      );
    });
    const onHead = (chunk) => {
      head = head.length === 0 ? chunk : Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      clearTimeout(timer);
      socket.off('data', onHead);
      socket.off('error', onError);
      const status = head.subarray(0, head.indexOf('\r\n')).toString('latin1');
      if (!/^HTTP\/1\.1 101 /.test(status)) {
        socket.destroy();
        reject(new Error(`upgrade refused: ${status}`));
        return;
      }
      socket.on('error', () => {});
      socket.on('close', () => {
        conn.closed = true;
      });
      socket.on('data', (data) => {
        chunksReceived++;
        const n = conn.parse(data);
        if (n > 0) {
          conn.frames += n;
          conn.onFrames?.(n);
        }
      });
      const rest = head.subarray(end + 4);
      if (rest.length > 0) conn.frames += conn.parse(rest);
      resolve(conn);
    };
    socket.on('data', onHead);
  });
}

async function connectMany(port, count, concurrency) {
  const conns = new Array(count);
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      conns[i] = await connect(port);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  return conns;
}

/** The CPUs of a taskset list such as "0", "0,2" or "1-3". */
function cpuList(list) {
  return String(list)
    .split(',')
    .flatMap((part) => {
      const [from, to = from] = part.split('-').map(Number);
      return Array.from({ length: to - from + 1 }, (_, i) => from + i);
    });
}

/**
 * Time the listed CPUs were not idle since boot (stolen time included), in microseconds, from /proc/stat.
 * Interrupt time counts: a tick that lands in a softirq is charged to the process it interrupted in
 * /proc/<pid>/stat as well, so the bench's own loopback work cancels out.
 */
function cpusBusyMicros(cpus) {
  let total = 0;
  for (const line of readFileSync('/proc/stat', 'utf8').split('\n')) {
    const m = /^cpu(\d+) (.*)$/.exec(line);
    if (!m || !cpus.includes(Number(m[1]))) continue;
    const [user, nice, system, , , irq, softirq, steal] = m[2].trim().split(/\s+/).map(Number);
    total += user + nice + system + irq + softirq + steal;
  }
  return (total * 1e6) / CLK_TCK;
}
const PROXY_CPUS = opts.proxyCpus === undefined ? null : cpuList(opts.proxyCpus);
const LOAD_CPUS = opts.loadCpus === undefined ? null : cpuList(opts.loadCpus);

function snapshot() {
  return {
    t: performance.now(),
    proxy: cpuMicrosSum(opts.pids ?? []),
    proxySys: (opts.pids ?? []).reduce((sum, pid) => sum + cpuSplitMicros(pid)[1], 0),
    proxyFaults: (opts.pids ?? []).reduce((sum, pid) => sum + minorFaults(pid), 0),
    other: cpuMicrosSum(opts.otherPids ?? []),
    store: cpuMicrosSum(opts.storePids ?? []),
    self: cpuMicros(process.pid),
    proxyCores: PROXY_CPUS ? cpusBusyMicros(PROXY_CPUS) : 0,
    loadCores: LOAD_CPUS ? cpusBusyMicros(LOAD_CPUS) : 0,
  };
}

/**
 * Scripts (EVAL, EVALSHA) the limit store (redis-server) has run, from `INFO commandstats` on a connection
 * of its own, or null without a store. ws-guard sends Redis nothing but scripts, so this is its round
 * trips; the commands inside a script are counted apart by Redis, and INFO itself is not a script.
 */
function storeScripts() {
  if (!opts.storePort) return Promise.resolve(null);
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: HOST, port: opts.storePort });
    let text = '';
    socket.setEncoding('latin1');
    socket.setTimeout(5000, () => socket.destroy(new Error('redis INFO: no answer within 5 s')));
    socket.once('error', reject);
    socket.once('connect', () => socket.write('INFO commandstats\r\n'));
    socket.on('data', (d) => {
      text += d;
      // One RESP bulk string: $<length>\r\n<body>\r\n
      const eol = text.indexOf('\r\n');
      if (eol < 0 || text.length < eol + 2 + Number(text.slice(1, eol)) + 2) return;
      socket.destroy();
      if (!text.startsWith('$')) reject(new Error(`redis INFO: unexpected answer ${text.slice(0, 80)}`));
      else resolve([...text.matchAll(/^cmdstat_eval\w*:calls=(\d+)/gm)].reduce((sum, m) => sum + Number(m[1]), 0));
    });
  });
}

/** The store's CPU and scripts per message (or request, or upgrade) over the window; {} without a store. */
function storeReport(a, b, before, after, messages) {
  if (!opts.storePids?.length) return {};
  return {
    storeUsPerMsg: (b.store - a.store) / messages,
    storeBusy: (b.store - a.store) / ((b.t - a.t) * 1000),
    storeScriptsPerMsg: before === null ? null : (after - before) / messages,
  };
}

function cpuReport(a, b, messages) {
  const wallUs = (b.t - a.t) * 1000;
  const proxyUs = b.proxy - a.proxy;
  const core1Us = b.other - a.other + (b.store - a.store) + (b.self - a.self);
  return {
    upstreamBusy: (b.other - a.other) / wallUs,
    loadBusy: (b.self - a.self) / wallUs,
    windowS: wallUs / 1e6,
    messages,
    proxyCpuUs: proxyUs,
    proxyUsPerMsg: opts.pids?.length ? proxyUs / messages : null,
    proxyBusy: opts.pids?.length ? proxyUs / wallUs : null,
    proxySysShare: opts.pids?.length && proxyUs > 0 ? (b.proxySys - a.proxySys) / proxyUs : null,
    proxyFaultsPerMsg: opts.pids?.length ? (b.proxyFaults - a.proxyFaults) / messages : null,
    // upstream + the store (if any) + this load generator, all pinned to the other core
    core1Busy: core1Us / wallUs,
    // what processes outside the bench took of the proxy's core(s) and of the other one(s)
    foreignProxyCore: PROXY_CPUS ? (b.proxyCores - a.proxyCores - proxyUs) / wallUs : null,
    foreignLoadCore: LOAD_CPUS ? (b.loadCores - a.loadCores - core1Us) / wallUs : null,
  };
}

function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/**
 * The measured window of a load mode, once it has warmed up: Redis's script count and the /proc readings at
 * its edges. `mark(true)` runs just before the first reading and `mark(false)` just after the last, for what
 * the mode counts only inside the window.
 */
async function measuredWindow(mark) {
  const s0 = await storeScripts();
  mark(true);
  const a = snapshot();
  await sleep(opts.durationMs);
  const b = snapshot();
  mark(false);
  const s1 = await storeScripts();
  return { a, b, s0, s1 };
}

async function rateMode() {
  const { port, size, rate, conns: nConns, warmupMs, durationMs } = opts;
  const conns = await connectMany(port, nConns, 64);
  const MAX_BATCH = 64;
  const { batch, frameLength } = frameBatch(size, MAX_BATCH);
  const capacity = Math.ceil((rate * durationMs) / 1000 * 1.5) + 1024;
  const rtts = new Float64Array(capacity);
  let nRtt = 0;
  let recording = false;
  let windowEchoes = 0;
  let inWindow = false;
  let outstanding = 0;

  for (const conn of conns) {
    conn.onFrames = (n) => {
      const now = performance.now();
      outstanding -= n;
      if (inWindow) windowEchoes += n;
      for (let i = 0; i < n; i++) {
        const sent = conn.sendTimes[conn.head++];
        // A negative time marks a message sent outside the recorded window.
        if (sent >= 0 && nRtt < capacity) rtts[nRtt++] = now - sent;
      }
      if (conn.head === conn.sendTimes.length) {
        conn.sendTimes.length = 0;
        conn.head = 0;
      }
    };
  }

  const pending = new Int32Array(nConns);
  let sent = 0;
  let rr = 0;
  let sending = true;
  const t0 = performance.now();
  const tick = () => {
    if (!sending) return;
    const now = performance.now();
    let due = Math.floor(((now - t0) * rate) / 1000) - sent;
    if (due <= 0) return;
    sent += due;
    while (due-- > 0) {
      pending[rr]++;
      rr = rr + 1 === nConns ? 0 : rr + 1;
    }
    const stamp = recording ? now : -1;
    for (let i = 0; i < nConns; i++) {
      let k = pending[i];
      if (k === 0) continue;
      pending[i] = 0;
      const conn = conns[i];
      while (k > 0) {
        const m = k > MAX_BATCH ? MAX_BATCH : k;
        conn.socket.write(m === MAX_BATCH ? batch : batch.subarray(0, m * frameLength));
        for (let j = 0; j < m; j++) conn.sendTimes.push(stamp);
        outstanding += m;
        k -= m;
      }
    }
  };
  const interval = setInterval(tick, 1);

  await sleep(warmupMs);
  const { a, b, s0, s1 } = await measuredWindow((open) => {
    recording = open;
    inWindow = open;
    if (open) windowEchoes = 0;
  });
  const echoes = windowEchoes;
  const recorded = nRtt;
  sending = false;
  clearInterval(interval);
  // Let the messages still in flight come back so that every recorded send has its round trip.
  const drainUntil = performance.now() + 5000;
  while (outstanding > 0 && performance.now() < drainUntil) await sleep(10);
  const sorted = rtts.slice(0, nRtt).sort();
  for (const conn of conns) conn.socket.destroy();
  return {
    ...cpuReport(a, b, echoes),
    ...storeReport(a, b, s0, s1, echoes),
    offeredRate: rate,
    achievedRate: echoes / ((b.t - a.t) / 1000),
    lost: outstanding,
    rttSamples: sorted.length,
    recordedBeforeDrain: recorded,
    p50Ms: percentile(sorted, 50),
    p99Ms: percentile(sorted, 99),
    p999Ms: percentile(sorted, 99.9),
    maxMs: sorted[sorted.length - 1],
  };
}

async function pipeMode() {
  const { port, size, conns: nConns, depth, warmupMs, durationMs } = opts;
  const conns = await connectMany(port, nConns, 64);
  const { batch, frameLength } = frameBatch(size, depth);
  let running = true;
  let echoes = 0;
  let outstanding = 0;
  for (const conn of conns) {
    conn.onFrames = (n) => {
      echoes += n;
      outstanding -= n;
      if (running) {
        conn.socket.write(n === depth ? batch : batch.subarray(0, n * frameLength));
        outstanding += n;
      }
    };
  }
  for (const conn of conns) {
    conn.socket.write(batch);
    outstanding += depth;
  }
  await sleep(warmupMs);
  const s0 = await storeScripts();
  const e0 = echoes;
  const c0 = chunksReceived;
  const a = snapshot();
  await sleep(durationMs);
  const b = snapshot();
  const messages = echoes - e0;
  const chunks = chunksReceived - c0;
  const s1 = await storeScripts();
  running = false;
  const drainUntil = performance.now() + 5000;
  while (outstanding > 0 && performance.now() < drainUntil) await sleep(10);
  for (const conn of conns) conn.socket.destroy();
  const seconds = (b.t - a.t) / 1000;
  return {
    ...cpuReport(a, b, messages),
    ...storeReport(a, b, s0, s1, messages),
    msgPerS: messages / seconds,
    // echoed payload per second (each byte crossed the proxy twice: in and back out)
    mbPerS: (messages * size) / seconds / 1e6,
    // reads by the client per echoed message, and the mean size of one read
    readsPerMsg: chunks / messages,
    bytesPerRead: (messages * size) / chunks,
    lost: outstanding,
  };
}

async function idleMode() {
  const { port, conns: nConns, concurrency, settleMs } = opts;
  const pids = opts.pids ?? [];
  // Warm-up: a few connections that exchange a message and close, so lazily loaded code and first-use
  // allocations are in the "before" figure, not spread over the idle connections.
  const warm = await connectMany(port, 20, 20);
  const { batch } = frameBatch(64, 1);
  await Promise.all(
    warm.map(
      (conn) =>
        new Promise((resolve) => {
          conn.onFrames = resolve;
          conn.socket.write(batch);
        }),
    ),
  );
  for (const conn of warm) conn.socket.destroy();
  await sleep(settleMs);
  const before = rssKiBSum(pids);
  const t = performance.now();
  const conns = await connectMany(port, nConns, concurrency);
  const openMs = performance.now() - t;
  await sleep(settleMs);
  const after = rssKiBSum(pids);
  // Check they are all still alive and proxied: one message each, all echoed.
  let echoed = 0;
  await new Promise((resolve) => {
    const deadline = setTimeout(resolve, 10_000);
    for (const conn of conns) {
      conn.onFrames = (n) => {
        echoed += n;
        if (echoed === nConns) {
          clearTimeout(deadline);
          resolve();
        }
      };
      conn.socket.write(batch);
    }
  });
  // Diagnosis only (not used by run.mjs): keep the connections open a while, e.g. for a heap snapshot.
  if (opts.holdMs) {
    process.stderr.write(`holding ${nConns} connections for ${opts.holdMs} ms\n`);
    await sleep(opts.holdMs);
  }
  for (const conn of conns) conn.socket.destroy();
  return {
    conns: nConns,
    openMs,
    rssBeforeKiB: before,
    rssAfterKiB: after,
    kibPerConn: (after - before) / nConns,
    stillEchoing: echoed,
  };
}


/**
 * One keep-alive HTTP/1.1 client connection with at most one request in flight (no pipelining). The
 * request is built once; answers are parsed far enough to find their end (Content-Length or chunked).
 */
class HttpConn {
  constructor(port, request, onAnswer, onGone) {
    this.port = port;
    this.request = request;
    this.onAnswer = onAnswer; // (conn, status) after each complete answer
    this.onGone = onGone; // (conn, err) when the connection closes
    this.buf = null; // unparsed bytes of the current answer
    this.sentAt = 0;
    this.busy = false;
    this.ready = false;
    this.socket = null;
  }

  open() {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: HOST, port: this.port, noDelay: true });
      this.socket = socket;
      socket.once('connect', () => {
        this.ready = true;
        resolve(this);
      });
      socket.on('error', (err) => {
        if (!this.ready) reject(err);
      });
      socket.on('close', () => {
        const wasReady = this.ready;
        this.ready = false;
        if (wasReady) this.onGone(this);
      });
      socket.on('data', (chunk) => {
        chunksReceived++;
        this.buf = this.buf === null ? chunk : Buffer.concat([this.buf, chunk]);
        this.parse();
      });
    });
  }

  send() {
    this.busy = true;
    this.sentAt = performance.now();
    this.socket.write(this.request);
  }

  /** Consumes one complete answer from `buf` if there is one. */
  parse() {
    const buf = this.buf;
    const end = buf.indexOf('\r\n\r\n');
    if (end < 0) return;
    const head = buf.latin1Slice(0, end);
    const status = Number(head.slice(9, 12));
    let bodyEnd;
    const cl = /\r\ncontent-length:[ \t]*(\d+)/i.exec(head);
    if (cl) {
      bodyEnd = end + 4 + Number(cl[1]);
      if (buf.length < bodyEnd) return;
    } else if (/\r\ntransfer-encoding:[^\r]*chunked/i.test(head)) {
      let at = end + 4;
      for (;;) {
        const eol = buf.indexOf('\r\n', at);
        if (eol < 0) return;
        const size = parseInt(buf.latin1Slice(at, eol), 16);
        at = eol + 2 + size + 2;
        if (buf.length < at) return;
        if (size === 0) break; // no trailers are expected
      }
      bodyEnd = at;
    } else fail(new Error(`answer without a length: ${head.split('\r\n')[0]}`));
    if (bodyEnd !== buf.length) fail(new Error(`unexpected bytes after an answer (${buf.length - bodyEnd})`));
    this.buf = null;
    this.busy = false;
    if (/\r\nconnection:[ \t]*close/i.test(head)) {
      // The server will close: this connection is done; run.mjs reports the reconnects.
      this.ready = false;
      this.socket.destroy();
      this.onAnswer(this, status, true);
      return;
    }
    this.onAnswer(this, status, false);
  }
}

/** [connections accepted, requests answered] by bench/http-upstream.mjs, not counting this query. */
function upstreamStats(port) {
  return new Promise((resolve, reject) => {
    http
      .get({ host: HOST, port, path: '/_stats', agent: false }, (res) => {
        let text = '';
        res.setEncoding('latin1');
        res.on('data', (d) => (text += d));
        res.on('end', () => {
          const [c, r] = text.trim().split(' ').map(Number);
          resolve([c - 1, r - 1]);
        });
      })
      .on('error', reject);
  });
}

async function httpMode() {
  const { port, conns: nConns, rate = 0, warmupMs } = opts;
  const request = Buffer.from(
    `GET ${opts.path ?? '/bench'} HTTP/1.1\r\nHost: ${HOST}:${port}\r\n` + (opts.authorization ? `Authorization: Bearer ${opts.authorization}\r\n` : '') + '\r\n',
    'latin1',
  );
  const capacity = 4_000_000;
  const lat = new Float64Array(capacity);
  let nLat = 0;
  let inWindow = false;
  let answers = 0; // all answers (warm-up included)
  let windowAnswers = 0;
  let bad = 0; // answers other than 200
  let firstBad = 0;
  let reconnects = 0;
  let running = true;
  let backlog = 0; // rate mode: requests due but not yet sent (no idle connection)
  let outstanding = 0;
  const idle = []; // rate mode: connections with nothing in flight

  const next = (conn) => {
    if (!running || !conn.ready) return;
    if (rate === 0) {
      conn.send();
      outstanding++;
    } else if (backlog > 0) {
      backlog--;
      conn.send();
      outstanding++;
    } else idle.push(conn);
  };
  const replace = (conn) => {
    reconnects++;
    const fresh = new HttpConn(port, request, onAnswer, onGone);
    fresh.open().then(next, (err) => fail(err));
    conns[conns.indexOf(conn)] = fresh;
  };
  const onAnswer = (conn, status, closing) => {
    const now = performance.now();
    outstanding--;
    answers++;
    if (status !== 200) {
      bad++;
      firstBad ||= status;
    }
    if (inWindow) {
      windowAnswers++;
      if (nLat < capacity) lat[nLat++] = now - conn.sentAt;
    }
    if (closing) replace(conn);
    else next(conn);
  };
  const onGone = (conn) => {
    if (!running) return;
    if (conn.busy) {
      outstanding--;
      if (rate !== 0) backlog++;
    }
    const i = idle.indexOf(conn);
    if (i >= 0) idle.splice(i, 1);
    replace(conn);
  };

  const conns = [];
  for (let i = 0; i < nConns; i++) conns.push(await new HttpConn(port, request, onAnswer, onGone).open());

  let interval = null;
  if (rate === 0) for (const conn of conns) next(conn);
  else {
    for (const conn of conns) idle.push(conn);
    let sent = 0;
    const t0 = performance.now();
    interval = setInterval(() => {
      let due = Math.floor(((performance.now() - t0) * rate) / 1000) - sent;
      sent += due;
      while (due > 0 && idle.length > 0) {
        const conn = idle.pop();
        if (!conn.ready) continue;
        conn.send();
        outstanding++;
        due--;
      }
      backlog += due;
    }, 1);
  }

  await sleep(warmupMs);
  const c0 = chunksReceived;
  const up0 = opts.upstreamPort ? await upstreamStats(opts.upstreamPort) : null;
  const { a, b, s0, s1 } = await measuredWindow((open) => {
    inWindow = open;
  });
  const up1 = opts.upstreamPort ? await upstreamStats(opts.upstreamPort) : null;
  const chunks = chunksReceived - c0;
  running = false;
  if (interval) clearInterval(interval);
  const drainUntil = performance.now() + 5000;
  while (outstanding > 0 && performance.now() < drainUntil) await sleep(10);
  for (const conn of conns) conn.socket.destroy();
  if (answers === 0) throw new Error('no answer at all');
  if (bad > 0 && bad === answers) throw new Error(`every answer had status ${firstBad} (is the route authenticated?)`);
  const sorted = lat.slice(0, nLat).sort();
  const seconds = (b.t - a.t) / 1000;
  return {
    ...cpuReport(a, b, windowAnswers),
    ...storeReport(a, b, s0, s1, windowAnswers),
    reqPerS: windowAnswers / seconds,
    offeredRate: rate || undefined,
    achievedRate: rate ? windowAnswers / seconds : undefined,
    conns: nConns,
    notOk: bad,
    firstNotOk: firstBad || undefined,
    reconnects,
    backlogAtEnd: backlog,
    lost: outstanding,
    readsPerReq: chunks / windowAnswers,
    // upstream connections opened per request in the window (about 0 when the path keeps them alive;
    // the stats queries themselves are not counted)
    upstreamConnsPerReq: up0 && up1 ? (up1[0] - up0[0] - 1) / windowAnswers : undefined,
    upstreamRequests: up0 && up1 ? up1[1] - up0[1] - 1 : undefined,
    p50Ms: percentile(sorted, 50),
    p99Ms: percentile(sorted, 99),
  };
}

/** A masked close frame, status 1000, as a client ends a WebSocket. */
const CLOSE_FRAME = (() => {
  const key = [0x37, 0xfa, 0x21, 0x3d];
  const payload = [0x03, 0xe8];
  return Buffer.from([0x88, 0x80 | payload.length, ...key, ...payload.map((b, i) => b ^ key[i])]);
})();

/**
 * The upgrade every client of rows h and i sends: one prebuilt request (a fixed Sec-WebSocket-Key: the server
 * computes the accept all the same), with the token where the setup has auth.
 */
function upgradeRequest(port) {
  return Buffer.from(
    `GET /bench HTTP/1.1\r\nHost: ${HOST}:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n` +
      (opts.authorization ? `Authorization: Bearer ${opts.authorization}\r\n` : '') +
      '\r\n',
    'latin1',
  );
}

/**
 * Short-lived WebSockets, one after the other: connect, upgrade (latency: from the connect call to the
 * 101's blank line), a close frame, and the wait for the server to end TCP, as RFC 6455 has it. The CPU
 * per upgrade therefore covers a whole short connection: upgrade, the dial and the upstream's 101, the
 * closing handshake and the teardown. Every upgrade carries the same prebuilt request (a fixed
 * Sec-WebSocket-Key: the server computes the accept all the same).
 */
async function handshakeMode() {
  const { port, conns: maxConns, rate = 0, warmupMs } = opts;
  const request = upgradeRequest(port);
  const capacity = 1_000_000;
  const lat = new Float64Array(capacity);
  let nLat = 0;
  let inWindow = false;
  let windowUpgrades = 0;
  let alive = 0; // connections started and not yet closed
  let failed = 0; // no 101 (refused, reset, timeout)
  let firstFailure = '';
  let slowCloses = 0; // the server had not ended TCP 5 s after the close frame
  let running = true;
  let backlog = 0; // rate mode: upgrades due while `maxConns` were alive

  const next = () => {
    if (!running) return;
    if (rate === 0) one();
    else if (backlog > 0) {
      backlog--;
      one();
    }
  };
  const one = () => {
    alive++;
    const t0 = performance.now();
    const socket = net.connect({ host: HOST, port, noDelay: true });
    let head = '';
    let upgraded = false;
    let done = false;
    const finish = (failure) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      alive--;
      if (failure) {
        failed++;
        firstFailure ||= failure;
      }
      next();
    };
    let timer = setTimeout(() => finish('no 101 within 15 s'), 15_000);
    socket.once('connect', () => socket.write(request));
    socket.on('error', (err) => finish(upgraded ? undefined : err.code ?? err.message));
    socket.on('close', () => finish(upgraded ? undefined : 'closed before the 101'));
    socket.on('data', (chunk) => {
      if (upgraded) return; // the server's close frame; its FIN follows
      head += chunk.latin1Slice(0, chunk.length);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      const now = performance.now();
      const status = head.slice(0, head.indexOf('\r\n'));
      if (!/^HTTP\/1\.1 101 /.test(status)) {
        finish(status);
        return;
      }
      upgraded = true;
      if (inWindow) {
        windowUpgrades++;
        if (nLat < capacity) lat[nLat++] = now - t0;
      }
      clearTimeout(timer);
      timer = setTimeout(() => {
        slowCloses++;
        finish();
      }, 5000);
      socket.write(CLOSE_FRAME);
    });
  };

  let interval = null;
  if (rate === 0) for (let i = 0; i < maxConns; i++) one();
  else {
    let due = 0;
    const t0 = performance.now();
    interval = setInterval(() => {
      const now = Math.floor(((performance.now() - t0) * rate) / 1000);
      backlog += now - due;
      due = now;
      while (backlog > 0 && alive < maxConns) {
        backlog--;
        one();
      }
    }, 1);
  }

  await sleep(warmupMs);
  const { a, b, s0, s1 } = await measuredWindow((open) => {
    inWindow = open;
  });
  running = false;
  if (interval) clearInterval(interval);
  const drainUntil = performance.now() + 10_000;
  while (alive > 0 && performance.now() < drainUntil) await sleep(10);
  if (windowUpgrades === 0) throw new Error(`no upgrade completed in the window (first failure: ${firstFailure || 'none'})`);
  const sorted = lat.slice(0, nLat).sort();
  const seconds = (b.t - a.t) / 1000;
  return {
    ...cpuReport(a, b, windowUpgrades),
    ...storeReport(a, b, s0, s1, windowUpgrades),
    upgradesPerS: windowUpgrades / seconds,
    offeredRate: rate || undefined,
    achievedRate: rate ? windowUpgrades / seconds : undefined,
    unit: 'upgrades/s',
    conns: maxConns,
    failed,
    firstFailure: firstFailure || undefined,
    slowCloses,
    stuck: alive,
    backlogAtEnd: backlog,
    p50Ms: percentile(sorted, 50),
    p99Ms: percentile(sorted, 99),
    maxMs: sorted[sorted.length - 1],
  };
}

/**
 * Row i, a reconnect storm: `conns` clients (5,000 by default) start their upgrade at the same moment, as
 * after a deploy or a network blip, each with the same prebuilt request (and token, where the setup has
 * auth), and keep the connection. Measured from the first connect to the last answer: upgrades per second,
 * failures by reason (no 101 within 30 s, refused, reset), latency, and the proxy's CPU per upgrade.
 */
async function stormMode() {
  const { port, conns: n } = opts;
  const request = upgradeRequest(port);
  const lat = new Float64Array(n);
  let ok = 0;
  let pending = n;
  const failures = {};
  const sockets = [];
  let allDone;
  const finished = new Promise((resolve) => (allDone = resolve));
  const a = snapshot();
  const t0 = performance.now();
  let tEnd = t0;
  for (let i = 0; i < n; i++) {
    const started = performance.now();
    const socket = net.connect({ host: HOST, port, noDelay: true });
    sockets.push(socket);
    let head = '';
    let done = false;
    const finish = (failure) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (failure) {
        failures[failure] = (failures[failure] ?? 0) + 1;
        socket.destroy();
      }
      tEnd = performance.now();
      if (--pending === 0) allDone();
    };
    const timer = setTimeout(() => finish('no 101 within 30 s'), 30_000);
    socket.once('connect', () => socket.write(request));
    socket.on('error', (err) => finish(err.code ?? err.message));
    socket.on('close', () => finish('closed before the 101'));
    socket.on('data', (chunk) => {
      if (done) return;
      head += chunk.latin1Slice(0, chunk.length);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      const status = head.slice(0, head.indexOf('\r\n'));
      if (!/^HTTP\/1\.1 101 /.test(status)) return finish(status);
      lat[ok++] = performance.now() - started;
      finish();
    });
  }
  await finished;
  const b = snapshot();
  b.t = tEnd;
  for (const socket of sockets) socket.destroy();
  await sleep(500);
  const sorted = lat.slice(0, ok).sort();
  const failed = Object.values(failures).reduce((x, y) => x + y, 0);
  return {
    ...cpuReport(a, b, ok),
    upgradesPerS: ok / ((tEnd - t0) / 1000),
    unit: 'upgrades/s',
    conns: n,
    failed,
    failures,
    seconds: (tEnd - t0) / 1000,
    p50Ms: percentile(sorted, 50),
    p99Ms: percentile(sorted, 99),
    maxMs: sorted[sorted.length - 1],
  };
}

const modes = { rate: rateMode, pipe: pipeMode, idle: idleMode, http: httpMode, handshake: handshakeMode, storm: stormMode };
modes[opts.mode]()
  .then((result) => {
    process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0));
  })
  .catch(fail);
