import { describe, expect, it } from 'vitest';
import type WebSocket from 'ws';
import { closed, freePort, open } from './helpers/clients.js';
import { until, type GuardProc } from './helpers/fuzz.js';
import { rawConnect, upgradeRequest } from './helpers/raw.js';
import { storedSlots } from './helpers/redis.js';
import { jwt, jwtAuthLine, replicaFixture, type Ports } from './helpers/replicas.js';

const fx = replicaFixture();

interface ReplicaOptions {
  upstream?: string;
  leaseTtl?: string;
  /** Reuse a stopped replica's ports: the same replica coming back. */
  ports?: Ports;
}

const lines = (extra: string[], options: ReplicaOptions) => (ports: Ports) => [
  `upstream: ${options.upstream ?? fx.upstream.url}`,
  `admin: 127.0.0.1:${ports.adminPort}`,
  `store: { redis: "${fx.redis.url}", leaseTtl: ${options.leaseTtl ?? '2s'} }`,
  ...extra,
];

function replica(extra: string[], options: ReplicaOptions = {}): Promise<GuardProc> {
  return fx.spawnReplica(lines(extra, options), options.ports);
}

function replicas(n: number, extra: string[], options: Omit<ReplicaOptions, 'ports'> = {}): Promise<GuardProc[]> {
  return fx.spawnReplicas(n, lines(extra, options));
}

interface Answer {
  status: number;
  /** X-Ws-Guard-Error of a refusal. */
  code?: string;
  retryAfter?: string;
  ws?: WebSocket;
}

async function answer(port: number, path = '/ws/echo', options: { protocols?: string[]; localAddress?: string } = {}): Promise<Answer> {
  try {
    const ws = await open(`ws://127.0.0.1:${port}${path}`, options.protocols, { localAddress: options.localAddress });
    // A replica killed under its clients resets their sockets: that is the test, not a failure.
    ws.on('error', () => {});
    fx.track(ws);
    return { status: 101, ws };
  } catch (err) {
    const { status, headers } = err as { status?: number; headers?: Record<string, string> };
    return { status: status ?? 0, code: headers?.['x-ws-guard-error'], retryAfter: headers?.['retry-after'] };
  }
}

async function attempt(port: number, path = '/ws/echo'): Promise<number> {
  return (await answer(port, path)).status;
}

/** Opens a connection that must be admitted. */
async function admitted(guard: GuardProc, path = '/ws/echo'): Promise<WebSocket> {
  const a = await answer(guard.port, path);
  expect(a, `an admission on :${guard.port}${path}`).toMatchObject({ status: 101 });
  return a.ws!;
}

/** Closes a client and waits until the guard has answered its close. */
async function leave(ws: WebSocket): Promise<void> {
  const done = closed(ws);
  ws.close(1000);
  await done;
}

const TOTAL = 't:0:';

/**
 * What one replica holds in a counter according to Redis, live lease or not. Replica ids are
 * host/pid/random: a restarted process has a new one.
 */
async function heldBy(guard: GuardProc, counter: string): Promise<number | undefined> {
  const fields = await fx.redis.client.hgetall(`ws-guard:{slots}:c:${counter}`);
  const mine = Object.entries(fields).filter(([replicaId]) => replicaId.split('/')[1] === String(guard.child.pid));
  return mine.length === 0 ? undefined : mine.reduce((sum, [, n]) => sum + Number(n), 0);
}

/** Whether a replica (by process id) still has an entry in the lease set. */
async function registered(guard: GuardProc): Promise<boolean> {
  const ids = await fx.redis.client.zrange('ws-guard:{slots}:replicas', '0', '-1');
  return ids.some((replicaId) => replicaId.split('/')[1] === String(guard.child.pid));
}

/** The stored count comes back to `n` (releases are written after the close, not before it). */
async function slotsBecome(counter: string, n: number, ms = 5000): Promise<void> {
  await until(async () => (await storedSlots(fx.redis.client, counter)) === n, ms, `the stored ${counter} count to be ${n}`);
}

const SECRET = 'store-integration-secret-long-enough-for-hs256-0123456789';
const token = (sub: string) => jwt(sub, SECRET, '1h');
const AUTH = jwtAuthLine(SECRET);

