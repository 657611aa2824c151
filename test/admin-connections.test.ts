import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { closed, nextMessage, open } from './helpers/clients.js';
import { startTestGuard, type TestGuard } from './helpers/guard.js';
import { jwt, upstreamClose } from './helpers/replicas.js';
import { startUpstream, type Upstream } from './helpers/upstream.js';

// The operator kill switch (docs/operations.md): GET /connections and POST /connections/close on the
// admin listener, against the real upstream, with per-user JWTs. Clients come "from" different addresses
// through X-Forwarded-For (127.0.0.1 is a trusted proxy here).

const SECRET = 'admin-connections-secret-long-enough-for-hs256-0123';
const ADMIN_TOKEN = 'admin-token-0123456789abcdef';

let upstream: Upstream;
let guard: TestGuard;
let tagCount = 0;
const tag = () => `admin-conn-${process.pid}-${++tagCount}`;

beforeAll(async () => {
  upstream = await startUpstream();
  guard = await startTestGuard({
    upstream: upstream.url,
    admin: { listen: '127.0.0.1:0', token: ADMIN_TOKEN },
    trustedProxies: ['127.0.0.1/32'],
    auth: { jwt: { secret: SECRET, algorithms: ['HS256'] } },
  });
});
afterAll(async () => {
  await guard?.close();
  await upstream?.stop();
});

/** A client of user `sub` from address `ip`, on /ws/echo with its own tag. */
async function client(sub: string, ip: string): Promise<{ ws: WebSocket; tag: string }> {
  const t = tag();
  const ws = await open(`${guard.wsUrl}/ws/echo?tag=${t}`, ['bearer', await jwt(sub, SECRET)], { headers: { 'X-Forwarded-For': ip } });
  return { ws, tag: t };
}

const admin = (path: string, init: RequestInit = {}, token: string | undefined = ADMIN_TOKEN) =>
  fetch(`${guard.adminUrl}${path}`, { ...init, headers: { ...(token ? { Authorization: `Bearer ${token}` } : {}), ...init.headers } });

const closeBy = async (params: string) => {
  const res = await admin(`/connections/close?${params}`, { method: 'POST' });
  return { status: res.status, body: await res.json() };
};

describe('GET /connections', () => {
  it('lists the live connections with id, user, ip, route, age and counts each way', async () => {
    const a = await client('alice', '10.1.0.1');
    a.ws.send('hello');
    await nextMessage(a.ws);
    const res = await admin('/connections');
    expect(res.status).toBe(200);
    const { connections } = (await res.json()) as { connections: Record<string, unknown>[] };
    const mine = connections.find((c) => c.user === 'alice');
    expect(mine).toMatchObject({ user: 'alice', ip: '10.1.0.1', route: '/', messagesIn: 1, messagesOut: 1 });
    // Bytes as on the wire (frame headers and masks included), like the metrics count them.
    expect(mine!.bytesIn).toBeGreaterThan(5);
    expect(mine!.bytesOut).toBeGreaterThan(5);
    expect(typeof mine!.id).toBe('number');
    expect(mine!.ageMs).toBeGreaterThanOrEqual(0);
    a.ws.close();
    await closed(a.ws);
  });

  it('answers 401 without the token or with a wrong one', async () => {
    expect((await admin('/connections', {}, '')).status).toBe(401);
    const wrong = await admin('/connections', {}, 'admin-token-0123456789abcdeX');
    expect(wrong.status).toBe(401);
    expect(wrong.headers.get('www-authenticate')).toMatch(/^Bearer/);
    expect((await admin('/connections/close?user=alice', { method: 'POST' }, 'short')).status).toBe(401);
  });
});

