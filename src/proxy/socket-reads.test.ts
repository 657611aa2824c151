import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { frame, tcpPair } from '../../test/helpers/raw.js';
import { MESSAGE_OK } from '../frames/inspector.js';
import { HoldBudget } from '../limits/hold-budget.js';
import { Session, type SessionOptions } from './session.js';

/** The socket reads into the shared landing buffer (socket-reads.ts) instead of emitting 'data'. */
function readsPooled(socket: Socket): boolean {
  const callback = Object.getOwnPropertySymbols(socket).find((s) => s.description === 'kBufferCb');
  return callback !== undefined && typeof (socket as unknown as Record<symbol, unknown>)[callback] === 'function';
}

/** A session between two real TCP pairs: the test holds the client's and the app's ends. */
async function proxied(id: number, messageLimits?: SessionOptions['messageLimits']) {
  const client = await tcpPair();
  const upstream = await tcpPair();
  const session = new Session({
    id, client: client.ours, upstream: upstream.ours, clientHead: Buffer.alloc(0), upstreamHead: Buffer.alloc(0),
    compressed: false, closeTimeoutMs: 1000, expiresAt: undefined, messageLimits, clientNoContextTakeover: false,
    idleTimeoutMs: undefined, maxLifetimeMs: undefined, holdBudget: new HoldBudget(1 << 20),
  });
  return {
    client: client.theirs,
    app: upstream.theirs,
    /** The guard's leg to the app: where a write queues when the app does not read. */
    toApp: upstream.ours,
    pooled: readsPooled(client.ours) && readsPooled(upstream.ours),
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

async function until(done: () => boolean, what: string): Promise<void> {
  for (let waited = 0; !done(); waited += 5) {
    if (waited > 20_000) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** Binary frames of random bytes: no two stretches alike, so any overwritten byte shows. */
function randomFrames(count: number, payloadBytes: number): Buffer[] {
  return Array.from({ length: count }, () => frame({ opcode: 0x2, payload: randomBytes(payloadBytes) }));
}

describe('pooled socket reads', () => {
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
    await until(() => busyGot.length >= busyBytes.length, 'the busy connection');
    expect(Buffer.concat(busyGot.chunks).equals(busyBytes)).toBe(true);

    // Now the slow app reads: byte for byte what its client sent, nothing of the other connection's.
    const slowGot = received(slow.app);
    const slowBytes = Buffer.concat(sentSlow);
    await until(() => slowGot.length >= slowBytes.length, 'the slow connection');
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
    await until(() => busyGot.length >= busyBytes.length && throttledGot.length >= throttledBytes.length, 'both connections');
    expect(started).toBeGreaterThanOrEqual(40);
    expect(Buffer.concat(busyGot.chunks).equals(busyBytes)).toBe(true);
    expect(Buffer.concat(throttledGot.chunks).equals(throttledBytes)).toBe(true);

    await throttled.close();
    await busy.close();
  }, 60_000);
});
