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
  return cliWith({ JWT_SECRET }, ...args);
}

function cliWith(env: NodeJS.ProcessEnv, ...args: string[]) {
  const base = { ...process.env };
  delete base.JWT_SECRET;
  return spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 20_000, env: { ...base, ...env } });
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

  it('check: masks the admin token', () => {
    const token = 'admin-token-for-the-cli-test-0123';
    const path = file('admin-token.yaml', 'listen: 127.0.0.1:8080\nupstream: http://127.0.0.1:8000\nadmin:\n  listen: 127.0.0.1:9901\n  token: ${ADMIN_TOKEN}\n');
    const result = cliWith({ ADMIN_TOKEN: token }, 'check', path);
    expect(result.status).toBe(0);
    expect(result.stdout).toMatch(/token: "\*{8}"/);
    expect(result.stdout).not.toContain(token);
  });

  it('check: masks the Redis passwords, in the URL and in the Sentinel form', () => {
    const pw = 'redis-password-for-the-cli-test';
    const url = file('store-url.yaml', 'listen: 127.0.0.1:8080\nupstream: http://127.0.0.1:8000\nstore:\n  redis: redis://app:${REDIS_PASSWORD}@10.0.0.5:6379/0\n');
    const sentinel = file('store-sentinel.yaml', 'listen: 127.0.0.1:8080\nupstream: http://127.0.0.1:8000\nstore:\n  redis:\n    sentinels: [10.0.0.5:26379]\n    name: main\n    password: ${REDIS_PASSWORD}\n    sentinelPassword: ${REDIS_PASSWORD}\n');
    for (const path of [url, sentinel]) {
      const result = cliWith({ REDIS_PASSWORD: pw }, 'check', path);
      expect(result.status).toBe(0);
      expect(result.stdout).toMatch(/\*{8}/);
      expect(result.stdout).not.toContain(pw);
    }
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

  it('check: an unset or empty variable is one line naming it', () => {
    const example = join(root, 'config/guard.example.yaml');
    const unset = cliWith({}, 'check', example);
    expect(unset.status).toBe(1);
    expect(unset.stderr).toBe('ws-guard: invalid config:\n  auth.jwt.secret: environment variable JWT_SECRET is not set\n');
    const empty = cliWith({ JWT_SECRET: '' }, 'check', example);
    expect(empty.status).toBe(1);
    expect(empty.stderr).toBe('ws-guard: invalid config:\n  auth.jwt.secret: environment variable JWT_SECRET is empty\n');
  });

  it('check: a missing file and a YAML syntax error are one line each', () => {
    const missing = join(dir, 'missing.yaml');
    const result = cli('check', missing);
    expect(result.status).toBe(1);
    expect(result.stderr).toBe(`ws-guard: cannot read config file ${missing}: no such file\n`);
    const broken = file('broken.yaml', 'listen: 127.0.0.1:1\nupstream: http://127.0.0.1:2\ntimeouts:\n  close: 5s\n    drain: 1s\nfoo: : bar\n');
    const syntax = cli('check', broken);
    expect(syntax.status).toBe(1);
    expect(syntax.stderr).toBe(`ws-guard: ${broken}:4:10: invalid YAML: Nested mappings are not allowed in compact mappings\n`);
    // The same for the guard itself, before anything listens.
    expect(cli('--config', missing).stderr).toBe(`ws-guard: cannot read config file ${missing}: no such file\n`);
  });

  it('check: names the nearest key for a misspelt one, and the number a unit is missing from', () => {
    const typo = file('typo.yaml', 'listen: 127.0.0.1:1\nupstream: http://127.0.0.1:2\ntimeouts: { clsoe: 5s }\nlimits: { messages: { rate: 10/min, bursst: 5 }, messageSize: 65536 }\n');
    const result = cli('check', typo);
    expect(result.status).toBe(1);
    expect(result.stderr).toBe([
      'ws-guard: invalid config:',
      '  timeouts.clsoe: unknown key, did you mean close?',
      '  limits.messages.bursst: unknown key, did you mean burst?',
      '  limits.messageSize: expected a size like 64KiB or 1MiB, got 65536 (a number: add a unit, e.g. 65536B)',
      '',
    ].join('\n'));
  });

  it('check and token take the config file as the argument or with -c/--config, and refuse two different ones', async () => {
    const example = join(root, 'config/guard.example.yaml');
    const other = file('other.yaml', 'listen: 127.0.0.1:1\nupstream: http://127.0.0.1:2\n');
    for (const args of [['check', example], ['check', '-c', example], ['check', '--config', example], ['--config', example, 'check'], ['check', example, '-c', example]]) {
      const result = cli(...args);
      expect(result.status, args.join(' ')).toBe(0);
      expect(result.stdout, args.join(' ')).toMatch(/valid/);
    }
    const twice = cli('check', example, '--config', other);
    expect(twice.status).toBe(1);
    expect(twice.stderr).toBe(`ws-guard: check: two config files given (${example} and ${other}); give one: ws-guard check <file>, or ws-guard check --config <file>\n`);
    const none = cli('check');
    expect(none.status).toBe(1);
    expect(none.stderr).toBe('ws-guard: check needs a config file: ws-guard check <file>, or ws-guard check --config <file>\n');
    for (const args of [['token', example], ['token', '-c', example], ['token', '--sub', 'bob', example]]) {
      const result = cli(...args);
      expect(result.status, args.join(' ')).toBe(0);
      await jwtVerify(result.stdout.trim(), new TextEncoder().encode(JWT_SECRET), { algorithms: ['HS256'] });
    }
    expect(cli('token', example, '-c', other).status).toBe(1);
    expect(cli('token').stderr).toMatch(/^ws-guard: token needs a config file/);
    expect(cli('check', '--help').stdout).toMatch(/check \[options\] \[file\][\s\S]*-c, --config <file>/);
    expect(cli('token', '--help').stdout).toMatch(/token \[options\] \[file\][\s\S]*-c, --config <file>/);
  });

  it('check: shows auth: false on a route that turns auth off', () => {
    const result = cli('check', join(root, 'config/guard.example.yaml'));
    expect(result.status).toBe(0);
    expect(result.stdout).toMatch(/- path: \/public\n\s+auth: false\n/);
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
      const lines = out.split('\n').filter(Boolean).map((line) => JSON.parse(line) as Record<string, unknown>);
      expect(lines.every((line) => line.service === 'ws-guard')).toBe(true);
      // Logs name the top-level settings as metrics do: route "/".
      expect(lines.find((line) => line.msg === 'connection closed')).toMatchObject({ route: '/', path: '/ws/echo' });
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
      // Plain HTTP on a route with auth needs the token too (http: auth, the default since plain HTTP is checked).
      expect((await fetch(`http://127.0.0.1:${port}/hello`)).status).toBe(401);
      const res = await fetch(`http://127.0.0.1:${port}/hello`, { headers: { Authorization: `Bearer ${token!}` } });
      expect(res.status).toBe(200);
      const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
      child.kill('SIGINT');
      expect(await exited).toBe(0);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });
});
