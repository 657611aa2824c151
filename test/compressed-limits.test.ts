import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { open } from './helpers/clients.js';
import { startTestGuard, until, type TestGuard } from './helpers/guard.js';
import { runPyClient, startUpstream, type Upstream } from './helpers/upstream.js';

// messageSize on a permessage-deflate connection is enforced on the inflated size: compressed messages are
// held until they are measured, and only then forwarded as the original bytes.
let upstream: Upstream;
let guard: TestGuard;
let n = 0;
const tag = () => `deflate-${process.pid}-${++n}`;

beforeAll(async () => {
  upstream = await startUpstream();
  guard = await startTestGuard({ upstream: upstream.url, limits: { messageSize: '1MiB' } });
});
afterAll(async () => {
  await guard?.close();
  await upstream?.stop();
});

describe('messageSize with permessage-deflate', () => {
  it('passes compressed messages within the limit, in order, across the shared compression context', async () => {
    const t = tag();
    const result = await runPyClient(`${guard.wsUrl}/ws/echo?tag=${t}`, 'echo', '100');
    expect(result).toMatchObject({ ok: true, replies_in_order: true });
    expect(result.extensions).toMatch(/permessage-deflate/);
    expect(await runPyClient(`${guard.wsUrl}/ws/echo?tag=${tag()}`, 'big', String(1024 * 1024))).toMatchObject({ ok: true });
  });

  it('closes with 1009 a small compressed message that inflates past the limit; the upstream never sees it', async () => {
    const t = tag();
    const ws = await open(`${guard.wsUrl}/ws/echo?tag=${t}`, undefined, { perMessageDeflate: true });
    expect(ws.extensions).toMatch(/permessage-deflate/);
    ws.send('before');
    await new Promise((resolve) => ws.once('message', resolve));
    const closed = new Promise<number>((resolve) => ws.once('close', resolve));
    ws.send(Buffer.alloc(16 * 1024 * 1024));
    expect(await closed).toBe(1009);
    await until(async () => (await upstream.seen(t)).some((e) => e.type === 'ws_disconnect'));
    const seen = await upstream.seen(t);
    expect(seen.filter((e) => e.type === 'ws_text' || e.type === 'ws_bytes')).toEqual([expect.objectContaining({ type: 'ws_text', data: 'before' })]);
    expect(seen.find((e) => e.type === 'ws_disconnect')).toMatchObject({ code: 1009 });
  });

  it('one byte over the limit inflated is refused, exactly at the limit passes', async () => {
    const t = tag();
    const ws = await open(`${guard.wsUrl}/ws/echo?tag=${t}`, undefined, { perMessageDeflate: true });
    ws.send(Buffer.alloc(1024 * 1024, 7));
    const echo = await new Promise<Buffer>((resolve) => ws.once('message', (d: Buffer) => resolve(d)));
    expect(echo.length).toBe(1024 * 1024);
    const closed = new Promise<number>((resolve) => ws.once('close', resolve));
    ws.send(Buffer.alloc(1024 * 1024 + 1, 7));
    expect(await closed).toBe(1009);
  });
});
