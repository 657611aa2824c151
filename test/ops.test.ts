import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { closed, freePort, nextMessage, open } from './helpers/clients.js';
import { until } from './helpers/guard.js';
import { startUpstream, type Upstream } from './helpers/upstream.js';

// A real ws-guard process (the built CLI), real signals, a real FastAPI upstream.
const bin = fileURLToPath(new URL('../bin/ws-guard.js', import.meta.url));
let upstream: Upstream;
let dir: string;

beforeAll(async () => {
  upstream = await startUpstream();
  dir = mkdtempSync(join(tmpdir(), 'ws-guard-ops-'));
});
afterAll(async () => {
  await upstream?.stop();
  rmSync(dir, { recursive: true, force: true });
});

interface Running {
  child: ChildProcess;
  logs: () => Record<string, unknown>[];
  stop(): Promise<void>;
}

async function startProcess(configFile: string, args: string[] = []): Promise<Running> {
  const child = spawn(process.execPath, [bin, '--config', configFile, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const logs = () => out.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  await until(() => logs().some((l) => l.msg === 'ws-guard listening'), 10_000, 'the guard to listen');
  return {
    child,
    logs,
    stop: async () => {
      if (child.exitCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

describe('hot reload', () => {
  it('SIGHUP applies a valid config to new connections, keeps open ones, and refuses an invalid one', async () => {
    const port = await freePort();
    const file = join(dir, 'reload.yaml');
    const base = `listen: 127.0.0.1:${port}\nupstream: ${upstream.url}\n`;
    writeFileSync(file, base);
    const guard = await startProcess(file);
    try {
      const before = await open(`ws://127.0.0.1:${port}/ws/echo`);
      writeFileSync(file, `${base}origins: [https://app.example.com]\n`);
      guard.child.kill('SIGHUP');
      await until(() => guard.logs().some((l) => l.msg?.toString().startsWith('config reloaded')));
      const refused = await open(`ws://127.0.0.1:${port}/ws/echo`).catch((e: { status: number }) => e.status);
      expect(refused).toBe(403);
      (await open(`ws://127.0.0.1:${port}/ws/echo`, undefined, { origin: 'https://app.example.com' })).close();
      before.send('still here');
      expect(String((await nextMessage(before)).data)).toBe('still here');

      writeFileSync(file, `${base}origins: [https://app.example.com]\nlimitz: {}\n`);
      guard.child.kill('SIGHUP');
      await until(() => guard.logs().some((l) => l.msg?.toString().startsWith('config reload refused')));
      expect(guard.logs().find((l) => l.msg?.toString().startsWith('config reload refused'))).toMatchObject({ problems: ['limitz: unknown key, did you mean limits?'] });
      (await open(`ws://127.0.0.1:${port}/ws/echo`, undefined, { origin: 'https://app.example.com' })).close();
      expect(await open(`ws://127.0.0.1:${port}/ws/echo`).catch((e: { status: number }) => e.status)).toBe(403);
      before.close();
    } finally {
      await guard.stop();
    }
  });

  it('--watch reloads when the file changes', async () => {
    const port = await freePort();
    const file = join(dir, 'watch.yaml');
    const base = `listen: 127.0.0.1:${port}\nupstream: ${upstream.url}\n`;
    writeFileSync(file, base);
    const guard = await startProcess(file, ['--watch']);
    try {
      (await open(`ws://127.0.0.1:${port}/ws/echo`)).close();
      writeFileSync(file, `${base}origins: [https://app.example.com]\n`);
      await until(() => guard.logs().some((l) => l.trigger === 'watch'), 10_000, 'the watch reload');
      expect(await open(`ws://127.0.0.1:${port}/ws/echo`).catch((e: { status: number }) => e.status)).toBe(403);
    } finally {
      await guard.stop();
    }
  });
});

describe('TLS', () => {
  function selfSigned(name: string): { cert: string; key: string } {
    const cert = join(dir, `${name}.crt`);
    const key = join(dir, `${name}.key`);
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
      '-subj', `/CN=${name}`, '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', key, '-out', cert,
    ], { stdio: 'ignore' });
    return { cert, key };
  }

  async function fingerprint(port: number, ca: string): Promise<string> {
    const ws = new WebSocket(`wss://127.0.0.1:${port}/ws/echo`, { ca: (await import('node:fs')).readFileSync(ca) });
    await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
    ws.send('over tls');
    expect(String((await nextMessage(ws)).data)).toBe('over tls');
    const print = (ws as unknown as { _socket: import('node:tls').TLSSocket })._socket.getPeerCertificate().fingerprint256;
    ws.close();
    await closed(ws);
    return print;
  }

  it('serves wss:// and reloads its certificate on SIGHUP', async () => {
    const first = selfSigned('first');
    const second = selfSigned('second');
    const port = await freePort();
    const file = join(dir, 'tls.yaml');
    const config = (c: { cert: string; key: string }) =>
      `listen: { host: 127.0.0.1, port: ${port}, tls: { cert: ${c.cert}, key: ${c.key} } }\nupstream: ${upstream.url}\n`;
    writeFileSync(file, config(first));
    const guard = await startProcess(file);
    try {
      const a = await fingerprint(port, first.cert);
      writeFileSync(file, config(second));
      guard.child.kill('SIGHUP');
      await until(() => guard.logs().some((l) => l.msg?.toString().startsWith('config reloaded')));
      const b = await fingerprint(port, second.cert);
      expect(b).not.toBe(a);
    } finally {
      await guard.stop();
    }
  });

  it('refuses a key that does not fit the certificate, naming the key, before listening', () => {
    const first = selfSigned('mismatch-a');
    const other = selfSigned('mismatch-b');
    const file = join(dir, 'bad-tls.yaml');
    writeFileSync(file, `listen: { host: 127.0.0.1, port: 1, tls: { cert: ${first.cert}, key: ${other.key} } }\nupstream: ${upstream.url}\n`);
    const result = (() => {
      try {
        execFileSync(process.execPath, [bin, 'check', file], { stdio: 'pipe' });
        return { status: 0, stderr: '' };
      } catch (err) {
        const e = err as { status: number; stderr: Buffer };
        return { status: e.status, stderr: e.stderr.toString() };
      }
    })();
    expect(result.status).toBe(1);
    expect(result.stderr).toMatch(/listen\.tls\.key: does not fit the certificate/);
  });
});
