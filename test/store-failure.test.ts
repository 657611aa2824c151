/**
 * Issue 12 item 5: Redis trouble is an answer, not a crash. Each test has a Redis of its own, since it
 * kills, pauses or restarts it; the guards are real replicas (child processes) on that Redis.
 */
import { describe, expect, it } from 'vitest';
import type WebSocket from 'ws';
import { closed, nextMessage, open } from './helpers/clients.js';
import { accepts, httpGet, metricSum, sleep, UNCAUGHT, until, type GuardProc } from './helpers/fuzz.js';
import { startRedis, storedSlots, type RedisServer } from './helpers/redis.js';
import { replicaFixture } from './helpers/replicas.js';

const fx = replicaFixture({ redis: false });

async function redisOfThisTest(): Promise<RedisServer> {
  const redis = await startRedis();
  fx.afterThisTest(() => redis.stop());
  return redis;
}

/** Every JSON log line a guard writes from now on, info included (spawnGuard keeps warn and worse only). */
function watchLogs(guard: GuardProc): Record<string, unknown>[] {
  const lines: Record<string, unknown>[] = [];
  let partial = '';
  guard.child.stdout!.on('data', (d: string) => {
    const parts = (partial + d).split('\n');
    partial = parts.pop()!;
    for (const line of parts) {
      try {
        lines.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // Not a log line: spawnGuard's own reader reports those.
      }
    }
  });
  return lines;
}

interface Replica extends GuardProc {
  lines: Record<string, unknown>[];
}

/** Short leases and deadlines keep each outage, and the way back, within a few seconds. */
function replicas(redis: RedisServer, n: number, extra: string[], store: { onError?: string; timeout?: string } = {}): Promise<Replica[]> {
  const { onError = 'local', timeout = '200ms' } = store;
  const lines = (ports: { adminPort: number }) => [
    `upstream: ${fx.upstream.url}`,
    `admin: 127.0.0.1:${ports.adminPort}`,
    `store: { redis: "${redis.url}", leaseTtl: 2s, timeout: ${timeout}, onError: ${onError} }`,
    ...extra,
  ];
  return fx.spawnReplicas(n, lines, async (guard) => {
    // The admin listener opens just after the proxy's.
    await until(() => accepts(guard.adminPort), 5000, 'the admin listener');
    return Object.assign(guard, { lines: watchLogs(guard) });
  });
}

interface Attempt {
  status: number;
  error?: string;
  ws?: WebSocket;
}

async function attempt(port: number): Promise<Attempt> {
  try {
    const ws = await open(`ws://127.0.0.1:${port}/ws/echo`);
    fx.track(ws);
    return { status: 101, ws };
  } catch (err) {
    const { status, headers } = err as { status?: number; headers?: Record<string, string> };
    return { status: status ?? 0, error: headers?.['x-ws-guard-error'] };
  }
}

async function admitted(port: number): Promise<WebSocket> {
  const a = await attempt(port);
  expect(a, 'upgrade admitted').toMatchObject({ status: 101 });
  return a.ws!;
}

async function close(ws: WebSocket): Promise<void> {
  const done = closed(ws);
  ws.close(1000);
  await done;
}

async function echoes(ws: WebSocket): Promise<boolean> {
  const reply = nextMessage(ws);
  ws.send('still there');
  return String((await reply).data) === 'still there';
}

/** One sample of a metric (`name` or `name{label="v"}` exactly as exposed); absent counts as 0. */
async function metric(guard: GuardProc, sample: string): Promise<number> {
  const { body } = await httpGet(guard.adminPort, '/metrics');
  const line = body.split('\n').find((l) => l.startsWith(`${sample} `));
  return line === undefined ? 0 : Number(line.slice(sample.length + 1));
}

const storeUp = (guard: GuardProc) => metric(guard, 'ws_guard_store_up');
const transitions = (guard: GuardProc, state: 'up' | 'down') => metric(guard, `ws_guard_store_transitions_total{state="${state}"}`);

const downLines = (lines: Record<string, unknown>[]) => lines.filter((l) => String(l.msg).startsWith('limit store unreachable'));
const upLines = (lines: Record<string, unknown>[]) => lines.filter((l) => String(l.msg).startsWith('limit store reachable'));

/** The guard stayed up and let nothing escape. */
function alive(guard: GuardProc): void {
  expect(guard.exit).toBeUndefined();
  expect(guard.stderr()).not.toMatch(UNCAUGHT);
}

/** The connections a replica holds, as it reports them itself. */
const active = async (guard: GuardProc) => metricSum((await httpGet(guard.adminPort, '/metrics')).body, 'ws_guard_connections_active') ?? 0;

