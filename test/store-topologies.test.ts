import { execFile } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, open } from './helpers/clients.js';
import { sleep, until, type GuardProc } from './helpers/fuzz.js';
import { ended, launch, startRedis, storedSlots } from './helpers/redis.js';
import { replicaFixture } from './helpers/replicas.js';

// The Sentinel and Cluster forms of store.redis against Debian's redis-server in those roles: the slot
// scripts touch several keys at once, which Redis Cluster allows only within one hash slot ({slots}).

const run = promisify(execFile);
const fx = replicaFixture({ redis: false });
let dir: string;
const servers: ChildProcess[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'ws-guard-topologies-'));
});
// Runs before the fixture's afterAll: the guards are stopped by then (after each test), the upstream not yet.
afterAll(async () => {
  for (const s of servers) s.kill('SIGKILL');
  await Promise.all(servers.map(ended));
  rmSync(dir, { recursive: true, force: true });
});

/** A port whose cluster bus port (port + 10000) is free too. */
async function clusterPort(): Promise<number> {
  for (;;) {
    const port = await freePort();
    if (port + 10000 > 65535) continue;
    const { default: net } = await import('node:net');
    const free = await new Promise<boolean>((resolve) => {
      const server = net.createServer().once('error', () => resolve(false));
      server.listen(port + 10000, '127.0.0.1', () => server.close(() => resolve(true)));
    });
    if (free) return port;
  }
}

function twoReplicas(store: string, limits: string): Promise<GuardProc[]> {
  return fx.spawnReplicas(2, (ports) => [`upstream: ${fx.upstream.url}`, `admin: 127.0.0.1:${ports.adminPort}`, `store: ${store}`, `limits: ${limits}`]);
}

async function attempt(port: number): Promise<number | string> {
  try {
    fx.track(await open(`ws://127.0.0.1:${port}/ws/echo`));
    return 101;
  } catch (err) {
    const e = err as { status?: number; headers?: Record<string, string> };
    return e.headers?.['x-ws-guard-error'] ?? e.status ?? 0;
  }
}

describe('store.redis topologies', () => {
  it('Sentinel: the replicas find the master through a sentinel and count slots there', async () => {
    const master = await freePort();
    const sentinel = await freePort();
    servers.push(await launch(master));
    const conf = join(dir, 'sentinel.conf');
    writeFileSync(conf, `sentinel monitor main 127.0.0.1 ${master} 1\n`);
    servers.push(await launch(sentinel, [conf, '--sentinel'], dir));
    const [a, b] = await twoReplicas(`{ redis: { sentinels: ["127.0.0.1:${sentinel}"], name: main }, leaseTtl: 2s }`, '{ connections: { total: 3 } }');
    const results = [];
    for (let i = 0; i < 6; i++) results.push(await attempt(i % 2 === 0 ? a!.port : b!.port));
    expect(results.filter((r) => r === 101)).toHaveLength(3);
    expect(results.filter((r) => r === 'CONNECTIONS_FULL')).toHaveLength(3);
    for (const g of [a!, b!]) expect(g.logs().filter((l) => l.msg?.toString().startsWith('limit store unreachable'))).toEqual([]);
  }, 30_000);

  it('Cluster: slot counts stay exact across three masters; handshake buckets live on any node', async () => {
    const ports = [await clusterPort(), await clusterPort(), await clusterPort()];
    for (const port of ports) {
      const nodeDir = mkdtempSync(join(dir, `node-${port}-`));
      servers.push(await launch(port, ['--cluster-enabled', 'yes', '--cluster-config-file', join(nodeDir, 'nodes.conf')], nodeDir));
    }
    await run('redis-cli', ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '0', '--cluster-yes']);
    // The nodes agree on the slot map a moment after create returns.
    for (let i = 0; i < 100; i++) {
      const { stdout } = await run('redis-cli', ['-p', String(ports[0]), 'cluster', 'info']);
      if (stdout.includes('cluster_state:ok')) break;
      await sleep(100);
    }
    const nodes = ports.map((p) => `"127.0.0.1:${p}"`).join(', ');
    const [a, b] = await twoReplicas(`{ redis: { cluster: [${nodes}] }, leaseTtl: 2s }`, '{ connections: { total: 3, perIp: 3 }, handshakes: { rate: 1/minute, burst: 5 } }');
    const results = [];
    for (let i = 0; i < 6; i++) results.push(await attempt(i % 2 === 0 ? a!.port : b!.port));
    expect(results.slice(0, 5).filter((r) => r === 101)).toHaveLength(3);
    expect(results.slice(0, 5).filter((r) => r === 'CONNECTIONS_FULL')).toHaveLength(2);
    // The sixth handshake from this address is over the cluster-wide burst of 5.
    expect(results[5]).toBe('HANDSHAKE_RATE');
    for (const g of [a!, b!]) expect(g.logs().filter((l) => l.msg?.toString().startsWith('limit store unreachable'))).toEqual([]);
  }, 30_000);
});

describe('store.redis with workers: 2', () => {
  it('each worker is a replica; a worker killed with SIGKILL gives its slots back at once, not after leaseTtl', async () => {
    const redis = await startRedis();
    try {
      const group = await fx.spawnReplica((ports) => [
        `upstream: ${fx.upstream.url}`, `admin: 127.0.0.1:${ports.adminPort}`, 'workers: 2',
        `store: { redis: "${redis.url}", leaseTtl: 60s }`, 'limits: { connections: { total: 4 } }',
      ]);
      const workers = () => readFileSync(`/proc/${group.child.pid}/task/${group.child.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
      await until(async () => (await redis.client.zcard('ws-guard:{slots}:replicas')) === 2, 10_000, 'both workers registered');
      const [victim] = workers();
      const statuses = [];
      for (let i = 0; i < 6; i++) statuses.push(await attempt(group.port));
      expect(statuses.filter((s) => s === 101)).toHaveLength(4);
      expect(statuses.filter((s) => s === 'CONNECTIONS_FULL')).toHaveLength(2);
      expect(await storedSlots(redis.client, 't:0:')).toBe(4);

      const open = fx.sockets.slice(-4);
      const gone = open.map((ws) => new Promise<boolean>((resolve) => {
        ws.once('close', () => resolve(true));
        setTimeout(() => resolve(false), 3000);
      }));
      process.kill(victim!, 'SIGKILL');
      const closedCount = (await Promise.all(gone)).filter(Boolean).length;
      expect(closedCount).toBeGreaterThan(0);
      // Well within leaseTtl (60 s): the primary resigned the dead worker's replica.
      await until(async () => (await storedSlots(redis.client, 't:0:')) === 4 - closedCount, 5000, 'the dead worker\'s slots to come back');
      expect(await attempt(group.port)).toBe(101);
    } finally {
      await redis.stop();
    }
  }, 30_000);
});
