import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closed, freePort, open } from './helpers/clients.js';
import { until } from './helpers/guard.js';
import { startUpstream, type Upstream } from './helpers/upstream.js';

// `npx ws-guard` runs ws-guard under npm and a shell; a supervisor's SIGTERM ends npm (and the shell) but
// npm does not pass it on. ws-guard notices that its parent is gone and drains like on SIGTERM. These tests
// run the built CLI from a project that has ws-guard installed (node_modules/.bin), as a user would.
const root = fileURLToPath(new URL('..', import.meta.url));
let upstream: Upstream;
let project: string;

beforeAll(async () => {
  upstream = await startUpstream();
  project = mkdtempSync(join(tmpdir(), 'ws-guard-npx-'));
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'app', private: true }));
  mkdirSync(join(project, 'node_modules/.bin'), { recursive: true });
  symlinkSync(root, join(project, 'node_modules/ws-guard'));
  symlinkSync('../ws-guard/bin/ws-guard.js', join(project, 'node_modules/.bin/ws-guard'));
});

afterAll(async () => {
  await upstream?.stop();
  rmSync(project, { recursive: true, force: true });
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('started through npx', () => {
  it('a SIGTERM to npx ends ws-guard too: it drains (1001 to its clients) and exits', async () => {
    const port = await freePort();
    const config = join(project, `guard-${port}.yaml`);
    writeFileSync(config, `listen: 127.0.0.1:${port}\nupstream: ${upstream.url}\n`);
    const npx: ChildProcess = spawn('npx', ['--no-install', 'ws-guard', '--config', config], { cwd: project, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    npx.stdout!.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
    npx.stderr!.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
    const lines = () => out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { msg: string; pid: number; signal?: string });
    let guardPid: number | undefined;
    try {
      await until(() => lines().some((l) => l.msg === 'ws-guard listening'), 30_000, `ws-guard listening under npx\n${out}`);
      guardPid = lines().find((l) => l.msg === 'ws-guard listening')!.pid;
      expect(guardPid).not.toBe(npx.pid);

      const ws = await open(`ws://127.0.0.1:${port}/ws/echo?tag=npx-${port}`);
      const done = closed(ws);
      npx.kill('SIGTERM');
      expect((await done).code).toBe(1001);
      await until(() => !alive(guardPid!), 10_000, 'ws-guard to exit after its parent');
      expect(lines()).toContainEqual(expect.objectContaining({ msg: 'stopping', signal: 'parent exited' }));
      expect(lines().filter((l) => l.msg === 'connection closed')).toHaveLength(1);
    } finally {
      if (guardPid !== undefined && alive(guardPid)) process.kill(guardPid, 'SIGKILL');
      if (npx.exitCode === null) npx.kill('SIGKILL');
    }
  }, 60_000);
});
