import { describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { ERRORS } from '../src/errors.js';
import { closed, open } from './helpers/clients.js';
import type { GuardProc } from './helpers/fuzz.js';
import { until } from './helpers/guard.js';
import { jwt, jwtAuthLine, replicaFixture, upstreamClose } from './helpers/replicas.js';

/*
 * limits.messages across replicas (store.redis, docs/scaling.md): with `per: user` or `per: ip` the
 * replicas share one bucket in Redis, each passing at most `store.batch` messages on credit before Redis
 * has confirmed them, so over a run of t seconds a key passes at most burst + rate·t + batch·replicas,
 * where three independent buckets would pass 3·(burst + rate·t). `per: connection` stays local. What was
 * admitted is counted where it landed: the FastAPI upstream's records of the echo endpoint.
 */

const SECRET = 'store-messages-secret-long-enough-for-hs256-0123';
const REPLICAS = 3;

const fx = replicaFixture();
let count = 0;
const tag = (what: string) => `store-msg-${process.pid}-${++count}-${what}`;

/** Three replicas on one Redis; with `jwtAuth`, every upgrade needs a token (its `sub` is the user). */
function replicas(batch: number, limits: string, jwtAuth = true): Promise<GuardProc[]> {
  return fx.spawnReplicas(REPLICAS, () => [
    `upstream: ${fx.upstream.url}`,
    `store: { redis: "${fx.redis.url}", leaseTtl: 2s, batch: ${batch} }`,
    ...(jwtAuth ? [jwtAuthLine(SECRET)] : []),
    `limits: { messages: ${limits} }`,
  ]);
}

interface Client {
  ws: WebSocket;
  tag: string;
}

/** One client per replica on /ws/echo, each with its own tag; `protocols` carries the token. */
async function onEachReplica(guards: GuardProc[], protocols: string[] | undefined, options: WebSocket.ClientOptions = {}): Promise<Client[]> {
  return Promise.all(
    guards.map(async (g, i) => {
      const t = tag(`r${i}`);
      const ws = await open(`ws://127.0.0.1:${g.port}/ws/echo?tag=${t}`, protocols, options);
      fx.track(ws);
      return { ws, tag: t };
    }),
  );
}

async function texts(t: string): Promise<number> {
  return (await fx.upstream.seen(t)).filter((e: { type: string }) => e.type === 'ws_text').length;
}

/**
 * Sends as fast as the guard takes them: a client keeps WINDOW unanswered messages in flight, so the guard
 * always has more waiting, while the kernel's buffers never hold so many that the guard would still be
 * reading a backlog long after the client has gone.
 */
const WINDOW = 64;
function flood(ws: WebSocket): void {
  let sent = 0;
  let echoed = 0;
  const pump = () => {
    while (ws.readyState === WebSocket.OPEN && sent - echoed < WINDOW) ws.send(`m${sent++}`);
  };
  ws.on('message', () => {
    echoed++;
    pump();
  });
  pump();
}

/**
 * Floods from every client for `ms`, then cuts them all. Returns what the upstream received in total and
 * the run's length in seconds: from the first send until the upstream had seen every connection end, an
 * upper bound on when the last message could have been admitted.
 */
async function floodFor(clients: Client[], ms: number): Promise<{ admitted: number; seconds: number; upstreamCodes: number[] }> {
  const started = Date.now();
  for (const c of clients) flood(c.ws);
  await new Promise((r) => setTimeout(r, ms));
  for (const c of clients) c.ws.terminate();
  const upstreamCodes = await Promise.all(clients.map((c) => upstreamClose(fx.upstream, c.tag)));
  const seconds = (Date.now() - started) / 1000;
  const admitted = (await Promise.all(clients.map((c) => texts(c.tag)))).reduce((a, b) => a + b, 0);
  return { admitted, seconds, upstreamCodes };
}

/**
 * With onExceed: close and a rate of 1/minute: every client sends 100 messages at once; each connection
 * must end with 1008 MESSAGE_RATE on both sides once the shared bucket is empty. Redis answers "empty"
 * only when the spent tokens reach the burst, so nobody is closed before `burst` messages passed; and at
 * most burst + rate·t + batch·replicas pass.
 */
async function exhaust(clients: Client[], burst: number, batch: number): Promise<{ admitted: number; bound: number }> {
  const codes = clients.map((c) => closed(c.ws));
  const started = Date.now();
  for (let i = 0; i < 100; i++) for (const c of clients) c.ws.send(`m${i}`);
  for (const close of await Promise.all(codes)) expect(close).toEqual({ code: 1008, reason: ERRORS.MESSAGE_RATE.message });
  for (const c of clients) expect(await upstreamClose(fx.upstream, c.tag)).toBe(1008);
  const bound = burst + (Date.now() - started) / 60_000 + batch * REPLICAS;
  const admitted = (await Promise.all(clients.map((c) => texts(c.tag)))).reduce((a, b) => a + b, 0);
  expect(admitted).toBeGreaterThanOrEqual(burst);
  expect(admitted).toBeLessThanOrEqual(bound);
  return { admitted, bound };
}

describe('limits.messages per: user across three replicas (store.batch)', () => {
  it('onExceed: throttle, one connection per replica flooding: admitted ≤ burst + rate·t + batch·3, far below three independent buckets', async () => {
    const [rate, burst, batch] = [20, 20, 5];
    const guards = await replicas(batch, `{ rate: ${rate}/s, burst: ${burst}, per: user, onExceed: throttle }`);
    const clients = await onEachReplica(guards, ['bearer', await jwt('alice', SECRET)]);
    const { admitted, seconds, upstreamCodes } = await floodFor(clients, 2000);
    // Throttled, never closed: each connection ended only when its client went away.
    expect(upstreamCodes).not.toContain(ERRORS.MESSAGE_RATE.close);
    const bound = burst + rate * seconds + batch * REPLICAS;
    const independent = REPLICAS * (burst + rate * seconds);
    console.log(`per: user, throttle: admitted ${admitted} in ${seconds.toFixed(2)} s; bound ${bound.toFixed(1)}; three independent buckets ${independent.toFixed(1)}`);
    expect(admitted).toBeLessThanOrEqual(bound);
    // The shared bucket was really drained, and refilled: more than the burst passed.
    expect(admitted).toBeGreaterThan(burst);
    expect(admitted).toBeLessThan(independent / 2);
    // Redis's own account of it: the bucket's debt (tokens below zero) is what the replicas passed beyond
    // burst + rate·t between their first and last spend.
    const buckets = await fx.redis.client.keys('ws-guard:msg:*');
    expect(buckets).toHaveLength(1);
    expect(Number(await fx.redis.client.hget(buckets[0]!, 'tokens'))).toBeGreaterThanOrEqual(-batch * REPLICAS);
    for (const g of guards) expect(g.exit).toBeUndefined();
  }, 20_000);

  it('onExceed: close: once the cluster-wide bucket is empty every connection of the user gets 1008 MESSAGE_RATE on both sides', async () => {
    const [burst, batch] = [20, 2];
    const guards = await replicas(batch, `{ rate: 1/minute, burst: ${burst}, per: user, onExceed: close }`);
    const clients = await onEachReplica(guards, ['bearer', await jwt('alice', SECRET)]);
    const { admitted, bound } = await exhaust(clients, burst, batch);
    console.log(`per: user, close: admitted ${admitted}; bound ${bound.toFixed(1)}; three independent buckets ${REPLICAS * burst}`);

    // The bucket is the user's: bob, on the same replicas, has a full one.
    const bob = await onEachReplica(guards.slice(0, 1), ['bearer', await jwt('bob', SECRET)]);
    const bobCodes = closed(bob[0]!.ws);
    for (let i = 0; i < burst; i++) bob[0]!.ws.send(`b${i}`);
    await until(async () => (await texts(bob[0]!.tag)) === burst, 5000, `bob's ${burst} messages`);
    bob[0]!.ws.send('one too many');
    expect((await bobCodes).code).toBe(1008);
    expect(await texts(bob[0]!.tag)).toBe(burst);
  }, 20_000);
});

describe('limits.messages per: ip across three replicas', () => {
  it('the connections of one address share the bucket cluster-wide (1008 for all); another address has its own', async () => {
    const [burst, batch] = [20, 2];
    const guards = await replicas(batch, `{ rate: 1/minute, burst: ${burst}, per: ip, onExceed: close }`, false);
    const clients = await onEachReplica(guards, undefined, { localAddress: '127.0.0.2' });
    const { admitted, bound } = await exhaust(clients, burst, batch);
    console.log(`per: ip, close: admitted ${admitted}; bound ${bound.toFixed(1)}; three independent buckets ${REPLICAS * burst}`);

    const other = await onEachReplica(guards.slice(2), undefined, { localAddress: '127.0.0.3' });
    for (let i = 0; i < burst; i++) other[0]!.ws.send(`o${i}`);
    await until(async () => (await texts(other[0]!.tag)) === burst, 5000, `the other address's ${burst} messages`);
    expect(other[0]!.ws.readyState).toBe(WebSocket.OPEN);
  }, 20_000);
});

describe('limits.messages per: connection with the store', () => {
  it('stays local: each connection has its own full burst, whatever the others on other replicas did', async () => {
    const burst = 5;
    const guards = await replicas(2, `{ rate: 1/minute, burst: ${burst}, per: connection, onExceed: close }`);
    const clients = await onEachReplica(guards, ['bearer', await jwt('alice', SECRET)]);
    const codes = clients.map((c) => closed(c.ws));
    for (let i = 0; i < 8; i++) for (const c of clients) c.ws.send(`m${i}`);
    for (const close of await Promise.all(codes)) expect(close.code).toBe(1008);
    for (const c of clients) {
      expect(await upstreamClose(fx.upstream, c.tag)).toBe(1008);
      expect(await texts(c.tag)).toBe(burst);
    }
    // Nothing was spent in Redis for them.
    expect(await fx.redis.client.keys('ws-guard:msg:*')).toEqual([]);
  }, 20_000);
});
