// limits.controlFrames against the real FastAPI upstream (whose websockets library answers every ping):
// a ping flood is closed with 1008 and the app answers no more pings than the bucket let through; a
// normal client next to it is unaffected; a close always goes through; `off` switches the limit off.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ERRORS } from '../src/errors.js';
import { nextMessage, open } from './helpers/clients.js';
import { startTestGuard, until, type TestGuard } from './helpers/guard.js';
import { Op, closePayload, frame, rawConnect, untilClose, upgradeRequest, type Frame, type RawConn } from './helpers/raw.js';
import { startUpstream, type Upstream } from './helpers/upstream.js';

let upstream: Upstream;
let count = 0;
const tag = (what: string) => `control-${process.pid}-${++count}-${what}`;
const cleanups: (() => unknown)[] = [];

beforeAll(async () => {
  upstream = await startUpstream();
});
afterEach(async () => {
  for (const undo of cleanups.splice(0).reverse()) await undo();
});
afterAll(async () => {
  await upstream?.stop();
});

async function guardWith(config: Record<string, unknown>): Promise<TestGuard> {
  const g = await startTestGuard({ upstream: upstream.url, ...config });
  cleanups.push(() => g.close());
  return g;
}

async function upgraded(g: TestGuard, t: string): Promise<RawConn> {
  const conn = await rawConnect(g.port);
  cleanups.push(() => conn.destroy());
  conn.write(upgradeRequest(`/ws/echo?tag=${t}`));
  expect((await conn.readHttpResponse()).status).toBe(101);
  return conn;
}

async function upstreamCloseCode(t: string): Promise<number> {
  await until(async () => (await upstream.seen(t)).some((e) => e.type === 'ws_disconnect'), 5000, `the upstream to see ${t} end`);
  return (await upstream.seen(t)).find((e) => e.type === 'ws_disconnect').code as number;
}

const pings = (n: number) => Buffer.concat(Array.from({ length: n }, (_, i) => frame({ opcode: Op.PING, payload: `p${i}` })));

describe('limits.controlFrames', () => {
  it('default (100/s, burst 200): 5,000 pings at once → 1008 CONTROL_FRAME_RATE; the app answered at most burst + rate × t; a client beside it is unaffected', async () => {
    const g = await guardWith({});
    const t = tag('flood');
    const bystander = await open(`${g.wsUrl}/ws/echo?tag=${tag('bystander')}`);
    cleanups.push(() => bystander.terminate());

    const conn = await upgraded(g, t);
    const started = Date.now();
    conn.write(pings(5000));
    const { frames, close } = await untilClose(conn);
    const seconds = (Date.now() - started) / 1000;
    expect({ code: close.closeCode, reason: close.closeReason }).toEqual({ code: 1008, reason: ERRORS.CONTROL_FRAME_RATE.message });
    const pongs = frames.filter((f) => f.opcode === Op.PONG);
    expect(pongs).toHaveLength(frames.length);
    // Every pong answers a ping the guard let through: the first 200 at once, then at most 100 a second.
    expect(pongs.length).toBeLessThanOrEqual(200 + Math.ceil(100 * seconds));
    expect(pongs.length).toBeGreaterThanOrEqual(200);
    expect(pongs.map((p) => p.payload.toString())).toEqual(pongs.map((_, i) => `p${i}`));
    expect(await upstreamCloseCode(t)).toBe(1008);
    await until(() => g.logs.some((l) => l.msg === 'connection closed' && l.reason === 'CONTROL_FRAME_RATE'));
    expect(g.logs.find((l) => l.msg === 'connection closed' && l.reason === 'CONTROL_FRAME_RATE')).toMatchObject({ closeCode: 1008, closedBy: 'guard' });

    // The connection next to it never noticed.
    const reply = nextMessage(bystander);
    bystander.send('still here');
    expect(String((await reply).data)).toBe('still here');
    let pongsBack = 0;
    bystander.on('pong', () => pongsBack++);
    for (let i = 0; i < 50; i++) bystander.ping();
    await until(() => pongsBack === 50, 5000, '50 pongs on the other connection');
  });

  it('the bucket refills: 40 pings a second for 1 s at 50/s, burst 10, all answered; 100 at once → 1008', async () => {
    const g = await guardWith({ limits: { controlFrames: { rate: '50/s', burst: 10 } } });
    const t = tag('paced');
    const conn = await upgraded(g, t);
    for (let i = 0; i < 10; i++) {
      conn.write(pings(4));
      for (let k = 0; k < 4; k++) expect((await conn.readFrame()).opcode).toBe(Op.PONG);
      await new Promise((r) => setTimeout(r, 100));
    }
    conn.write(pings(100));
    const { frames, close } = await untilClose(conn);
    expect(close.closeCode).toBe(1008);
    expect(frames.length).toBeLessThanOrEqual(20);
    expect(await upstreamCloseCode(t)).toBe(1008);
  });

  it('a close is never refused: after the burst is spent, the client\'s close still ends the connection normally', async () => {
    const g = await guardWith({ limits: { controlFrames: { rate: '1/minute', burst: 3 } } });
    const t = tag('close');
    const conn = await upgraded(g, t);
    conn.write(Buffer.concat([pings(3), frame({ opcode: Op.CLOSE, payload: closePayload(1000) })]));
    const { frames, close } = await untilClose(conn);
    expect(frames.map((f) => f.opcode)).toEqual([Op.PONG, Op.PONG, Op.PONG]);
    expect(close.closeCode).toBe(1000);
    expect(await upstreamCloseCode(t)).toBe(1000);
  });

  it('per route: a route with `controlFrames: off` answers a flood; the top-level limit still holds elsewhere', async () => {
    const g = await guardWith({
      limits: { controlFrames: { rate: '10/s', burst: 20 } },
      routes: [{ path: '/ws/echo', limits: { controlFrames: 'off' } }],
    });
    const t = tag('off');
    const ws = await open(`${g.wsUrl}/ws/echo?tag=${t}`);
    cleanups.push(() => ws.terminate());
    let pongs = 0;
    ws.on('pong', () => pongs++);
    for (let i = 0; i < 1000; i++) ws.ping();
    await until(() => pongs === 1000, 10_000, '1000 pongs');

    const conn = await rawConnect(g.port);
    cleanups.push(() => conn.destroy());
    conn.write(upgradeRequest('/ws/push?bytes=0'));
    expect((await conn.readHttpResponse()).status).toBe(101);
    conn.write(pings(100));
    const { close } = await untilClose(conn);
    expect(close.closeCode).toBe(1008);
  });
});
