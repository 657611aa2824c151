import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type WebSocket from 'ws';
import { freePort, open } from './helpers/clients.js';
import { startTestGuard, until, type TestGuard } from './helpers/guard.js';
import { startUpstream, type Upstream } from './helpers/upstream.js';

// Debian's nginx runs the repository's nginx.example.conf (ports, certificate and log paths substituted)
// in front of ws-guard, which trusts only 127.0.0.1 (nginx). Clients come from other loopback addresses.
const EXAMPLE = readFileSync(new URL('../nginx.example.conf', import.meta.url), 'utf8');
let upstream: Upstream;
let guard: TestGuard;
let nginx: ChildProcess;
let nginxPort: number;
let dir: string;
let cert: Buffer;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ws-guard-nginx-'));
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1',
    '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'),
  ], { stdio: 'ignore' });
  cert = readFileSync(join(dir, 'cert.pem'));
  upstream = await startUpstream();
  guard = await startTestGuard({
    upstream: upstream.url,
    trustedProxies: ['127.0.0.1/32'],
    limits: { connections: { perIp: 1 } },
  });
  nginxPort = await freePort();
  const site = EXAMPLE
    .replace('server 127.0.0.1:8080;', `server 127.0.0.1:${guard.port};`)
    .replace('listen 443 ssl;', `listen 127.0.0.1:${nginxPort} ssl;`)
    .replace('/etc/ssl/ws-guard/fullchain.pem', join(dir, 'cert.pem'))
    .replace('/etc/ssl/ws-guard/privkey.pem', join(dir, 'key.pem'))
    .replace('/var/log/nginx/ws-guard.access.log', join(dir, 'access.log'));
  writeFileSync(join(dir, 'site.conf'), site);
  writeFileSync(join(dir, 'nginx.conf'), [
    'daemon off;', 'worker_processes 1;', `pid ${join(dir, 'nginx.pid')};`, `error_log ${join(dir, 'error.log')} warn;`,
    'events { worker_connections 256; }',
    `http { client_body_temp_path ${dir}; proxy_temp_path ${dir}; include ${join(dir, 'site.conf')}; }`, '',
  ].join('\n'));
  nginx = spawn('/usr/sbin/nginx', ['-p', dir, '-c', join(dir, 'nginx.conf')], { stdio: 'ignore' });
  await until(async () => {
    try {
      await fetch(`http://127.0.0.1:${nginxPort}/`);
      return true;
    } catch (err) {
      return !/ECONNREFUSED/.test(String((err as { cause?: unknown }).cause));
    }
  }, 10_000, 'nginx to listen');
});

afterAll(async () => {
  if (nginx && nginx.exitCode === null) {
    const exited = new Promise((resolve) => nginx.once('exit', resolve));
    nginx.kill('SIGQUIT');
    await exited;
  }
  await guard?.close();
  await upstream?.stop();
  rmSync(dir, { recursive: true, force: true });
});

function viaNginx(from: string, path: string, headers: Record<string, string> = {}) {
  return open(`wss://127.0.0.1:${nginxPort}${path}`, undefined, { ca: cert, localAddress: from, headers });
}

describe('behind nginx', () => {
  it("per-IP limits apply to the client's own address, passed on by nginx and believed from a trusted proxy", async () => {
    const sockets: WebSocket[] = [];
    try {
      sockets.push(await viaNginx('127.0.0.2', '/ws/echo?tag=nginx-a'));
      const second = await viaNginx('127.0.0.2', '/ws/echo').catch((e: { status: number; headers: Record<string, string> }) => e);
      expect(second).toMatchObject({ status: 429, headers: { 'x-ws-guard-error': 'CONNECTIONS_PER_IP' } });
      // Another client behind the same nginx has a slot of its own.
      sockets.push(await viaNginx('127.0.0.3', '/ws/echo'));
      const connect = (await upstream.seen('nginx-a')).find((e) => e.type === 'ws_connect');
      expect(connect.headers['x-forwarded-for']).toBe('127.0.0.2, 127.0.0.1');
      expect(connect.headers['x-forwarded-proto']).toBe('https');
    } finally {
      for (const ws of sockets) ws.close();
    }
    await until(() => guard.store.count().total === 0);
  });

  it('a client cannot spoof its address: a forged X-Forwarded-For through nginx, or sent to ws-guard directly, is ignored', async () => {
    const sockets: WebSocket[] = [];
    try {
      sockets.push(await viaNginx('127.0.0.4', '/ws/echo', { 'X-Forwarded-For': '10.9.9.9' }));
      const spoofed = await viaNginx('127.0.0.4', '/ws/echo', { 'X-Forwarded-For': '10.8.8.8' }).catch((e: { status: number }) => e);
      expect(spoofed).toMatchObject({ status: 429 });

      sockets.push(await open(`${guard.wsUrl}/ws/echo?tag=nginx-direct`, undefined, { localAddress: '127.0.0.5', headers: { 'X-Forwarded-For': '10.7.7.7' } }));
      const again = await open(`${guard.wsUrl}/ws/echo`, undefined, { localAddress: '127.0.0.5', headers: { 'X-Forwarded-For': '10.6.6.6' } })
        .catch((e: { status: number }) => e);
      expect(again).toMatchObject({ status: 429 });
      const connect = (await upstream.seen('nginx-direct')).find((e) => e.type === 'ws_connect');
      expect(connect.headers['x-forwarded-for']).toBe('127.0.0.5');
    } finally {
      for (const ws of sockets) ws.close();
    }
  });
});