describe('store.redis: connection slots across replicas', () => {
  it('total: 4 on three replicas admits exactly four, whichever replicas the clients hit', async () => {
    const guards = await replicas(3, ['limits: { connections: { total: 4 } }']);
    const statuses: number[] = [];
    for (let i = 0; i < 9; i++) statuses.push(await attempt(guards[i % 3]!.port));
    expect(statuses.filter((s) => s === 101)).toHaveLength(4);
    expect(statuses.filter((s) => s === 503)).toHaveLength(5);
    expect(await storedSlots(fx.redis.client, 't:0:')).toBe(4);
  });

  it('perIp: 2 on three replicas: one address gets exactly two, the rest 429 CONNECTIONS_PER_IP; another address has its own two', async () => {
    const guards = await replicas(3, ['limits: { connections: { perIp: 2 } }']);
    const answers: Answer[] = [];
    for (let i = 0; i < 6; i++) answers.push(await answer(guards[i % 3]!.port));
    expect(answers.filter((a) => a.status === 101)).toHaveLength(2);
    expect(answers.filter((a) => a.status !== 101)).toEqual(Array(4).fill({ status: 429, code: 'CONNECTIONS_PER_IP', retryAfter: '5' }));
    expect(await storedSlots(fx.redis.client, 'i:0::127.0.0.1')).toBe(2);
    const other: Answer[] = [];
    for (let i = 0; i < 3; i++) other.push(await answer(guards[(i + 2) % 3]!.port, '/ws/echo', { localAddress: '127.0.0.2' }));
    expect(other.map((a) => a.status)).toEqual([101, 101, 429]);
    expect(await storedSlots(fx.redis.client, 'i:0::127.0.0.2')).toBe(2);
  });

  it('perUser: 2 (JWT sub) on three replicas: exactly two for one user, the rest 429 CONNECTIONS_PER_USER; another user has its own two', async () => {
    const guards = await replicas(3, [AUTH, 'limits: { connections: { perUser: 2 } }']);
    const [carol, dave] = await Promise.all([token('carol'), token('dave')]);
    const answers: Answer[] = [];
    for (let i = 0; i < 6; i++) answers.push(await answer(guards[i % 3]!.port, '/ws/echo', { protocols: ['bearer', carol] }));
    expect(answers.filter((a) => a.status === 101)).toHaveLength(2);
    expect(answers.filter((a) => a.status !== 101)).toEqual(Array(4).fill({ status: 429, code: 'CONNECTIONS_PER_USER', retryAfter: '5' }));
    expect(await storedSlots(fx.redis.client, 'u:0::carol')).toBe(2);
    const other: Answer[] = [];
    for (let i = 0; i < 3; i++) other.push(await answer(guards[(i + 1) % 3]!.port, '/ws/echo', { protocols: ['bearer', dave] }));
    expect(other.map((a) => a.status)).toEqual([101, 101, 429]);
    expect(other[2]!.code).toBe('CONNECTIONS_PER_USER');
    expect(await storedSlots(fx.redis.client, 'u:0::dave')).toBe(2);
  });

  it('a route pool (total: 2 on /ws/echo) is exact across replicas; paths outside it are not counted in it', async () => {
    const guards = await replicas(3, ['routes: [{ path: /ws/echo, limits: { connections: { total: 2 } } }]']);
    const answers: Answer[] = [];
    for (let i = 0; i < 6; i++) answers.push(await answer(guards[i % 3]!.port));
    expect(answers.filter((a) => a.status === 101)).toHaveLength(2);
    expect(answers.filter((a) => a.status !== 101)).toEqual(Array(4).fill({ status: 503, code: 'CONNECTIONS_FULL', retryAfter: '5' }));
    expect(await storedSlots(fx.redis.client, 't:8:/ws/echo')).toBe(2);
    for (const g of guards) expect(await attempt(g.port, '/ws/push?bytes=0')).toBe(101);
    expect(await storedSlots(fx.redis.client, 't:8:/ws/echo')).toBe(2);
  });
});

/**
 * Each exit path on a pool of `total: 2` across three replicas: once the connection is gone the stored
 * count is back to 0, and then exactly two new clients are admitted again (a third is refused, so nothing
 * was freed twice either).
 */
