import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type WebSocket from 'ws';
import { freePort, open } from './helpers/clients.js';
import { removeSnapshot, spawnGuard, type GuardProc } from './helpers/fuzz.js';
import { startRedis, storedSlots, type RedisServer } from './helpers/redis.js';
import { startUpstream, type Upstream } from './helpers/upstream.js';

let upstream: Upstream;
let redis: RedisServer;
const running: GuardProc[] = [];
const sockets: WebSocket[] = [];

beforeAll(async () => {
  [upstream, redis] = await Promise.all([startUpstream(), startRedis()]);
});
afterEach(async () => {
  for (const ws of sockets.splice(0)) ws.terminate();
  await Promise.all(running.splice(0).map((g) => g.stop()));
  await redis.client.flushall();
});
afterAll(async () => {
  await Promise.all([upstream?.stop(), redis?.stop()]);
  removeSnapshot();
});

async function replicas(n: number, extra: string[]): Promise<GuardProc[]> {
  const started = await Promise.all(
    Array.from({ length: n }, async () => {
      const ports = { port: await freePort(), adminPort: await freePort() };
      const yaml = [`listen: 127.0.0.1:${ports.port}`, `upstream: ${upstream.url}`, `admin: 127.0.0.1:${ports.adminPort}`, `store: { redis: "${redis.url}", leaseTtl: 2s }`, ...extra, ''].join('\n');
      return spawnGuard(yaml, {}, ports);
    }),
  );
  running.push(...started);
  return started;
}

async function attempt(port: number, path = '/ws/echo', headers: Record<string, string> = {}): Promise<number> {
  try {
    sockets.push(await open(`ws://127.0.0.1:${port}${path}`, undefined, { headers }));
    return 101;
  } catch (err) {
    return (err as { status?: number }).status ?? 0;
  }
}

describe('store.redis: connection slots across replicas', () => {
  it('total: 4 on three replicas admits exactly four, whichever replicas the clients hit', async () => {
    const guards = await replicas(3, ['limits: { connections: { total: 4 } }']);
    const statuses: number[] = [];
    for (let i = 0; i < 9; i++) statuses.push(await attempt(guards[i % 3]!.port));
    expect(statuses.filter((s) => s === 101)).toHaveLength(4);
    expect(statuses.filter((s) => s === 503)).toHaveLength(5);
    expect(await storedSlots(redis.client, 't:0:')).toBe(4);
  });
});
