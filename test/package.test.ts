import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from './helpers/clients.js';
import { until } from './helpers/guard.js';

// ws-guard is installed the way Node users install a package that is not on the registry: from a tarball
// made by `npm pack` (or from git, which npm packs the same way after running `prepare`). The working tree
// (without node_modules, dist and .git) is copied, so `npm pack` there runs `prepare` and builds dist/ from
// the sources alone, as it would for a git install; the tarball is installed with --omit=dev into an empty
// project (one install, from the npm registry) and its CLI is run from node_modules/.bin.
const root = fileURLToPath(new URL('..', import.meta.url));
const { version } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string };
const JWT_SECRET = 'package-test-secret-long-enough-for-hs256-0123456789';
const NPM_TIMEOUT = 120_000;
let dir: string;

/** Without the npm_* variables of the `npm test` around us (its prefix, its lifecycle), as a user's shell. */
const cleanEnv = Object.fromEntries(Object.entries(process.env).filter(([key]) => !/^npm_/i.test(key)));

function npm(args: string[], cwd: string) {
  const env = { ...cleanEnv, npm_config_update_notifier: 'false' };
  const r = spawnSync('npm', args, { cwd, encoding: 'utf8', timeout: NPM_TIMEOUT, env });
  expect(r.status, `npm ${args.join(' ')} in ${cwd}:\n${r.stdout}\n${r.stderr}`).toBe(0);
  return r.stdout;
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'ws-guard-package-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('the npm package', () => {
  let tarball: string;
  let files: string[];
  let project: string;

  it('npm pack builds dist/ (prepare) and packs the CLI, the built code, the example config and the README, no tests', () => {
    const checkout = join(dir, 'checkout');
    const skip = new Set(['node_modules', 'dist', '.git']);
    cpSync(root, checkout, { recursive: true, filter: (src) => !skip.has(relative(root, src).split('/')[0]!) && !src.endsWith('.tgz') });
    symlinkSync(join(root, 'node_modules'), join(checkout, 'node_modules'), 'dir');
    const out = join(dir, 'out');
    mkdirSync(out);
    const [packed] = JSON.parse(npm(['pack', '--json', '--pack-destination', out], checkout)) as Array<{ filename: string; files: Array<{ path: string }> }>;
    tarball = join(out, packed!.filename);
    files = packed!.files.map((f) => f.path);
    for (const f of ['package.json', 'README.md', 'LICENSE', 'bin/ws-guard.js', 'dist/cli/main.js', 'dist/proxy/', 'config/guard.example.yaml']) {
      expect(files.some((p) => p === f || (f.endsWith('/') && p.startsWith(f))), f).toBe(true);
    }
    expect(files.filter((p) => /^(src|test|bench|docs|scripts|\.ci)\/|\.test\.js|\.ts$|^tsconfig|^vitest/.test(p))).toEqual([]);
    // Every compiled module comes from a source file that exists (no leftovers of an older build).
    for (const p of files.filter((f) => f.startsWith('dist/') && f.endsWith('.js'))) {
      expect(existsSync(join(root, p.replace(/^dist/, 'src').replace(/\.js$/, '.ts'))), p).toBe(true);
    }
  }, 2 * NPM_TIMEOUT);

  it('installs into an empty project with its runtime dependencies only', () => {
    expect(tarball, 'the tarball from the test before').toBeTruthy();
    project = join(dir, 'project');
    mkdirSync(project);
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'uses-ws-guard', version: '1.0.0', private: true }));
    npm(['install', '--omit=dev', '--no-audit', '--no-fund', tarball], project);
    const modules = join(project, 'node_modules');
    expect(existsSync(join(modules, '.bin/ws-guard'))).toBe(true);
    const { dependencies, devDependencies } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as Record<string, Record<string, string>>;
    for (const dep of Object.keys(dependencies!)) expect(existsSync(join(modules, dep)), dep).toBe(true);
    for (const dep of Object.keys(devDependencies!)) expect(existsSync(join(modules, dep)), dep).toBe(false);
  }, 2 * NPM_TIMEOUT);

  it('runs from node_modules/.bin: --version, check, and a guard that listens and drains on SIGTERM', async () => {
    expect(project, 'the project from the test before').toBeTruthy();
    const bin = join(project, 'node_modules/.bin/ws-guard');
    const env = { ...cleanEnv, JWT_SECRET };
    const cli = (...args: string[]) => spawnSync(bin, args, { cwd: project, encoding: 'utf8', env, timeout: 20_000 });

    const v = cli('--version');
    expect(v.status, v.stderr).toBe(0);
    expect(v.stdout.trim()).toBe(version);

    const check = cli('check', join(project, 'node_modules/ws-guard/config/guard.example.yaml'));
    expect(check.status, check.stderr).toBe(0);
    expect(check.stdout).toMatch(/: valid/);
    expect(check.stdout).toMatch(/secret: "\*{8}"/);

    const port = await freePort();
    writeFileSync(join(project, 'guard.yaml'), `listen: 127.0.0.1:${port}\nupstream: http://127.0.0.1:9\ntimeouts: { drain: 2s }\n`);
    const child = spawn(bin, ['--config', 'guard.yaml'], { cwd: project, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d));
    child.stderr.on('data', (d: Buffer) => (output += d));
    const exited = once(child, 'exit');
    try {
      await until(() => output.includes('ws-guard listening') || child.exitCode !== null, 10_000, 'the installed guard to listen');
      expect(child.exitCode, output).toBeNull();
      // Nothing listens on port 9 (discard): the guard answers for the upstream with its own 502.
      const res = await fetch(`http://127.0.0.1:${port}/hello`);
      expect(res.status).toBe(502);
      expect(res.headers.get('x-ws-guard-error')).toBeTruthy();
    } finally {
      child.kill('SIGTERM');
    }
    const [code] = await exited;
    expect(code, output).toBe(0);
  }, 30_000);
});