describe('store.redis: slots come back on every exit path', () => {
  const LIMITS = 'limits: { connections: { total: 2 } }';

  async function poolIsWhole(guards: GuardProc[]): Promise<void> {
    await slotsBecome(TOTAL, 0);
    const statuses = [await attempt(guards[1]!.port), await attempt(guards[2]!.port), await attempt(guards[0]!.port)];
    expect(statuses).toEqual([101, 101, 503]);
    expect(await storedSlots(fx.redis.client, TOTAL)).toBe(2);
  }

  it('client close', async () => {
    const guards = await replicas(3, [LIMITS]);
    const ws = await admitted(guards[0]!);
    expect(await storedSlots(fx.redis.client, TOTAL)).toBe(1);
    await leave(ws);
    await poolIsWhole(guards);
  });

  it('client TCP reset', async () => {
    const guards = await replicas(3, [LIMITS]);
    const conn = await rawConnect(guards[0]!.port);
    conn.write(upgradeRequest('/ws/echo'));
    expect((await conn.readHttpResponse()).status).toBe(101);
    expect(await storedSlots(fx.redis.client, TOTAL)).toBe(1);
    conn.socket.resetAndDestroy();
    await poolIsWhole(guards);
  });

  it('the upstream closes the connection', async () => {
    const guards = await replicas(3, [LIMITS]);
    const ws = await admitted(guards[0]!, '/ws/close?code=1000');
    expect((await closed(ws)).code).toBe(1000);
    await poolIsWhole(guards);
  });

  it('the upstream refuses the upgrade (403 relayed)', async () => {
    const guards = await replicas(3, [LIMITS]);
    expect(await answer(guards[0]!.port, '/ws/reject')).toEqual({ status: 403, code: undefined, retryAfter: undefined });
    await poolIsWhole(guards);
  });

  it('the dial fails (nothing listens on the upstream port → 502)', async () => {
    const dead = `http://127.0.0.1:${await freePort()}`;
    const [broken, ...healthy] = [await replica([LIMITS], { upstream: dead }), ...(await replicas(2, [LIMITS]))];
    for (let i = 0; i < 3; i++) expect(await answer(broken.port)).toMatchObject({ status: 502, code: 'UPSTREAM_UNREACHABLE' });
    await poolIsWhole([broken, ...healthy]);
  });
});

