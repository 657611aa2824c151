import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closed, freePort, nextMessage, open } from './helpers/clients.js';
import { startTestGuard, until, type TestGuard } from './helpers/guard.js';
import { rawConnect, upgradeRequest } from './helpers/raw.js';
import { startUpstream, type Upstream } from './helpers/upstream.js';

let upstream: Upstream;
let guard: TestGuard;

beforeAll(async () => {
  upstream = await startUpstream();
  guard = await startTestGuard({
    upstream: upstream.url,
    admin: '127.0.0.1:0',
    limits: { connections: { total: 10 } },
    routes: [{ path: '/ws/close', limits: { connections: { total: 4 } } }],
  });
});
afterAll(async () => {
  await guard?.close();
  await upstream?.stop();
});

const get = async (path: string, via = guard) => {
  const res = await fetch(`${via.adminUrl}${path}`);
  return { status: res.status, body: await res.text() };
};

/** The value of one sample line of the Prometheus text, e.g. `ws_guard_closes_total{code="1000",...}`. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return undefined;
}

describe('admin listener', () => {
  it('/healthz and /readyz answer 200 while the upstream accepts TCP', async () => {
    expect(await get('/healthz')).toEqual({ status: 200, body: 'ok\n' });
    expect(await get('/readyz')).toEqual({ status: 200, body: 'ready\n' });
  });

  it('/readyz answers 503 when the upstream is down', async () => {
    const down = await startTestGuard({ upstream: `http://127.0.0.1:${await freePort()}`, admin: '127.0.0.1:0' });
    try {
      expect(await get('/readyz', down)).toEqual({ status: 503, body: 'upstream unreachable\n' });
      expect((await get('/healthz', down)).status).toBe(200);
    } finally {
      await down.close();
    }
  });

  it('/readyz answers 503 while draining', async () => {
    const g = await startTestGuard({ upstream: upstream.url, admin: '127.0.0.1:0', timeouts: { drain: '5s' } });
    try {
      const ws = await open(`${g.wsUrl}/ws/echo`);
      const wsClosed = closed(ws);
      const draining = g.guard.drain();
      expect(await get('/readyz', g)).toEqual({ status: 503, body: 'draining\n' });
      expect((await wsClosed).code).toBe(1001);
      await draining;
    } finally {
      await g.close();
    }
  });

  it('/metrics counts connections, messages, bytes, closes, refusals, handshakes and slot usage', async () => {
    const ws = await open(`${guard.wsUrl}/ws/echo`);
    for (let i = 0; i < 3; i++) {
      ws.send(`m${i}`);
      await nextMessage(ws);
    }
    const live = (await get('/metrics')).body;
    expect(sample(live, 'ws_guard_connections_active', { route: '/' })).toBe(1);
    expect(sample(live, 'ws_guard_messages_total', { direction: 'client_to_upstream' })).toBe(3);
    expect(sample(live, 'ws_guard_messages_total', { direction: 'upstream_to_client' })).toBe(3);
    expect(sample(live, 'ws_guard_bytes_total', { direction: 'client_to_upstream' })).toBeGreaterThan(0);
    expect(sample(live, 'ws_guard_slot_usage_ratio', { pool: '(all)' })).toBe(0.1);
    ws.close(4321);
    await closed(ws);

    const conn = await rawConnect(guard.port);
    conn.write(upgradeRequest('/ws/echo', { 'Sec-WebSocket-Version': '8' }));
    expect((await conn.readHttpResponse()).status).toBe(426);
    conn.destroy();

    await until(async () => sample((await get('/metrics')).body, 'ws_guard_connections_active', { route: '/' }) === 0);
    const after = (await get('/metrics')).body;
    expect(sample(after, 'ws_guard_messages_total', { direction: 'client_to_upstream' })).toBe(3);
    expect(sample(after, 'ws_guard_connections_opened_total', { route: '/' })).toBe(1);
    expect(sample(after, 'ws_guard_closes_total', { code: '4321', closed_by: 'client' })).toBe(1);
    expect(sample(after, 'ws_guard_rejections_total', { reason: 'BAD_VERSION', status: '426' })).toBe(1);
    expect(sample(after, 'ws_guard_handshake_duration_seconds_count', { outcome: 'accepted' })).toBe(1);
    expect(sample(after, 'ws_guard_handshake_duration_seconds_count', { outcome: 'refused' })).toBe(1);
    expect(after).toMatch(/^ws_guard_process_resident_memory_bytes /m);
  });

  it('reports a route with its own pool', async () => {
    const ws = await open(`${guard.wsUrl}/ws/close?code=4000&reason=x`);
    const metrics = (await get('/metrics')).body;
    expect(sample(metrics, 'ws_guard_connections_active', { route: '/ws/close' })).toBeLessThanOrEqual(1);
    await closed(ws);
  });
});
