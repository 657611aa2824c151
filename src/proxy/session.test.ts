import { once } from 'node:events';
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../test/helpers/manual-clock.js';
import { tcpPair as pair } from '../../test/helpers/raw.js';
import { HoldBudget } from '../limits/hold-budget.js';
import { Session, type SessionEnd } from './session.js';

describe('Session', () => {
  it('ends (and so gives its slot back) even when a leg closed before the session was built', async () => {
    const client = await pair();
    const upstream = await pair();
    upstream.ours.destroy();
    await once(upstream.ours, 'close');
    const session = new Session({
      id: 1, client: client.ours, upstream: upstream.ours, clientHead: Buffer.alloc(0), upstreamHead: Buffer.alloc(0),
      compressed: false, closeTimeoutMs: 200, expiresAt: undefined, messageLimits: undefined, clientNoContextTakeover: false,
      idleTimeoutMs: undefined, maxLifetimeMs: undefined, holdBudget: new HoldBudget(1024),
    });
    const [end] = (await once(session, 'end')) as [SessionEnd];
    expect(end.id).toBe(1);
    client.theirs.destroy();
    client.close();
    upstream.theirs.destroy();
    upstream.close();
  });

  it('runs its deadlines on the injected clock: no data frame for 1.25× idleTimeout closes both sides with 1001', async () => {
    const clock = new ManualClock();
    const client = await pair();
    const upstream = await pair();
    const session = new Session({
      id: 2, client: client.ours, upstream: upstream.ours, clientHead: Buffer.alloc(0), upstreamHead: Buffer.alloc(0),
      compressed: false, closeTimeoutMs: 200, expiresAt: undefined, messageLimits: undefined, clientNoContextTakeover: false,
      idleTimeoutMs: 1000, maxLifetimeMs: undefined, holdBudget: new HoldBudget(1024), clock,
    });
    const fromGuard = once(client.theirs, 'data') as Promise<[Buffer]>;
    const toUpstream = once(upstream.theirs, 'data') as Promise<[Buffer]>;
    clock.advance(1249);
    expect([client.ours.writableEnded, upstream.ours.writableEnded]).toEqual([false, false]);
    clock.advance(1);
    expect([client.ours.writableEnded, upstream.ours.writableEnded]).toEqual([true, true]);
    const [toClient] = await fromGuard;
    expect([toClient[0], toClient.readUInt16BE(2)]).toEqual([0x88, 1001]);
    const [masked] = await toUpstream;
    expect([masked[0], masked[1]! & 0x80, ((masked[6]! ^ masked[2]!) << 8) | (masked[7]! ^ masked[3]!)]).toEqual([0x88, 0x80, 1001]);
    const ended = once(session, 'end') as Promise<[SessionEnd]>;
    client.theirs.destroy();
    upstream.theirs.destroy();
    const [end] = await ended;
    expect({ closedBy: end.closedBy, closeCode: end.closeCode, reason: end.reason }).toEqual({ closedBy: 'guard', closeCode: 1001, reason: 'IDLE_TIMEOUT' });
    client.close();
    upstream.close();
  });
});