describe('store.redis: leases', () => {
  it("SIGKILL of a replica holding every slot: the others admit again within leaseTtl + 1 s, and the dead replica's slots are all gone", async () => {
    const guards = await replicas(3, ['limits: { connections: { total: 4 } }']);
    const [doomed, ...rest] = guards as [GuardProc, GuardProc, GuardProc];
    for (let i = 0; i < 4; i++) await admitted(doomed);
    for (const g of rest) expect(await answer(g.port)).toMatchObject({ status: 503, code: 'CONNECTIONS_FULL' });

    const killedAt = Date.now();
    doomed.child.kill('SIGKILL');
    let admittedAt: number | undefined;
    for (let i = 0; admittedAt === undefined && Date.now() - killedAt < 10_000; i++) {
      const a = await answer(rest[i % 2]!.port);
      if (a.status === 101) admittedAt = Date.now();
      else expect(a).toMatchObject({ status: 503, code: 'CONNECTIONS_FULL' });
    }
    expect(admittedAt, 'an admission after the kill').toBeDefined();
    expect(admittedAt! - killedAt).toBeLessThanOrEqual(3000);
    await doomed.closed;
    expect(doomed.exit?.signal).toBe('SIGKILL');
    // All four of the dead replica's slots stopped counting, not only one.
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) statuses.push(await attempt(rest[i % 2]!.port));
    expect(statuses).toEqual([101, 101, 101, 503]);
    expect(await storedSlots(fx.redis.client, TOTAL)).toBe(4);
  }, 20_000);

  it('SIGTERM: a replica leaving on purpose gives its slots back at once, not after leaseTtl', async () => {
    // A lease far longer than the test: only resigning can free the slots in time.
    const guards = await replicas(3, ['limits: { connections: { total: 4 } }'], { leaseTtl: '5m' });
    const [leaving, stayer] = guards as [GuardProc, GuardProc, GuardProc];
    const going = [await admitted(leaving), await admitted(leaving)];
    await admitted(stayer);
    expect(await storedSlots(fx.redis.client, TOTAL)).toBe(3);
    const codes = going.map((ws) => closed(ws));
    leaving.child.kill('SIGTERM');
    await leaving.closed;
    expect(leaving.exit).toMatchObject({ code: 0 });
    expect((await Promise.all(codes)).map((c) => c.code)).toEqual([1001, 1001]);
    expect(await storedSlots(fx.redis.client, TOTAL)).toBe(1);
    expect(await heldBy(leaving, TOTAL)).toBeUndefined();
    expect(await registered(leaving)).toBe(false);
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) statuses.push(await attempt(guards[1 + (i % 2)]!.port));
    expect(statuses).toEqual([101, 101, 101, 503]);
  }, 20_000);

  for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
    it(`a replica restarted after ${signal} neither inherits nor frees its previous life's slots: stored counts follow the open connections at every step`, async () => {
      // Long enough that a SIGKILLed life's lease is still live while its successor opens and closes.
      const options = { leaseTtl: '8s' };
      const limits = 'limits: { connections: { total: 8, perIp: 8 } }';
      const [first, other] = (await replicas(2, [limits], options)) as [GuardProc, GuardProc];
      const open = new Map<GuardProc, WebSocket[]>([[other, []]]);
      const real = () => [...open.values()].reduce((n, list) => n + list.length, 0);
      const previous = [await admitted(first), await admitted(first)];
      open.get(other)!.push(await admitted(other));
      expect(await storedSlots(fx.redis.client, TOTAL)).toBe(3);

      first.child.kill(signal);
      await first.closed;
      for (const ws of previous) ws.terminate();
      const again = await replica([limits], { ...options, ports: { port: first.port, adminPort: first.adminPort } });
      open.set(again, []);

      /**
       * The previous life's field is never touched: 2 until its lease runs out and it is reaped (SIGKILL),
       * gone at once (SIGTERM). Each live replica's field is exactly its open connections, and the sum
       * Redis counts is the real number, plus the previous life's 2 only while its lease is live.
       */
      const check = async (step: string) => {
        for (const counter of [TOTAL, 'i:0::127.0.0.1']) {
          const before = await heldBy(first, counter);
          if (signal === 'SIGTERM') expect(before, `${step}: ${counter} of the resigned life`).toBeUndefined();
          else expect([2, undefined], `${step}: ${counter} of the killed life`).toContain(before);
          for (const [g, list] of open) expect((await heldBy(g, counter)) ?? 0, `${step}: ${counter} of pid ${g.child.pid}`).toBe(list.length);
          const stored = await storedSlots(fx.redis.client, counter);
          if (signal === 'SIGTERM') expect(stored, `${step}: stored ${counter}`).toBe(real());
          else expect([real(), real() + 2], `${step}: stored ${counter}`).toContain(stored);
        }
      };

      await check('restarted');
      if (signal === 'SIGKILL') expect(await storedSlots(fx.redis.client, TOTAL), 'the killed life still counts until its lease ends').toBe(3);
      for (let i = 0; i < 3; i++) {
        open.get(again)!.push(await admitted(again));
        await check(`opened ${i + 1} on the restarted replica`);
      }
      for (let i = 0; i < 2; i++) {
        await leave(open.get(again)!.pop()!);
        await until(async () => ((await heldBy(again, TOTAL)) ?? 0) === open.get(again)!.length, 5000, 'the release on the restarted replica');
        await check('closed one on the restarted replica');
      }
      await leave(open.get(other)!.pop()!);
      await until(async () => (await heldBy(other, TOTAL)) === undefined, 5000, 'the release on the other replica');
      await check('closed the one on the other replica');

      await slotsBecome(TOTAL, real(), 10_000);
      await until(async () => (await heldBy(first, TOTAL)) === undefined, 5000, "the killed life's field to be reaped");
      await check('previous life gone');
      await leave(open.get(again)!.pop()!);
      await slotsBecome(TOTAL, 0);
      await check('all closed');
    }, 25_000);
  }
});

describe('store.redis: handshake rate across replicas', () => {
  it('rate 1/minute, burst 3: one address spread over three replicas gets exactly three handshakes, then 429 HANDSHAKE_RATE with Retry-After', async () => {
    const guards = await replicas(3, ['limits: { handshakes: { rate: 1/minute, burst: 3 } }']);
    const answers: Answer[] = [];
    // Each replica alone would admit three: nine in all without the store.
    for (let i = 0; i < 9; i++) answers.push(await answer(guards[i % 3]!.port));
    expect(answers.filter((a) => a.status === 101)).toHaveLength(3);
    const refused = answers.filter((a) => a.status !== 101);
    expect(refused).toHaveLength(6);
    for (const r of refused) {
      expect(r).toMatchObject({ status: 429, code: 'HANDSHAKE_RATE' });
      expect(Number(r.retryAfter)).toBeGreaterThan(0);
      expect(Number(r.retryAfter)).toBeLessThanOrEqual(60);
    }
    // Another address has a bucket of its own, on whichever replica.
    expect(await answer(guards[2]!.port, '/ws/echo', { localAddress: '127.0.0.2' })).toMatchObject({ status: 101 });
  });
});
