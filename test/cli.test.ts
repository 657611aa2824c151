import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { jwtVerify } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { freePort } from './helpers/clients.js';
import { until } from './helpers/guard.js';
import { startUpstream } from './helpers/upstream.js';

// These tests run the built CLI (`npm test` builds first), exactly as a user starts it.
const root = fileURLToPath(new URL('..', import.meta.url));
const bin = join(root, 'bin/ws-guard.js');
const version = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version;
let dir: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'ws-guard-cli-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const JWT_SECRET = 'cli-test-secret-long-enough-for-hs256-0123456789';

function cli(...args: string[]) {
  return spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 20_000, env: { ...process.env, JWT_SECRET } });
}

function file(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

describe('ws-guard CLI', () => {
  it('prints its version and help', () => {
    expect(cli('--version').stdout.trim()).toBe(version);
    const help = cli('--help');
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/--config <file>/);
    expect(help.stdout).toMatch(/check/);
  });

  it('check: a valid file exits 0 and prints the effective config with secrets masked', () => {
    const result = cli('check', join(root, 'config/guard.example.yaml'));
    expect(result.status).toBe(0);
    expect(result.stdout).toMatch(/valid/);
    expect(result.stdout).toMatch(/handshake: 10000/);
    expect(result.stdout).toMatch(/secret: "\*{8}"/);
    expect(result.stdout).not.toContain(JWT_SECRET);
  });

  it('token: mints a token signed with the configured secret', async () => {
    const result = cli('token', '--config', join(root, 'config/guard.example.yaml'), '--sub', 'alice', '--ttl', '10m');
    expect(result.status).toBe(0);
    const { payload } = await jwtVerify(result.stdout.trim(), new TextEncoder().encode(JWT_SECRET), { algorithms: ['HS256'] });
    expect(payload.sub).toBe('alice');
    expect(payload.exp! - payload.iat!).toBe(600);
  });

  it('check: an invalid file exits 1 and names every bad key', () => {
    const bad = file('bad.yaml', 'listen: 8080\nupstream: http://127.0.0.1:8000\ntimeouts: { close: soon }\nlimitz: {}\n');
    const result = cli('check', bad);
    expect(result.status).toBe(1);
    expect(result.stderr).toMatch(/listen: expected host:port/);
    expect(result.stderr).toMatch(/timeouts\.close: expected a duration/);
    expect(result.stderr).toMatch(/limitz: unknown key/);
  });

  it('--config with an invalid file exits 1 before listening', async () => {
    const port = await freePort();
    const bad = file('bad-run.yaml', `listen: 127.0.0.1:${port}\nupstream: nowhere\n`);
    const result = cli('--config', bad);
    expect(result.status).toBe(1);
    expect(result.stderr).toMatch(/upstream: expected an http:\/\/ URL/);
    expect(result.stdout).not.toMatch(/listening/);
  });

  it('runs with a config file, proxies a message, and on SIGTERM closes it with 1001 and exits 0', async () => {
    const upstream = await startUpstream();
    const port = await freePort();
    const config = file('run.yaml', `listen: 127.0.0.1:${port}\nupstream: http://127.0.0.1:\${UP_PORT}\n`);
    const child = spawn(process.execPath, [bin, '--config', config], {
      env: { ...process.env, UP_PORT: String(upstream.port) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    try {
      await until(() => out.includes('ws-guard listening'), 10_000, 'the guard to listen');
      const ws = new WebSocket(`ws://127.0.0.1:${port}/ws/echo`);
      await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
      ws.send('through the real process');
      const reply = await new Promise<string>((resolve) => ws.once('message', (d) => resolve(String(d))));
      expect(reply).toBe('through the real process');
      const closed = new Promise<number>((resolve) => ws.once('close', resolve));
      const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      expect(await closed).toBe(1001);
      expect(await exited).toBe(0);
      await until(async () => (await upstream.seen('')).some((e) => e.type === 'ws_disconnect'));
      expect((await upstream.seen('')).find((e) => e.type === 'ws_disconnect')).toMatchObject({ code: 1001 });
      expect(out.split('\n').filter(Boolean).every((line) => JSON.parse(line).service === 'ws-guard')).toBe(true);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
      await upstream.stop();
    }
  });

  it('demo (npm start) guards a built-in echo app', async () => {
    const port = await freePort();
    const child = spawn(process.execPath, [bin, 'demo', '--listen', `127.0.0.1:${port}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    try {
      await until(() => err.includes('stop with Ctrl-C'), 10_000, 'the demo to start');
      expect(err).toContain(`ws://127.0.0.1:${port}/`);
      const token = /'bearer','([^']+)'/.exec(err)?.[1];
      expect(token).toBeDefined();
      const ws = new WebSocket(`ws://127.0.0.1:${port}/`, ['bearer', token!]);
      await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
      ws.send('hello demo');
      expect(await new Promise<string>((resolve) => ws.once('message', (d) => resolve(String(d))))).toBe('hello demo');
      ws.close();
      const refused = new WebSocket(`ws://127.0.0.1:${port}/`);
      const status = await new Promise<number>((resolve) => refused.once('unexpected-response', (_q, r) => resolve(r.statusCode!)));
      expect(status).toBe(401);
      refused.on('error', () => {});
      const res = await fetch(`http://127.0.0.1:${port}/hello`);
      expect(res.status).toBe(200);
      const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
      child.kill('SIGINT');
      expect(await exited).toBe(0);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });
});