/** Stored slots read with the test's own client, which may still be reconnecting after a restart. */
async function stored(redis: RedisServer, counter: string): Promise<number | undefined> {
  try {
    return await storedSlots(redis.client, counter);
  } catch {
    return undefined;
  }
}

describe('store.onError: local (the default)', () => {
  it('Redis killed with connections open: admission follows this replica\'s own caps, one log line and metric per transition', async () => {
    const redis = await redisOfThisTest();
    const [guard] = await replicas(redis, 1, ['limits: { connections: { total: 3 } }']);
    const first = await admitted(guard!.port);
    await admitted(guard!.port);
    expect(await storedSlots(redis.client, 't:0:')).toBe(2);

    await redis.kill();
    const third = await admitted(guard!.port);
    const refused: Attempt[] = [];
    for (let i = 0; i < 4; i++) refused.push(await attempt(guard!.port));
    expect(refused).toEqual(Array(4).fill({ status: 503, error: 'CONNECTIONS_FULL' }));
    expect(await echoes(first)).toBe(true);
    expect(await echoes(third)).toBe(true);

    // Counted locally: a slot given back while Redis is away can be taken again, and only that one.
    await close(first);
    await until(async () => (await active(guard!)) === 2, 5000, 'the closed connection to be released');
    await admitted(guard!.port);
    expect(await attempt(guard!.port)).toEqual({ status: 503, error: 'CONNECTIONS_FULL' });

    // Ticks keep probing the dead Redis meanwhile; none of them is a new transition.
    await sleep(1500);
    const down = downLines(guard!.logs());
    expect(down).toHaveLength(1);
    expect(down[0]).toMatchObject({ level: 40, onError: 'local', msg: 'limit store unreachable: admission follows store.onError (local)' });
    expect(await storeUp(guard!)).toBe(0);
    expect(await transitions(guard!, 'down')).toBe(1);
    expect(await transitions(guard!, 'up')).toBe(1);
    expect(await metric(guard!, 'ws_guard_rejections_total{reason="CONNECTIONS_FULL",status="503"}')).toBe(5);
    alive(guard!);
  });

  it('/readyz stays 200 while Redis is down, and plain requests follow this replica\'s own request rate', async () => {
    const redis = await redisOfThisTest();
    const [guard] = await replicas(redis, 1, ['limits: { connections: { total: 5 }, requests: { rate: 2/minute, burst: 2 } }']);
    await redis.kill();
    await until(async () => (await storeUp(guard!)) === 0, 5000, 'the store to be seen down');
    expect((await httpGet(guard!.adminPort, '/readyz')).status).toBe(200);
    const answers: { status: number; error: unknown }[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await httpGet(guard!.port, '/hello');
      answers.push({ status: res.status, error: res.headers['x-ws-guard-error'] });
    }
    expect(answers).toEqual([{ status: 200, error: undefined }, { status: 200, error: undefined }, { status: 429, error: 'REQUEST_RATE' }]);
    alive(guard!);
  });
});

describe('store.onError: open and closed', () => {
  it('open: upgrades and plain requests beyond every limit are admitted while Redis is down', async () => {
    const redis = await redisOfThisTest();
    const [guard] = await replicas(redis, 1, ['limits: { connections: { total: 1 }, requests: { rate: 1/minute, burst: 1 } }'], { onError: 'open' });
    await admitted(guard!.port);
    expect(await attempt(guard!.port)).toEqual({ status: 503, error: 'CONNECTIONS_FULL' });
    expect((await httpGet(guard!.port, '/hello')).status).toBe(200);
    expect((await httpGet(guard!.port, '/hello')).headers['x-ws-guard-error']).toBe('REQUEST_RATE');

    await redis.kill();
    for (let i = 0; i < 3; i++) await admitted(guard!.port);
    for (let i = 0; i < 3; i++) expect((await httpGet(guard!.port, '/hello')).status).toBe(200);
    expect(downLines(guard!.logs())).toMatchObject([{ onError: 'open' }]);
    expect((await httpGet(guard!.adminPort, '/readyz')).status).toBe(200);
    alive(guard!);
  });

  it('closed: upgrades and rated plain requests get 503 STORE_UNAVAILABLE and /readyz 503 while down; both come back with Redis', async () => {
    const redis = await redisOfThisTest();
    const [guard] = await replicas(redis, 1, ['limits: { connections: { total: 5 }, requests: { rate: 100/minute } }'], { onError: 'closed' });
    const before = await admitted(guard!.port);
    expect((await httpGet(guard!.port, '/hello')).status).toBe(200);
    expect((await httpGet(guard!.adminPort, '/readyz')).status).toBe(200);

    await redis.kill();
    expect(await attempt(guard!.port)).toEqual({ status: 503, error: 'STORE_UNAVAILABLE' });
    const plain = await httpGet(guard!.port, '/hello');
    expect(plain.status).toBe(503);
    expect(plain.headers['x-ws-guard-error']).toBe('STORE_UNAVAILABLE');
    expect(plain.headers['retry-after']).toBe('5');
    const ready = await httpGet(guard!.adminPort, '/readyz');
    expect(ready).toMatchObject({ status: 503, body: 'limit store unreachable (store.onError: closed)\n' });
    // A connection admitted before the outage is not the store's to end.
    expect(await echoes(before)).toBe(true);
    expect(downLines(guard!.logs())).toMatchObject([{ onError: 'closed' }]);

    await redis.restart();
    await until(async () => (await httpGet(guard!.adminPort, '/readyz')).status === 200, 10_000, '/readyz 200 once Redis is back');
    await admitted(guard!.port);
    expect((await httpGet(guard!.port, '/hello')).status).toBe(200);
    expect(await storedSlots(redis.client, 't:0:')).toBe(2);
    alive(guard!);
  });
});

