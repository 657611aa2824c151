import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type WebSocket from 'ws';
import { closed, freePort, open } from './helpers/clients.js';
import { until } from './helpers/guard.js';
import { startUpstream, type Upstream } from './helpers/upstream.js';

const bin = fileURLToPath(new URL('../bin/ws-guard.js', import.meta.url));
const ADMIN_TOKEN = 'workers-admin-token-0123456789';
let upstream: Upstream;
let dir: string;

beforeAll(async () => {
  upstream = await startUpstream();
  dir = mkdtempSync(join(tmpdir(), 'ws-guard-workers-'));
});
afterAll(async () => {
  await upstream?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/**
 * `workers: 2` on a fresh port, with the `admin` config lines for a fresh admin port and any `extra` lines;
 * resolves once both workers listen.
 */
async function startGroup(admin: (adminPort: number) => string[], extra: string[] = [], env: NodeJS.ProcessEnv = {}) {
  const port = await freePort();
  const adminPort = await freePort();
  const file = join(dir, `group-${port}.yaml`);
  writeFileSync(file, [`listen: 127.0.0.1:${port}`, `upstream: ${upstream.url}`, ...admin(adminPort), 'workers: 2', ...extra, ''].join('\n'));
  const child = spawn(process.execPath, [bin, '--config', file], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ...env } });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const logs = () => out.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { msg: string; pid: number });
  const serving = () => logs().filter((l) => l.msg === 'ws-guard listening').map((l) => l.pid);
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  try {
    await until(() => serving().length === 2, 15_000, 'two workers');
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  return { child, port, adminPort, logs, serving, exited };
}

