import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { closed, freePort, nextMessage, open } from './helpers/clients.js';
import { buildSnapshot, type GuardProc } from './helpers/fuzz.js';
import { until } from './helpers/guard.js';
import { jwt, jwtAuthLine, replicaFixture, replicaYaml, upstreamClose } from './helpers/replicas.js';

/*
 * The operator kill switch across replicas (store.redis, docs/operations.md): POST /connections/close with
 * user= or ip= on one replica's admin listener closes the matching connections on every replica (4003 on
 * both sides), and a ban holds on every replica, including one started after it. id= stays on the replica
 * asked. Clients come "from" different addresses through X-Forwarded-For (127.0.0.1 is a trusted proxy).
 */

const SECRET = 'store-operator-secret-long-enough-for-hs256-0123';
const ADMIN_TOKEN = 'store-operator-admin-token-0123456789';
const CHANNEL = 'ws-guard:operator';

const fx = replicaFixture();
let count = 0;
const tag = () => `store-op-${process.pid}-${++count}`;

/** Every replica's lines after `listen:`; `admin` is its admin line. */
function lines(admin: string, extra: string[] = []): string[] {
  return [
    `upstream: ${fx.upstream.url}`,
    admin,
    'trustedProxies: [127.0.0.1/32]',
    `store: { redis: "${fx.redis.url}", leaseTtl: 2s }`,
    jwtAuthLine(SECRET),
    ...extra,
  ];
}

const objectAdmin = (adminPort: number) => `admin: { listen: 127.0.0.1:${adminPort}, token: "${ADMIN_TOKEN}" }`;

/** One replica; `stringAdmin` gives it the string form of admin (no operator endpoints). */
function replica(stringAdmin = false): Promise<GuardProc> {
  return fx.spawnReplica((ports) => lines(stringAdmin ? `admin: 127.0.0.1:${ports.adminPort}` : objectAdmin(ports.adminPort)));
}

/** Orders reach only the processes subscribed: an order sent before a replica has subscribed misses it. */
async function subscribed(n: number): Promise<void> {
  await until(async () => {
    const [, subscribers] = (await fx.redis.client.pubsub('NUMSUB', CHANNEL)) as [string, number];
    return Number(subscribers) === n;
  }, 10_000, `${n} replicas subscribed to ${CHANNEL}`);
}

/** Replicas started together, each subscribed to the operator channel. */
async function replicas(n: number): Promise<GuardProc[]> {
  const started = await Promise.all(Array.from({ length: n }, () => replica()));
  await subscribed(n);
  return started;
}

interface Client {
  ws: WebSocket;
  tag: string;
}

async function client(port: number, sub: string, ip: string): Promise<Client> {
  const t = tag();
  const ws = await open(`ws://127.0.0.1:${port}/ws/echo?tag=${t}`, ['bearer', await jwt(sub, SECRET)], { headers: { 'X-Forwarded-For': ip } });
  fx.track(ws);
  return { ws, tag: t };
}

/** The answer to an upgrade that must be refused; fails the test if it is let in. */
async function refusal(port: number, sub: string, ip: string): Promise<{ status: number; code: string | undefined }> {
  return open(`ws://127.0.0.1:${port}/ws/echo`, ['bearer', await jwt(sub, SECRET)], { headers: { 'X-Forwarded-For': ip } }).then(
    (ws) => {
      ws.terminate();
      throw new Error(`${sub} from ${ip} was let in on ${port}`);
    },
    (err: { status: number; headers: Record<string, string> }) => ({ status: err.status, code: err.headers['x-ws-guard-error'] }),
  );
}

/**
 * Upgrades sent back to back from before `port` accepts until `ms` after it first answered: the answers to
 * everything it answered in its first moments.
 */
