import net from 'node:net';
import { once } from 'node:events';
import { describe, expect, it } from 'vitest';
import { HoldBudget } from '../limits/hold-budget.js';
import { Session, type SessionEnd } from './session.js';

/** Two connected TCP sockets on 127.0.0.1: the guard's end and the peer's. */
async function pair(): Promise<{ ours: net.Socket; theirs: net.Socket; close: () => void }> {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const ours = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  const [theirs] = (await once(server, 'connection')) as [net.Socket];
  await once(ours, 'connect');
  return { ours, theirs, close: () => server.close() };
}

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
});