describe('POST /connections/close', () => {
  it('closes every connection of a user with 4003 on both sides', async () => {
    const [b1, b2, other] = [await client('bob', '10.2.0.1'), await client('bob', '10.2.0.2'), await client('carol', '10.2.0.3')];
    const codes = [closed(b1.ws), closed(b2.ws)];
    expect(await closeBy('user=bob')).toEqual({ status: 200, body: { closed: 2 } });
    expect((await Promise.all(codes)).map((c) => c.code)).toEqual([4003, 4003]);
    expect(await upstreamClose(upstream, b1.tag)).toBe(4003);
    expect(await upstreamClose(upstream, b2.tag)).toBe(4003);
    // Carol is untouched.
    other.ws.send('still here');
    expect(String((await nextMessage(other.ws)).data)).toBe('still here');
    other.ws.close();
    await closed(other.ws);
  });

  it('closes by ip and by id', async () => {
    const byIp = await client('dave', '10.3.0.1');
    const pending = closed(byIp.ws);
    expect(await closeBy('ip=10.3.0.1')).toEqual({ status: 200, body: { closed: 1 } });
    expect((await pending).code).toBe(4003);
    expect(await upstreamClose(upstream, byIp.tag)).toBe(4003);

    const byId = await client('erin', '10.3.0.2');
    const { connections } = (await (await admin('/connections')).json()) as { connections: { id: number; user: string }[] };
    const id = connections.find((c) => c.user === 'erin')!.id;
    const pendingId = closed(byId.ws);
    // A form body works as well as the query string.
    const res = await admin('/connections/close', { method: 'POST', body: new URLSearchParams({ id: String(id) }) });
    expect(await res.json()).toEqual({ closed: 1 });
    expect((await pendingId).code).toBe(4003);
    expect(await upstreamClose(upstream, byId.tag)).toBe(4003);
  });

  it('refuses a request without exactly one selector, and GET', async () => {
    expect((await closeBy('')).status).toBe(400);
    expect((await closeBy('user=a&ip=1.2.3.4')).status).toBe(400);
    expect((await closeBy('id=7&ban=10m')).status).toBe(400);
    expect((await closeBy('user=a&ban=48h')).status).toBe(400);
    expect((await closeBy('who=a')).status).toBe(400);
    expect((await admin('/connections/close?user=a')).status).toBe(405);
  });

  it('ban= refuses new upgrades and requests from that user or address (403 BANNED, Retry-After) until it expires', async () => {
    const f = await client('frank', '10.4.0.1');
    const pending = closed(f.ws);
    expect(await closeBy('user=frank&ban=2s')).toEqual({ status: 200, body: { closed: 1 } });
    expect((await pending).code).toBe(4003);

    const refused = await new Promise<{ status: number; code: string | undefined; retry: string | undefined }>(async (resolve, reject) => {
      const ws = new WebSocket(`${guard.wsUrl}/ws/echo`, ['bearer', await jwt('frank', SECRET)], { headers: { 'X-Forwarded-For': '10.4.0.9' } });
      ws.on('unexpected-response', (_req, res) => {
        resolve({ status: res.statusCode!, code: res.headers['x-ws-guard-error'] as string | undefined, retry: res.headers['retry-after'] as string | undefined });
        res.resume();
      });
      ws.on('open', () => reject(new Error('a banned user was let in')));
      ws.on('error', () => {});
    });
    expect(refused).toEqual({ status: 403, code: 'BANNED', retry: '2' });
    // Plain HTTP too.
    const http = await fetch(`${guard.httpUrl}/hello`, { headers: { Authorization: `Bearer ${await jwt('frank', SECRET)}` } });
    expect(http.status).toBe(403);
    // Someone else is let in meanwhile.
    const g = await client('grace', '10.4.0.1');
    g.ws.close();
    await closed(g.ws);

    await new Promise((r) => setTimeout(r, 2100));
    const again = await client('frank', '10.4.0.1');
    again.ws.close();
    await closed(again.ws);
  });

  it('an address ban holds for any user from it', async () => {
    expect(await closeBy('ip=10.5.0.1&ban=1m')).toEqual({ status: 200, body: { closed: 0 } });
    const status = await fetch(`${guard.httpUrl}/hello`, { headers: { Authorization: `Bearer ${await jwt('heidi', SECRET)}`, 'X-Forwarded-For': '10.5.0.1' } });
    expect(status.status).toBe(403);
    expect(status.headers.get('x-ws-guard-error')).toBe('BANNED');
  });
});

describe('admin in the string form', () => {
  it('has no operator endpoints: 404 with what to configure', async () => {
    const plain = await startTestGuard({ upstream: upstream.url, admin: '127.0.0.1:0' });
    try {
      for (const [path, method] of [['/connections', 'GET'], ['/connections/close?user=a', 'POST']] as const) {
        const res = await fetch(`${plain.adminUrl}${path}`, { method, headers: { Authorization: `Bearer ${ADMIN_TOKEN}` } });
        expect(res.status).toBe(404);
        expect(((await res.json()) as { error: string }).error).toContain('token');
      }
    } finally {
      await plain.close();
    }
  });
});