async function knock(port: number, token: string, ms: number): Promise<string[]> {
  const answers: string[] = [];
  const giveUp = Date.now() + 15_000;
  let stopAt = Infinity;
  while (Date.now() < Math.min(giveUp, stopAt)) {
    try {
      (await open(`ws://127.0.0.1:${port}/ws/echo`, ['bearer', token])).terminate();
      answers.push('101');
    } catch (err) {
      const { status, headers } = err as { status?: number; headers?: Record<string, string> };
      if (status === undefined) {
        await new Promise((r) => setTimeout(r, 1));
        continue;
      }
      answers.push(`${status} ${headers?.['x-ws-guard-error']}`);
    }
    if (stopAt === Infinity) stopAt = Date.now() + ms;
  }
  return answers;
}

async function closeOn(adminPort: number, params: string, token: string | null = ADMIN_TOKEN): Promise<{ status: number; body: unknown }> {
  const res = await fetch(`http://127.0.0.1:${adminPort}/connections/close?${params}`, {
    method: 'POST',
    headers: token === null ? {} : { Authorization: `Bearer ${token}` },
  });
  return { status: res.status, body: await res.json() };
}

/** GET /connections: the live connections of that replica (or of all its workers). */
async function listed(adminPort: number): Promise<{ id: number; user: string }[]> {
  const res = await fetch(`http://127.0.0.1:${adminPort}/connections`, { headers: { Authorization: `Bearer ${ADMIN_TOKEN}` } });
  return ((await res.json()) as { connections: { id: number; user: string }[] }).connections;
}

/** Closed by an operator: 4003 at the client and at the upstream. */
async function closedByOperator(c: Client, pending: Promise<{ code: number }>): Promise<void> {
  expect((await pending).code).toBe(4003);
  expect(await upstreamClose(fx.upstream, c.tag)).toBe(4003);
}

/** Still open and forwarding both ways. */
async function stillServed(c: Client): Promise<void> {
  const reply = nextMessage(c.ws);
  c.ws.send(`still ${c.tag}`);
  expect(String((await reply).data)).toBe(`still ${c.tag}`);
}