describe('a hung Redis (SIGSTOP)', () => {
  it('calls give up after store.timeout: handshakes are answered by the fallback, and the store comes back after SIGCONT', async () => {
    const redis = await redisOfThisTest();
    const [guard] = await replicas(redis, 1, ['limits: { connections: { total: 3 }, handshakes: { rate: 100/s, burst: 100 } }']);
    await admitted(guard!.port);

    redis.pause();
    // A hung call would hold the handshake until its own 10 s deadline (408); two 200 ms calls at most here.
    const started = Date.now();
    const during = await attempt(guard!.port);
    expect(during.status).toBe(101);
    expect(Date.now() - started).toBeLessThan(3000);
    await admitted(guard!.port);
    expect(await attempt(guard!.port)).toEqual({ status: 503, error: 'CONNECTIONS_FULL' });
    await until(async () => (await storeUp(guard!)) === 0, 5000, 'the store to be seen down');
    expect(downLines(guard!.logs())).toMatchObject([{ onError: 'local', reason: expect.stringMatching(/timed out/i) }]);
    await close(during.ws!);
    await until(async () => (await active(guard!)) === 2, 5000, 'the closed connection to be released');

    redis.resume();
    await until(async () => (await storeUp(guard!)) === 1, 10_000, 'the store to come back up');
    expect(await transitions(guard!, 'up')).toBe(2);
    await until(async () => (await stored(redis, 't:0:')) === 2, 5000, 'the stored count to match the two open connections');
    await admitted(guard!.port);
    expect(await attempt(guard!.port)).toEqual({ status: 503, error: 'CONNECTIONS_FULL' });
    alive(guard!);
  });

  it('closed: /readyz answers 503 for the whole time Redis hangs, and 200 again once it answers', async () => {
    const redis = await redisOfThisTest();
    const [guard] = await replicas(redis, 1, ['limits: { connections: { total: 5 } }'], { onError: 'closed' });
    redis.pause();
    expect(await attempt(guard!.port)).toEqual({ status: 503, error: 'STORE_UNAVAILABLE' });
    await until(async () => (await storeUp(guard!)) === 0, 5000, 'the store to be seen down');
    // Several probe ticks (every leaseTtl / 3): a write-back waiting on the hung Redis is not an answer.
    const seen = new Set<number>();
    for (const end = Date.now() + 2500; Date.now() < end; await sleep(25)) seen.add((await httpGet(guard!.adminPort, '/readyz')).status);
    expect([...seen]).toEqual([503]);

    redis.resume();
    await until(async () => (await httpGet(guard!.adminPort, '/readyz')).status === 200, 10_000, '/readyz 200 once Redis answers');
    await admitted(guard!.port);
    alive(guard!);
  });

  it('slots taken and given back while the write-back is in flight are not lost when Redis resumes', async () => {
    const redis = await redisOfThisTest();
    // A 1 s deadline keeps a write-back sent to the hung Redis in flight across the opens and closes below.
    // With a handshake rate the first call to time out is not a slot script (one in flight holds a write-back).
    const [guard] = await replicas(redis, 1, ['limits: { connections: { total: 10 }, handshakes: { rate: 100/s, burst: 100 } }'], { timeout: '1s' });
    const first = await admitted(guard!.port);
    await admitted(guard!.port);

    redis.pause();
    // A write-back of the 2 slots held before these changes must not erase them when Redis resumes.
    await admitted(guard!.port);
    await admitted(guard!.port);
    await close(first);
    await until(async () => (await active(guard!)) === 3, 5000, 'the closed connection to be released');
    redis.resume();

    await until(async () => (await storeUp(guard!)) === 1, 10_000, 'the store to come back up');
    let last: number | undefined;
    await until(async () => (last = await stored(redis, 't:0:')) === 3, 5000, 'the stored count to match the three open connections').catch((err: Error) => {
      throw new Error(`${err.message}: Redis counts ${last} (${JSON.stringify(upLines(guard!.lines).map((l) => l.reason))})`);
    });
    alive(guard!);
  });
});

