import { SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../src/config/load.js';
import {
  CLOSE_CODE_LABELS, CLOSED_BY_LABELS, REASON_LABELS, STATUS_LABELS,
} from '../src/ops/metrics.js';
import { closed, freePort, nextMessage, open } from './helpers/clients.js';
import { startTestGuard, until, type TestGuard } from './helpers/guard.js';
import { closePayload, frame, Op, rawConnect, upgradeRequest } from './helpers/raw.js';
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
    // A client-chosen private-use code is counted as its range, never as itself.
    expect(sample(after, 'ws_guard_closes_total', { code: '4xxx', closed_by: 'client' })).toBe(1);
    expect(after).not.toContain('4321');
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

/** Every sample of the Prometheus text: metric name and labels. */
function series(text: string): { name: string; labels: Record<string, string> }[] {
  const out: { name: string; labels: Record<string, string> }[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+$/.exec(line);
    if (m === null) throw new Error(`not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const [, k, v] of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[k!] = v!;
    out.push({ name: m[1]!, labels });
  }
  return out;
}

describe('metric labels are bounded (client-chosen close codes, paths, headers and claims never make a series)', () => {
  const SECRET = 'metrics-labels-secret-long-enough-for-hs256-0123456789';
  /** Appears in paths, queries, headers and claims; must never appear in /metrics. */
  const MARK = 'zqmark';
  const BASE = { admin: '127.0.0.1:0' };
  let g: TestGuard;
  const metrics = async () => (await fetch(`${g.adminUrl}/metrics`)).text();
  const totalCloses = (text: string) =>
    text.split('\n').filter((l) => l.startsWith('ws_guard_closes_total{')).reduce((n, l) => n + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);

  beforeAll(async () => {
    g = await startTestGuard({
      ...BASE,
      upstream: upstream.url,
      routes: [
        { path: '/ws/close' },
        { path: '/ws/push', auth: { jwt: { secret: SECRET, algorithms: ['HS256'], requiredClaims: ['sub'], forwardClaims: { sub: 'X-Auth-Sub' } } } },
      ],
    });
  });
  afterAll(async () => {
    await g?.close();
  });

  /** Runs `one` for 0..n-1, `width` at a time: 2 shared cores and a single-process upstream. */
  async function batched(n: number, width: number, one: (i: number) => Promise<void>): Promise<void> {
    for (let start = 0; start < n; start += width) {
      await Promise.all(Array.from({ length: Math.min(width, n - start) }, (_, k) => one(start + k)));
    }
  }

  it('~300 connections to the real app closing with 3000+i, 4000+i and 5000+i stay within the fixed code set', async () => {
    const headers = { 'X-Trace': `${MARK}-header`, 'User-Agent': `${MARK}-agent` };
    // 3000+i and 4000+i: valid to send, through the ws client.
    await batched(200, 25, async (i) => {
      const code = i < 100 ? 3000 + i : 4000 + (i - 100);
      const ws = await open(`${g.wsUrl}/ws/echo?tag=${MARK}-${i}&x=${MARK}`, undefined, { headers });
      const done = closed(ws);
      ws.close(code, `${MARK}-reason`);
      await done;
    });
    // 5000+i: outside the range a client may send, so a raw close frame.
    await batched(100, 25, async (i) => {
      const conn = await rawConnect(g.port);
      try {
        conn.write(upgradeRequest(`/ws/echo?tag=${MARK}-raw-${i}`, headers));
        expect((await conn.readHttpResponse()).status).toBe(101);
        conn.write(frame({ opcode: Op.CLOSE, payload: closePayload(5000 + i, `${MARK}-reason`) }));
        await conn.waitClosed();
      } finally {
        conn.destroy();
      }
    });
    // And codes the app chose: 3000+i / 4000+i from the upstream side.
    await batched(20, 10, async (i) => {
      const ws = await open(`${g.wsUrl}/ws/close?code=${i < 10 ? 3100 + i : 4100 + i}&reason=${MARK}`);
      await closed(ws);
    });
    await until(async () => totalCloses(await metrics()) === 320, 10_000, 'all 320 closes counted');

    const text = await metrics();
    const closes = series(text).filter((s) => s.name === 'ws_guard_closes_total');
    // Before the fix: one series per distinct code, 300+ of them.
    expect(closes.length).toBeLessThanOrEqual(12);
    expect(closes.length).toBeLessThanOrEqual(CLOSE_CODE_LABELS.length * CLOSED_BY_LABELS.length);
    for (const s of closes) {
      expect(CLOSE_CODE_LABELS).toContain(s.labels.code);
      expect(CLOSED_BY_LABELS).toContain(s.labels.closed_by);
    }
    expect(sample(text, 'ws_guard_closes_total', { code: '3xxx', closed_by: 'client' })).toBe(100);
    expect(sample(text, 'ws_guard_closes_total', { code: '4xxx', closed_by: 'client' })).toBe(98);
    // 4001 and 4003 are the guard's own codes (token refused, claims insufficient): kept as they are.
    expect(sample(text, 'ws_guard_closes_total', { code: '4001', closed_by: 'client' })).toBe(1);
    expect(sample(text, 'ws_guard_closes_total', { code: '4003', closed_by: 'client' })).toBe(1);
    expect(sample(text, 'ws_guard_closes_total', { code: '3xxx', closed_by: 'upstream' })).toBe(10);
    expect(sample(text, 'ws_guard_closes_total', { code: '4xxx', closed_by: 'upstream' })).toBe(10);
    // The 5000+i closes: `other` as sent, or 1002 should the guard ever refuse such a frame itself.
    const raw = closes.filter((s) => !['3xxx', '4xxx', '4001', '4003'].includes(s.labels.code!));
    expect(raw.every((s) => s.labels.code === 'other' || s.labels.code === '1002')).toBe(true);
    expect(text).not.toMatch(/code="(?:3\d{3}|4(?!001|003)\d{3}|5\d{3})"/);
  });

  it('no label value comes from a path, header, claim or upstream status, including after a reload', async () => {
    const exp = Math.floor(Date.now() / 1000) + 60;
    const jwt = await new SignJWT({ sub: `${MARK}-sub`, role: `${MARK}-role`, exp })
      .setProtectedHeader({ alg: 'HS256' })
      .sign(new TextEncoder().encode(SECRET));
    const forged = await new SignJWT({ sub: `${MARK}-forged`, exp })
      .setProtectedHeader({ alg: 'HS256' })
      .sign(new TextEncoder().encode(`${SECRET}-not-it`));
    // A claim (forwarded to the app as a header), a header and a query.
    const ws = await open(`${g.wsUrl}/ws/push?tag=${MARK}`, undefined, { headers: { Authorization: `Bearer ${jwt}`, 'X-Trace': MARK } });
    ws.close(4999);
    await closed(ws);
    // Refusals: a bad token; paths the app does not serve, one under a route prefix (relayed 403: `4xx`).
    await expect(open(`${g.wsUrl}/ws/push?tag=${MARK}`, undefined, { headers: { Authorization: `Bearer ${forged}` } }))
      .rejects.toMatchObject({ status: 401 });
    await expect(open(`${g.wsUrl}/${MARK}/nowhere`)).rejects.toMatchObject({ status: 403 });
    await expect(open(`${g.wsUrl}/ws/close/${MARK}-deeper`)).rejects.toMatchObject({ status: 403 });
    await expect(open(`${g.wsUrl}/ws/reject?${MARK}=1`)).rejects.toMatchObject({ status: 403 });

    // A reload: the route set changes; labels follow the configured prefixes of the config in force.
    g.guard.reload(parseConfig({ listen: '127.0.0.1:0', ...BASE, upstream: upstream.url, routes: [{ path: '/ws/echo' }] }, {}));
    const after = await open(`${g.wsUrl}/ws/echo?tag=${MARK}-after-reload`);
    after.close(3333);
    await closed(after);
    const afterDeep = await open(`${g.wsUrl}/ws/close?code=1000&tag=${MARK}`);
    await closed(afterDeep);
    await until(async () => totalCloses(await metrics()) === 323, 10_000, 'the three closes counted');

    const text = await metrics();
    expect(text).not.toContain(MARK);
    const routes = ['/', '/ws/close', '/ws/push', '/ws/echo'];
    const allowed: Record<string, readonly string[]> = {
      code: CLOSE_CODE_LABELS,
      closed_by: CLOSED_BY_LABELS,
      reason: REASON_LABELS,
      status: STATUS_LABELS,
      outcome: ['accepted', 'refused'],
      direction: ['client_to_upstream', 'upstream_to_client'],
      route: routes,
      pool: ['(all)', ...routes],
    };
    const ours = series(text).filter((s) => !/^ws_guard_(process_|nodejs_)/.test(s.name));
    expect(ours.length).toBeGreaterThan(0);
    for (const s of ours) {
      for (const [k, v] of Object.entries(s.labels)) {
        if (k === 'le') continue; // histogram bucket bounds: fixed in the code
        expect(allowed[k], `${s.name}: label ${k}`).toBeDefined();
        expect(allowed[k], `${s.name}{${k}="${v}"}`).toContain(v);
      }
    }
    // prom-client's process metrics: label names of its own, values from the runtime.
    const defaults = new Set(['version', 'major', 'minor', 'patch', 'space', 'kind', 'type', 'le']);
    for (const s of series(text).filter((x) => /^ws_guard_(process_|nodejs_)/.test(x.name))) {
      for (const k of Object.keys(s.labels)) expect(defaults, `${s.name}: label ${k}`).toContain(k);
    }

    expect(sample(text, 'ws_guard_connections_opened_total', { route: '/ws/push' })).toBe(1);
    expect(sample(text, 'ws_guard_connections_opened_total', { route: '/ws/echo' })).toBe(1);
    expect(sample(text, 'ws_guard_rejections_total', { reason: 'TOKEN_INVALID', status: '401' })).toBe(1);
    expect(sample(text, 'ws_guard_rejections_total', { reason: 'UPSTREAM_REFUSED', status: '4xx' })).toBe(3);
    // After the reload /ws/close is no route: its connection counts as the top-level `/`.
    expect(sample(text, 'ws_guard_connections_opened_total', { route: '/' })).toBe(301);
    expect(sample(text, 'ws_guard_connections_opened_total', { route: '/ws/close' })).toBe(20);
  });
});