describe('POST /connections/close across three replicas', () => {
  it('user= on replica A closes that user on A, B and C with 4003 both sides, others untouched: {closed: 1, reached: 3}', async () => {
    const guards = await replicas(3);
    const alice = await Promise.all(guards.map((g, i) => client(g.port, 'alice', `10.1.0.${i + 1}`)));
    const bob = await Promise.all(guards.map((g, i) => client(g.port, 'bob', `10.1.1.${i + 1}`)));
    const pending = alice.map((c) => closed(c.ws));
    expect(await closeOn(guards[0]!.adminPort, 'user=alice')).toEqual({ status: 200, body: { closed: 1, reached: 3 } });
    for (const [i, c] of alice.entries()) await closedByOperator(c, pending[i]!);
    for (const c of bob) await stillServed(c);
    // No ban was asked: alice comes back anywhere.
    for (const g of guards) await client(g.port, 'alice', '10.1.0.9');
  });

  it('user= with ban=1m refuses alice on every replica (403 BANNED), also on a replica started after the ban', async () => {
    const guards = await replicas(3);
    const alice = await Promise.all(guards.map((g, i) => client(g.port, 'alice', `10.2.0.${i + 1}`)));
    const pending = alice.map((c) => closed(c.ws));
    expect(await closeOn(guards[1]!.adminPort, 'user=alice&ban=1m')).toEqual({ status: 200, body: { closed: 1, reached: 3 } });
    for (const [i, c] of alice.entries()) await closedByOperator(c, pending[i]!);
    for (const g of guards) expect(await refusal(g.port, 'alice', '10.2.0.9')).toEqual({ status: 403, code: 'BANNED' });

    // A replica that was not there when the order went out reads the ban from Redis before it admits anyone.
    const late = await replica();
    expect(await refusal(late.port, 'alice', '10.2.0.9')).toEqual({ status: 403, code: 'BANNED' });
    for (const g of [...guards, late]) await stillServed(await client(g.port, 'bob', '10.2.0.9'));
  });

  it('a replica refuses a banned user from its very first upgrade: bans are loaded before it listens', async () => {
    const [first] = await replicas(1);
    expect(await closeOn(first!.adminPort, 'user=alice&ban=1m')).toEqual({ status: 200, body: { closed: 0, reached: 1 } });
    const token = await jwt('alice', SECRET);
    const answers: string[] = [];
    // Upgrades knocking from before the replica listens are answered in its first moments; a few starts
    // make a window between listening and reading the bans show.
    for (let start = 0; start < 3; start++) {
      const ports = { port: await freePort(), adminPort: await freePort() };
      const knocks = Promise.all([0, 1, 2].map(() => knock(ports.port, token, 100)));
      const late = await fx.spawnReplica(() => lines(objectAdmin(ports.adminPort)), ports);
      answers.push(...(await knocks).flat());
      await late.stop();
    }
    expect(answers.filter((a) => a !== '403 BANNED')).toEqual([]);
    expect(answers.length).toBeGreaterThanOrEqual(9);
  });

  it('ip= closes that address on every replica and ban= refuses it everywhere, whoever the user', async () => {
    const guards = await replicas(3);
    const fromIt = await Promise.all(guards.map((g, i) => client(g.port, `user${i}`, '10.3.0.1')));
    const other = await Promise.all(guards.map((g, i) => client(g.port, `user${i}`, '10.3.0.2')));
    const pending = fromIt.map((c) => closed(c.ws));
    expect(await closeOn(guards[2]!.adminPort, 'ip=10.3.0.1&ban=1m')).toEqual({ status: 200, body: { closed: 1, reached: 3 } });
    for (const [i, c] of fromIt.entries()) await closedByOperator(c, pending[i]!);
    for (const c of other) await stillServed(c);
    for (const g of guards) expect(await refusal(g.port, 'someone-else', '10.3.0.1')).toEqual({ status: 403, code: 'BANNED' });
    const late = await replica();
    expect(await refusal(late.port, 'someone-else', '10.3.0.1')).toEqual({ status: 403, code: 'BANNED' });
  });

  it('id= acts on the replica asked only: the same id on the others stays open', async () => {
    const guards = await replicas(3);
    const alice = await Promise.all(guards.map((g, i) => client(g.port, 'alice', `10.4.0.${i + 1}`)));
    const connections = await listed(guards[0]!.adminPort);
    expect(connections.map((c) => c.user)).toEqual(['alice']);
    const id = connections[0]!.id;
    // Ids are per replica: the others hold a connection with the same id.
    for (const g of guards.slice(1)) expect((await listed(g.adminPort)).map((c) => c.id)).toEqual([id]);
    const pending = closed(alice[0]!.ws);
    expect(await closeOn(guards[0]!.adminPort, `id=${id}`)).toEqual({ status: 200, body: { closed: 1 } });
    await closedByOperator(alice[0]!, pending);
    for (const c of alice.slice(1)) await stillServed(c);
  });

  it('401 without the admin token or with a wrong one, and nothing is closed anywhere', async () => {
    const guards = await replicas(3);
    const alice = await Promise.all(guards.map((g, i) => client(g.port, 'alice', `10.5.0.${i + 1}`)));
    expect((await closeOn(guards[0]!.adminPort, 'user=alice', null)).status).toBe(401);
    expect((await closeOn(guards[0]!.adminPort, 'user=alice&ban=1m', `${ADMIN_TOKEN}x`)).status).toBe(401);
    for (const c of alice) await stillServed(c);
    expect(await fx.redis.client.exists('ws-guard:bans')).toBe(0);
  });

  it('the string form of admin has no mutating endpoints (404), yet that replica obeys orders from the others', async () => {
    const [withToken, plain] = [await replica(), await replica(true)];
    await subscribed(2);
    const there = await client(plain.port, 'alice', '10.6.0.1');
    const res = await closeOn(plain.adminPort, 'user=alice', ADMIN_TOKEN);
    expect(res.status).toBe(404);
    expect((res.body as { error: string }).error).toContain('token');
    await stillServed(there);
    const pending = closed(there.ws);
    expect(await closeOn(withToken.adminPort, 'user=alice')).toEqual({ status: 200, body: { closed: 0, reached: 2 } });
    await closedByOperator(there, pending);
  });
});