describe('workers: 2', () => {
  it('share one port; total 4 holds exactly for the group; SIGTERM drains every worker and exits 0', async () => {
    const { child, port, adminPort, serving, exited } = await startGroup((p) => [`admin: 127.0.0.1:${p}`], ['limits: { connections: { total: 4 } }']);
    const sockets: WebSocket[] = [];
    try {
      expect(new Set(serving()).size).toBe(2);

      for (let i = 0; i < 4; i++) sockets.push(await open(`ws://127.0.0.1:${port}/ws/echo`));
      for (let i = 0; i < 3; i++) {
        const refused = await open(`ws://127.0.0.1:${port}/ws/echo`).catch((e: { status: number; headers: Record<string, string> }) => e);
        expect(refused).toMatchObject({ status: 503, headers: { 'x-ws-guard-error': 'CONNECTIONS_FULL' } });
      }
      const metrics = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
      expect(metrics).toMatch(/^ws_guard_connections_active\{route="\/"\} 4$/m);

      const first = sockets.shift()!;
      first.close();
      await closed(first);
      await until(async () => {
        const ws = await open(`ws://127.0.0.1:${port}/ws/echo`).catch(() => undefined);
        if (ws) sockets.push(ws);
        return ws !== undefined;
      }, 5000, 'a slot to come back');

      const closes = sockets.map((ws) => closed(ws));
      child.kill('SIGTERM');
      expect((await Promise.all(closes)).map((c) => c.code)).toEqual([1001, 1001, 1001, 1001]);
      expect(await exited).toBe(0);
    } finally {
      for (const ws of sockets) ws.terminate();
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });
});

describe('workers: 2, one of them misbehaving', () => {
  async function startPlainGroup() {
    const group = await startGroup((p) => [`admin: 127.0.0.1:${p}`]);
    const get = async (path: string) => {
      const res = await fetch(`http://127.0.0.1:${group.adminPort}${path}`);
      return { status: res.status, body: await res.text() };
    };
    return { ...group, get };
  }

  it('a scrape while one worker does not answer: 503 naming it, the primary lives on; after SIGCONT all works and SIGTERM exits 0', async () => {
    const group = await startPlainGroup();
    const [stopped, other] = group.serving() as [number, number];
    try {
      process.kill(stopped, 'SIGSTOP');
      const scrape = await group.get('/metrics');
      expect(scrape.status).toBe(503);
      expect(scrape.body).toBe(`metrics unavailable: worker ${stopped} did not answer within 2000 ms\n`);
      expect(await group.get('/healthz')).toEqual({ status: 200, body: 'ok\n' });
      expect(group.child.exitCode).toBeNull();
      process.kill(stopped, 'SIGCONT');

      const metrics = await group.get('/metrics');
      expect(metrics.status).toBe(200);
      expect(metrics.body).toMatch(/^ws_guard_process_resident_memory_bytes \d+/m);
      const ws = await open(`ws://127.0.0.1:${group.port}/ws/echo`);
      const wsClosed = closed(ws);
      group.child.kill('SIGTERM');
      expect(await group.exited).toBe(0);
      expect((await wsClosed).code).toBe(1001);
      expect(group.logs().filter((l) => l.msg === 'stopping').map((l) => l.pid).sort()).toEqual([stopped, other].sort());
    } finally {
      try {
        process.kill(stopped, 'SIGCONT');
      } catch {
        // Already gone.
      }
      if (group.child.exitCode === null) group.child.kill('SIGKILL');
    }
  });

  it('a worker that crashes while serving is replaced; crashing again and again stops the group with exit 1', async () => {
    const group = await startPlainGroup();
    try {
      // Five replacements are allowed within a minute; the sixth crash is a loop.
      for (let crash = 1; crash <= 6; crash++) {
        const victim = group.serving().at(-1)!;
        process.kill(victim, 'SIGKILL');
        if (crash === 6) break;
        await until(() => group.serving().length === 2 + crash, 10_000, `replacement ${crash}`);
      }
      expect(await group.exited).toBe(1);
      expect(group.logs().filter((l) => l.msg === 'worker exited; starting another')).toHaveLength(5);
      expect(group.logs().some((l) => l.msg === 'workers keep crashing; giving up')).toBe(true);
    } finally {
      if (group.child.exitCode === null) group.child.kill('SIGKILL');
    }
  });
});

// The admin kill switch with workers: 2: the primary gathers the listing from both workers and sends close
// and ban to both over IPC.
describe('admin /connections with workers: 2', () => {
  it('lists the connections of both workers, closes by id and by ip in both, and a ban holds in both', async () => {
    const { child, port, adminPort, exited } = await startGroup((p) => ['admin:', `  listen: 127.0.0.1:${p}`, '  token: ${ADMIN_TOKEN}'], [], { ADMIN_TOKEN });
    const admin = async (path: string, method = 'GET') => {
      const res = await fetch(`http://127.0.0.1:${adminPort}${path}`, { method, headers: { Authorization: `Bearer ${ADMIN_TOKEN}` } });
      return { status: res.status, body: (await res.json()) as any };
    };
    const sockets: WebSocket[] = [];
    try {
      for (let i = 0; i < 4; i++) sockets.push(await open(`ws://127.0.0.1:${port}/ws/echo`));

      let connections: { id: number; ip: string }[] = [];
      await until(async () => {
        connections = (await admin('/connections')).body.connections;
        return connections.length === 4;
      }, 5000, 'four connections listed');
      // Ids are unique in the group, and both workers hold some (the primary deals connections round-robin).
      expect(new Set(connections.map((c) => c.id)).size).toBe(4);
      expect(new Set(connections.map((c) => Math.floor(c.id / 1e9))).size).toBe(2);

      const codes = sockets.map((ws) => closed(ws));
      expect(await admin(`/connections/close?id=${connections[0]!.id}`, 'POST')).toEqual({ status: 200, body: { closed: 1 } });
      expect(await admin('/connections/close?ip=127.0.0.1&ban=1m', 'POST')).toEqual({ status: 200, body: { closed: 3 } });
      expect((await Promise.all(codes)).map((c) => c.code)).toEqual([4003, 4003, 4003, 4003]);

      // Two upgrades in a row land on both workers: each refuses the banned address.
      for (let i = 0; i < 2; i++) {
        const refused = await open(`ws://127.0.0.1:${port}/ws/echo`).catch((e: { status: number; headers: Record<string, string> }) => e);
        expect(refused).toMatchObject({ status: 403, headers: { 'x-ws-guard-error': 'BANNED' } });
      }

      child.kill('SIGTERM');
      expect(await exited).toBe(0);
    } finally {
      for (const ws of sockets) ws.terminate();
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });
});
