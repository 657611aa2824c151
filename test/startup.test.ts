import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from './helpers/clients.js';

// The built CLI, started where it cannot listen: one clear line, exit 1, nothing left running.
const bin = fileURLToPath(new URL('../bin/ws-guard.js', import.meta.url));
let dir: string;
let busy: net.Server;
let busyPort: number;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ws-guard-startup-'));
  busy = net.createServer();
  await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
  busyPort = (busy.address() as net.AddressInfo).port;
});
afterAll(async () => {
  await new Promise((resolve) => busy.close(resolve));
  rmSync(dir, { recursive: true, force: true });
});

interface Outcome {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

let files = 0;
/** Runs the CLI with this config; kills it after `timeoutMs`, which then shows as a null exit code. */
function runWith(config: string, timeoutMs = 15_000): Promise<Outcome> {
  const file = join(dir, `startup-${++files}.yaml`);
  writeFileSync(file, config);
  const started = Date.now();
  const child = spawn(process.execPath, [bin, '--config', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  return new Promise((resolve) => {
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, ms: Date.now() - started });
    });
  });
}

const UPSTREAM = 'upstream: http://127.0.0.1:9\n';

describe('a listener that cannot start', () => {
  it('busy listen port: one line naming the listener and address, exit 1, no "listening"', async () => {
    const result = await runWith(`listen: 127.0.0.1:${busyPort}\n${UPSTREAM}`);
    expect(result.code).toBe(1);
    expect(result.stderr).toBe(`ws-guard: cannot listen on 127.0.0.1:${busyPort} (listen): address already in use\n`);
    expect(result.stdout).not.toMatch(/listening/);
  });

  it('busy admin port: the guard listener was up, yet no "listening" line; exit 1 and the guard port is free again', async () => {
    const port = await freePort();
    const result = await runWith(`listen: 127.0.0.1:${port}\nadmin: 127.0.0.1:${busyPort}\n${UPSTREAM}`);
    expect(result.code).toBe(1);
    expect(result.stderr).toBe(`ws-guard: cannot listen on 127.0.0.1:${busyPort} (admin): address already in use\n`);
    expect(result.stdout).not.toMatch(/listening/);
    const probe = net.createServer();
    await new Promise<void>((resolve, reject) => probe.once('error', reject).listen(port, '127.0.0.1', resolve));
    await new Promise((resolve) => probe.close(resolve));
  });

  it('an address this machine does not have (192.0.2.1, TEST-NET-1): "address not available"', async () => {
    const result = await runWith(`listen: 192.0.2.1:0\n${UPSTREAM}`);
    expect(result.code).toBe(1);
    expect(result.stderr).toBe('ws-guard: cannot listen on 192.0.2.1:0 (listen): address not available\n');
  });

  it('workers: 2 with a busy port: one line, exit 1 within seconds, no worker forked again', async () => {
    const result = await runWith(`listen: 127.0.0.1:${busyPort}\nworkers: 2\n${UPSTREAM}`);
    expect(result.code).toBe(1);
    expect(result.ms).toBeLessThan(5000);
    expect(result.stderr).toBe(`ws-guard: cannot listen on 127.0.0.1:${busyPort} (listen): address already in use\n`);
    expect(result.stdout).not.toMatch(/starting another|listening/);
  });

  it('workers: 2 with a busy admin port: one line, exit 1, no worker forked', async () => {
    const result = await runWith(`listen: 127.0.0.1:0\nadmin: 127.0.0.1:${busyPort}\nworkers: 2\n${UPSTREAM}`);
    expect(result.code).toBe(1);
    expect(result.stderr).toBe(`ws-guard: cannot listen on 127.0.0.1:${busyPort} (admin): address already in use\n`);
    expect(result.stdout).not.toMatch(/primary started/);
  });
});