interface Group {
  child: ChildProcess;
  port: number;
  adminPort: number;
  /** Every JSON log line so far. */
  logs(): { msg: string; pid: number; user?: string; from?: string }[];
}

/** A replica with `workers: 2` (built like spawnGuard's), its stdout kept whole to see both workers listen. */
async function workersGroup(): Promise<Group> {
  const [port, adminPort] = [await freePort(), await freePort()];
  const dir = buildSnapshot();
  const file = join(dir, `store-operator-${process.pid}-${port}.yaml`);
  writeFileSync(file, replicaYaml({ port, adminPort }, lines(objectAdmin(adminPort), ['workers: 2'])));
  const child = spawn(process.execPath, [join(dir, 'bin/ws-guard.js'), '--config', file], { stdio: ['ignore', 'pipe', 'inherit'] });
  fx.afterThisTest(() => stopGroup(child));
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const logs = () => out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as ReturnType<Group['logs']>[number]);
  await until(() => logs().filter((l) => l.msg === 'ws-guard listening').length === 2, 15_000, 'two workers listening');
  return { child, port, adminPort, logs };
}

/** SIGTERM, so the primary takes its workers down with it; SIGKILL if that takes more than 5 s. */
async function stopGroup(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

describe('POST /connections/close with workers: 2 and the store', () => {
  it('an order from a single replica reaches both workers; an order on the workers\' primary reaches the other replica and each worker once', async () => {
    const group = await workersGroup();
    const single = await replica();
    // The single replica and both workers; the primary only publishes.
    await subscribed(3);

    // Two connections to the group land on its two workers (the primary deals them out in turn).
    const aliceInGroup = [await client(group.port, 'alice', '10.7.0.1'), await client(group.port, 'alice', '10.7.0.2')];
    const bobInGroup = [await client(group.port, 'bob', '10.7.1.1'), await client(group.port, 'bob', '10.7.1.2')];
    const aliceAlone = await client(single.port, 'alice', '10.7.0.3');
    const bobAlone = await client(single.port, 'bob', '10.7.1.3');
    const inGroup = await listed(group.adminPort);
    const workerOf = (user: string) => new Set(inGroup.filter((c) => c.user === user).map((c) => Math.floor(c.id / 1e9)));
    expect(workerOf('alice').size).toBe(2);
    expect(workerOf('bob').size).toBe(2);

    const aliceClosed = [...aliceInGroup, aliceAlone].map((c) => closed(c.ws));
    expect(await closeOn(single.adminPort, 'user=alice')).toEqual({ status: 200, body: { closed: 1, reached: 3 } });
    for (const [i, c] of [...aliceInGroup, aliceAlone].entries()) await closedByOperator(c, aliceClosed[i]!);
    for (const c of [...bobInGroup, bobAlone]) await stillServed(c);
    const fromOther = (user: string) => group.logs().filter((l) => l.msg === 'connections closed by an operator on another replica' && l.user === user);
    await until(() => fromOther('alice').length === 2, 5000, 'both workers to apply the order');
    expect(new Set(fromOther('alice').map((l) => l.pid)).size).toBe(2);

    const bobClosed = [...bobInGroup, bobAlone].map((c) => closed(c.ws));
    // The workers closed theirs over IPC (2); the order then reached the single replica and both workers,
    // which skip it as their primary's own.
    expect(await closeOn(group.adminPort, 'user=bob')).toEqual({ status: 200, body: { closed: 2, reached: 3 } });
    for (const [i, c] of [...bobInGroup, bobAlone].entries()) await closedByOperator(c, bobClosed[i]!);
    // Redis delivers a channel's messages in order: once both workers have applied an order sent after
    // bob's, they have seen bob's too, and they did not apply it a second time.
    expect(await closeOn(single.adminPort, 'user=nobody')).toEqual({ status: 200, body: { closed: 0, reached: 3 } });
    await until(() => fromOther('nobody').length === 2, 5000, 'both workers to apply the later order');
    expect(fromOther('bob')).toEqual([]);
  });
});
