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

// The admin kill switch with workers: 2 (the built CLI): the primary gathers the listing from both
// workers and sends close and ban to both over IPC.

const bin = fileURLToPath(new URL('../bin/ws-guard.js', import.meta.url));
const ADMIN_TOKEN = 'workers-admin-token-0123456789';
let upstream: Upstream;
let dir: string;

beforeAll(async () => {
  upstream = await startUpstream();
  dir = mkdtempSync(join(tmpdir(), 'ws-guard-admin-workers-'));
});
afterAll(async () => {
  await upstream?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('admin /connections with workers: 2', () => {
  it('lists the connections of both workers, closes by id and by ip in both, and a ban holds in both', async () => {
    const port = await freePort();
    const adminPort = await freePort();
    const file = join(dir, 'workers.yaml');
    writeFileSync(file, [
      `listen: 127.0.0.1:${port}`,
      `upstream: ${upstream.url}`,
      'admin:',
      `  listen: 127.0.0.1:${adminPort}`,
      '  token: ${ADMIN_TOKEN}',
      'workers: 2',
      '',
    ].join('\n'));
    const child = spawn(process.execPath, [bin, '--config', file], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ADMIN_TOKEN } });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const listening = () => out.split('\n').filter((l) => l.includes('"ws-guard listening"')).length;
    const admin = async (path: string, method = 'GET') => {
      const res = await fetch(`http://127.0.0.1:${adminPort}${path}`, { method, headers: { Authorization: `Bearer ${ADMIN_TOKEN}` } });
      return { status: res.status, body: (await res.json()) as any };
    };
    const sockets: WebSocket[] = [];
    try {
      await until(() => listening() === 2, 15_000, 'two workers');
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

      const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
    } finally {
      for (const ws of sockets) ws.terminate();
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });
});
