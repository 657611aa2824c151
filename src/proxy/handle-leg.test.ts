import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import net, { type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { caseRng, until, type Rng } from '../../test/helpers/fuzz.js';
import { frame, tcpPair } from '../../test/helpers/raw.js';
import { MESSAGE_OK } from '../frames/inspector.js';
import { HoldBudget } from '../limits/hold-budget.js';
import { HandleLeg, takeLeg, type Leg } from './handle-leg.js';
import { Session, type SessionOptions } from './session.js';

/** A session between two real TCP pairs, each guard-side socket taken over as a handle leg; the test holds the client's and the app's ends. */
async function proxied(id: number, messageLimits?: SessionOptions['messageLimits']) {
  const client = await tcpPair();
  const upstream = await tcpPair();
  const toClient = takeLeg(client.ours);
  const toApp = takeLeg(upstream.ours);
  const session = new Session({
    id, client: toClient, upstream: toApp, clientHead: Buffer.alloc(0), upstreamHead: Buffer.alloc(0),
    compressed: false, closeTimeoutMs: 1000, expiresAt: undefined, messageLimits, clientNoContextTakeover: false,
    idleTimeoutMs: undefined, maxLifetimeMs: undefined, holdBudget: new HoldBudget(1 << 20),
  });
  return {
    client: client.theirs,
    app: upstream.theirs,
    /** The guard's legs to the app and to the client: where a write queues when that peer does not read. */
    toApp,
    toClient,
    pooled: toClient instanceof HandleLeg && toApp instanceof HandleLeg,
    async close(): Promise<void> {
      const ended = once(session, 'end');
      client.theirs.destroy();
      upstream.theirs.destroy();
      await ended;
      client.close();
      upstream.close();
    },
  };
}

/** Everything a socket receives, from now on. */
function received(socket: Socket): { chunks: Buffer[]; length: number } {
  const got = { chunks: [] as Buffer[], length: 0 };
  socket.on('data', (chunk: Buffer) => {
    got.chunks.push(chunk);
    got.length += chunk.length;
  });
  return got;
}

/** Binary frames of random bytes: no two stretches alike, so any overwritten byte shows. */
function randomFrames(count: number, payloadBytes: number): Buffer[] {
  return Array.from({ length: count }, () => frame({ opcode: 0x2, payload: randomBytes(payloadBytes) }));
}

/** A payload size: mostly small, some mid-sized, a few larger than one read. */
function size(rng: Rng): number {
  return rng.weighted([[4, () => rng.int(126)], [3, () => rng.range(126, 4096)], [3, () => rng.range(4097, 65_536)]] as const)();
}

/** Writes the frames in bursts of 1–8 per write, with short random gaps. */
async function writeInBursts(socket: Socket, frames: Buffer[], rng: Rng): Promise<void> {
  for (let i = 0; i < frames.length;) {
    const n = rng.range(1, 8);
    socket.write(Buffer.concat(frames.slice(i, i + n)));
    i += n;
    if (rng.chance(0.5)) await sleep(rng.int(3));
  }
}

/** `n` seeded pseudo-random bytes, a word at a time (xorshift32): megabytes of them stay cheap. */
function noise(rng: Rng, n: number): Buffer {
  const out = Buffer.alloc(n + 3);
  let x = rng.range(1, 0x7fffffff);
  for (let i = 0; i < n; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out.writeInt32LE(x | 0, i);
  }
  return out.subarray(0, n);
}

/**
 * Stops reading the socket at random until `done()`: each stall lasts until the guard's write to this peer
 * (`writer`, the guard's socket) is queued, or at most 300 ms. Returns how many stalls saw it queued.
 */
async function stallAtRandom(socket: Socket, writer: Leg, rng: Rng, done: () => boolean): Promise<number> {
  let queued = 0;
  while (!done()) {
    await sleep(rng.range(1, 15));
    socket.pause();
    for (let waited = 0; writer.writableLength === 0 && waited < 300 && !done(); waited++) await sleep(1);
    if (writer.writableLength > 0) queued++;
    await sleep(rng.int(5));
    socket.resume();
  }
  return queued;
}

describe('handle legs and their pooled reads', () => {
  it('never overwrite a read whose bytes are still queued on the other socket, while other connections read on', async () => {
    const slow = await proxied(1);
    const busy = await proxied(2);
    expect([slow.pooled, busy.pooled]).toEqual([true, true]);

    // The slow app reads nothing yet: the kernel's buffers towards it fill, then the guard's write queues.
    const sentSlow: Buffer[] = [];
    while (slow.toApp.writableLength === 0) {
      if (sentSlow.length > 4096) throw new Error('64 MiB sent and the guard never queued a write');
      for (const f of randomFrames(64, 16 * 1024)) {
        sentSlow.push(f);
        slow.client.write(f);
      }
      await sleep(20);
    }

    // Meanwhile another connection's reads go through the same landing buffer and slab, many times over.
    const busyGot = received(busy.app);
    const sentBusy = randomFrames(512, 8 * 1024);
    for (const f of sentBusy) busy.client.write(f);
    const busyBytes = Buffer.concat(sentBusy);
    await until(() => busyGot.length >= busyBytes.length, 20_000, 'the busy connection');
    expect(Buffer.concat(busyGot.chunks).equals(busyBytes)).toBe(true);

    // Now the slow app reads: byte for byte what its client sent, nothing of the other connection's.
    const slowGot = received(slow.app);
    const slowBytes = Buffer.concat(sentSlow);
    await until(() => slowGot.length >= slowBytes.length, 20_000, 'the slow connection');
    expect(Buffer.concat(slowGot.chunks).equals(slowBytes)).toBe(true);

    await slow.close();
    await busy.close();
  }, 60_000);

  it('keep the rest of a read a throttle holds back while other connections read on', async () => {
    // Every other message waits 20 ms for its token, so the rest of the read it came in is kept meanwhile.
    let started = 0;
    const onMessageStart = () => (started++ % 2 === 0 ? MESSAGE_OK : 20);
    const throttled = await proxied(3, { maxMessageBytes: Infinity, maxFragments: Infinity, onMessageStart, onControlFrame: null });
    const busy = await proxied(4);
    const throttledGot = received(throttled.app);
    const busyGot = received(busy.app);
    expect([throttled.pooled, busy.pooled]).toEqual([true, true]);

    const sentThrottled: Buffer[] = [];
    const sentBusy: Buffer[] = [];
    for (let i = 0; i < 20; i++) {
      const pairOfMessages = Buffer.concat(randomFrames(2, 1024));
      sentThrottled.push(pairOfMessages);
      throttled.client.write(pairOfMessages);
      for (const f of randomFrames(16, 4096)) {
        sentBusy.push(f);
        busy.client.write(f);
      }
      await sleep(5);
    }
    const throttledBytes = Buffer.concat(sentThrottled);
    const busyBytes = Buffer.concat(sentBusy);
    await until(() => busyGot.length >= busyBytes.length && throttledGot.length >= throttledBytes.length, 20_000, 'both connections');
    expect(started).toBeGreaterThanOrEqual(40);
    expect(Buffer.concat(busyGot.chunks).equals(busyBytes)).toBe(true);
    expect(Buffer.concat(throttledGot.chunks).equals(throttledBytes)).toBe(true);

    await throttled.close();
    await busy.close();
  }, 60_000);

  it('carry the bytes of every connection unchanged both ways under random sizes, bursts and stalls (seeded)', async () => {
    const conns = await Promise.all([5, 6].map((id) => proxied(id)));
    expect(conns.map((c) => c.pooled)).toEqual([true, true]);
    let queued = 0;
    await Promise.all(conns.map(async (c, i) => {
      const rng = caseRng(i, 0x5ead);
      // About 6 MiB each way: more than the kernel's loopback buffers hold while a peer stalls.
      const up = Array.from({ length: 600 }, () => frame({ opcode: 0x2, payload: noise(rng, size(rng)) }));
      const down = Array.from({ length: 600 }, () => frame({ opcode: 0x2, mask: false, payload: noise(rng, size(rng)) }));
      const [upBytes, downBytes] = [Buffer.concat(up), Buffer.concat(down)];
      const atApp = received(c.app);
      const atClient = received(c.client);
      const done = () => atApp.length >= upBytes.length && atClient.length >= downBytes.length;
      const [, , atAppQueued, atClientQueued] = await Promise.all([
        writeInBursts(c.client, up, rng), writeInBursts(c.app, down, rng),
        stallAtRandom(c.app, c.toApp, rng, done), stallAtRandom(c.client, c.toClient, rng, done),
        until(done, 20_000, `connection ${i}`),
      ]);
      queued += atAppQueued + atClientQueued;
      expect(Buffer.concat(atApp.chunks).equals(upBytes), `connection ${i}, client to app`).toBe(true);
      expect(Buffer.concat(atClient.chunks).equals(downBytes), `connection ${i}, app to client`).toBe(true);
    }));
    // The case the pool must get right happened: a stalled peer left the guard's writes queued.
    expect(queued).toBeGreaterThan(0);
    for (const c of conns) await c.close();
  }, 60_000);
});

/** A connected pair whose guard side was accepted by a server with `allowHalfOpen` as given (http.Server's are). */
async function acceptedPair(allowHalfOpen: boolean): Promise<{ ours: Socket; theirs: Socket; server: net.Server }> {
  const server = net.createServer({ allowHalfOpen });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const theirs = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  const [ours] = (await once(server, 'connection')) as [Socket];
  await once(theirs, 'connect');
  return { ours, theirs, server };
}

/** A leg's events in order, and the bytes it read (copied: the slab's bytes are reused). */
function watch(leg: HandleLeg) {
  const seen: string[] = [];
  const got: Buffer[] = [];
  leg.on('error', (err: Error) => seen.push(`error ${(err as NodeJS.ErrnoException).code}`));
  leg.on('end', () => seen.push('end'));
  leg.on('close', () => seen.push('close'));
  leg.on('drain', () => seen.push('drain'));
  leg.readTo({ receivePooled: (chunk) => (got.push(Buffer.from(chunk)), true) });
  leg.resume();
  return { seen, got, bytes: () => Buffer.concat(got) };
}

function handleLeg(socket: Socket): HandleLeg {
  const leg = takeLeg(socket);
  if (!(leg instanceof HandleLeg)) throw new Error('the socket was not taken apart');
  return leg;
}

describe('HandleLeg', () => {
  it('takes over a quiet socket: the bytes it buffered come back, the socket is destroyed and its server stops counting it', async () => {
    const { ours, theirs, server } = await acceptedPair(true);
    theirs.write('early');
    await until(() => ours.readableLength === 5, 2000, 'the early bytes');
    const leg = takeLeg(ours);
    expect(leg).toBeInstanceOf(HandleLeg);
    expect(leg.readableLength).toBe(5);
    expect(String(leg.read())).toBe('early');
    expect([leg.readableLength, leg.read()]).toEqual([0, null]);
    expect(ours.destroyed).toBe(true);
    await until(() => new Promise<boolean>((resolve) => server.getConnections((_, n) => resolve(n === 0))), 2000, 'the server count');
    // The handle is still open, now the leg's: reads and writes go through it.
    const w = watch(leg as HandleLeg);
    theirs.write('late');
    await until(() => w.bytes().toString() === 'late', 2000, 'a read');
    const back = once(theirs, 'data') as Promise<[Buffer]>;
    expect(leg.write(Buffer.from('to you'))).toBe(true);
    expect((await back)[0].toString()).toBe('to you');
    leg.destroy();
    await until(() => w.seen.includes('close'), 2000, 'close');
    theirs.destroy();
    server.close();
  });

  it('leaves a socket it cannot take as it is: one with a write queued, or ended, is its own leg', async () => {
    const { ours, theirs, server } = await acceptedPair(true);
    ours.cork();
    ours.write('held');
    expect(takeLeg(ours)).toBe(ours);
    ours.uncork();
    ours.end();
    expect(takeLeg(ours)).toBe(ours);
    expect(ours.destroyed).toBe(false);
    theirs.destroy();
    ours.destroy();
    server.close();
  });

  it("leaves a socket whose peer's FIN was already read (before any 'end') as it is: the FIN still reaches its reader", async () => {
    const { ours, theirs, server } = await acceptedPair(true);
    theirs.end('last words');
    await until(() => (ours as unknown as { _readableState: { ended: boolean } })._readableState.ended, 2000, 'the FIN read');
    expect(ours.readableEnded).toBe(false);
    expect(takeLeg(ours)).toBe(ours);
    const got: Buffer[] = [];
    ours.on('data', (d: Buffer) => got.push(d));
    await once(ours, 'end');
    expect(Buffer.concat(got).toString()).toBe('last words');
    ours.destroy();
    server.close();
  });

  it('half-open (as http.Server sockets are): the peer\'s FIN is "end", writes still go out, and our FIN then closes', async () => {
    const { ours, theirs, server } = await acceptedPair(true);
    const leg = handleLeg(ours);
    const w = watch(leg);
    theirs.end('bye');
    await until(() => w.seen.includes('end'), 2000, 'end');
    expect([w.bytes().toString(), leg.readableEnded, leg.destroyed]).toEqual(['bye', true, false]);
    const rest = once(theirs, 'end');
    const got: Buffer[] = [];
    theirs.on('data', (d: Buffer) => got.push(d));
    leg.write(Buffer.from('still '));
    leg.end(Buffer.from('here'));
    await rest;
    expect(Buffer.concat(got).toString()).toBe('still here');
    await until(() => w.seen.includes('close'), 2000, 'close');
    expect(w.seen).toEqual(['end', 'close']);
    expect([leg.destroyed, leg.closed]).toEqual([true, true]);
    server.close();
  });

  it('not half-open (as a dialled upstream is): the peer\'s FIN is "end", answered with ours, then "close"', async () => {
    const { ours, theirs, server } = await acceptedPair(false);
    const leg = handleLeg(ours);
    const w = watch(leg);
    const finBack = once(theirs, 'end');
    theirs.resume();
    theirs.end();
    await finBack;
    await until(() => w.seen.includes('close'), 2000, 'close');
    expect(w.seen).toEqual(['end', 'close']);
    server.close();
  });

  it('either way, our FIN first then the peer\'s closes at once (not after some timer)', async () => {
    for (const allowHalfOpen of [true, false]) {
      const { ours, theirs, server } = await acceptedPair(allowHalfOpen);
      const leg = handleLeg(ours);
      const w = watch(leg);
      theirs.on('end', () => theirs.end());
      theirs.resume();
      leg.end(Buffer.from('bye'));
      await until(() => w.seen.includes('close'), 1000, `close (allowHalfOpen ${allowHalfOpen})`);
      expect(w.seen).toEqual(['end', 'close']);
      server.close();
    }
  });

  it('a write after our FIN fails the leg as it fails a net.Socket: "error" ERR_STREAM_WRITE_AFTER_END, then "close"', async () => {
    const { ours, theirs, server } = await acceptedPair(true);
    const leg = handleLeg(ours);
    const w = watch(leg);
    leg.end(Buffer.from('done'));
    expect(leg.write(Buffer.from('more'))).toBe(false);
    await until(() => w.seen.includes('close'), 2000, 'close');
    expect(w.seen).toEqual(['error ERR_STREAM_WRITE_AFTER_END', 'close']);
    theirs.destroy();
    server.close();
  });

  it('a reset is "error" with its code, then "close"', async () => {
    const { ours, theirs, server } = await acceptedPair(true);
    const leg = handleLeg(ours);
    const w = watch(leg);
    theirs.resetAndDestroy();
    await until(() => w.seen.includes('close'), 2000, 'close');
    expect(w.seen).toEqual(['error ECONNRESET', 'close']);
    expect(leg.write(Buffer.from('x'))).toBe(false);
    server.close();
  });

  it('write says false past 16 KiB queued while the peer does not read, and "drain" comes once it has read', async () => {
    const { ours, theirs, server } = await acceptedPair(true);
    const leg = handleLeg(ours);
    const w = watch(leg);
    theirs.pause();
    const chunk = randomBytes(64 * 1024);
    let sent = 0;
    while (leg.write(chunk)) {
      sent += chunk.length;
      if (sent > 256 * 1024 * 1024) throw new Error('the kernel took 256 MiB and never queued a write');
    }
    sent += chunk.length;
    expect(leg.writableLength).toBeGreaterThanOrEqual(16 * 1024);
    let received = 0;
    theirs.on('data', (d: Buffer) => (received += d.length));
    theirs.resume();
    await until(() => w.seen.includes('drain'), 10_000, 'drain');
    expect(leg.writableLength).toBe(0);
    await until(() => received === sent, 10_000, 'every byte');
    leg.destroy();
    theirs.destroy();
    server.close();
  });

  it('destroyed with writes still queued: "close" once, no "error", and the queued writes are dropped', async () => {
    const { ours, theirs, server } = await acceptedPair(true);
    const leg = handleLeg(ours);
    const w = watch(leg);
    theirs.pause();
    const chunk = randomBytes(64 * 1024);
    while (leg.write(chunk));
    leg.destroy();
    leg.destroy();
    await until(() => w.seen.includes('close'), 2000, 'close');
    await sleep(20);
    expect(w.seen).toEqual(['close']);
    theirs.destroy();
    server.close();
  });
});