describe('reconciliation: stored counts match the live connections once Redis answers again', () => {
  const IP = 'i:0::127.0.0.1';

  /**
   * Two replicas with 3 + 2 connections; during the outage A opens 2 more, and A and B each close one of
   * the earlier ones. Afterwards Redis must count exactly what is open (5), then 0 once everything closed.
   */
  async function outage(redis: RedisServer, kind: 'killed' | 'paused'): Promise<void> {
    const [a, b] = await replicas(redis, 2, ['limits: { connections: { total: 10, perIp: 10 } }']);
    const onA: WebSocket[] = [];
    const onB: WebSocket[] = [];
    for (let i = 0; i < 3; i++) onA.push(await admitted(a!.port));
    for (let i = 0; i < 2; i++) onB.push(await admitted(b!.port));
    expect(await storedSlots(redis.client, 't:0:')).toBe(5);
    expect(await storedSlots(redis.client, IP)).toBe(5);
    // Lines are watched from the moment each replica listens: its first "reachable" may or may not be in.
    const upBefore = [upLines(a!.lines).length, upLines(b!.lines).length];

    if (kind === 'killed') await redis.kill();
    else redis.pause();
    for (let i = 0; i < 2; i++) onA.push(await admitted(a!.port));
    await close(onB.shift()!);
    await close(onA.shift()!);
    await until(async () => (await storeUp(a!)) === 0 && (await storeUp(b!)) === 0, 5000, 'both replicas to see the store down');
    await until(async () => (await active(a!)) + (await active(b!)) === 5, 5000, 'the closed connections to be released');

    if (kind === 'killed') await redis.restart();
    else redis.resume();
    await until(async () => upLines(a!.lines).length === upBefore[0]! + 1 && upLines(b!.lines).length === upBefore[1]! + 1, 10_000, '"limit store reachable" from both replicas');
    await until(async () => (await stored(redis, 't:0:')) === 5 && (await stored(redis, IP)) === 5, 5000, 'the stored counts to match the 5 open connections');
    for (const g of [a!, b!]) {
      expect(await storeUp(g)).toBe(1);
      expect(await transitions(g, 'up')).toBe(2);
      expect(await transitions(g, 'down')).toBe(1);
      expect(downLines(g.logs())).toHaveLength(1);
    }

    // No phantom slots: with everything closed Redis counts nothing, and the cap is whole again.
    await Promise.all([...onA, ...onB].map(close));
    await until(async () => (await stored(redis, 't:0:')) === 0 && (await stored(redis, IP)) === 0, 5000, 'the stored counts to drop to 0');
    for (let i = 0; i < 10; i++) await admitted(i % 2 === 0 ? a!.port : b!.port);
    expect(await attempt(a!.port)).toEqual({ status: 503, error: 'CONNECTIONS_FULL' });
    alive(a!);
    alive(b!);
  }

  it('Redis killed and restarted empty on the same port', async () => {
    await outage(await redisOfThisTest(), 'killed');
  });

  it('Redis paused (stale data kept) then resumed', async () => {
    await outage(await redisOfThisTest(), 'paused');
  });
});

describe('Redis down at startup', () => {
  it('the guard listens, logs the down line, admits on its own caps, and comes up once Redis starts', async () => {
    const redis = await redisOfThisTest();
    await redis.kill();
    const [guard] = await replicas(redis, 1, ['limits: { connections: { total: 3 } }']);
    await until(() => downLines(guard!.logs()).length > 0, 5000, 'the down line');
    expect(downLines(guard!.logs())).toMatchObject([{ level: 40, onError: 'local', reason: expect.stringMatching(/^not reachable at startup/) }]);
    expect(await storeUp(guard!)).toBe(0);
    await admitted(guard!.port);

    await redis.restart();
    await until(async () => (await storeUp(guard!)) === 1, 10_000, 'the store to come up');
    expect(upLines(guard!.lines)).toHaveLength(1);
    expect(await transitions(guard!, 'down')).toBe(1);
    expect(await transitions(guard!, 'up')).toBe(1);
    await admitted(guard!.port);
    await until(async () => (await stored(redis, 't:0:')) === 2, 5000, 'both connections counted in Redis');
    alive(guard!);
  });
});
