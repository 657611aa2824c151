import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

// The README's quick start, `npm test` and `.ci/run` agree, and scripts/system-deps.sh (which `npm test` runs
// first) installs what is missing as root or says in one line what to install. The script runs here against
// stand-ins for dpkg-query, id and apt-get, on a PATH that holds nothing else, so nothing is installed for real.
const root = fileURLToPath(new URL('..', import.meta.url));
const SCRIPT = join(root, 'scripts/system-deps.sh');
const read = (path: string) => readFileSync(join(root, path), 'utf8');
const PACKAGES = /^PACKAGES="([^"]+)"$/m.exec(read('scripts/system-deps.sh'))![1]!.split(' ');

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'ws-guard-setup-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Machine {
  installed: string[];
  uid: number;
  /** Which stand-ins exist (all three unless told). */
  tools?: Array<'dpkg-query' | 'id' | 'apt-get'>;
  /** apt-get install exits 100 and installs nothing. */
  aptFails?: boolean;
}

let runs = 0;
/** Runs the script on a machine made of stand-ins; returns its exit code, stderr and the apt-get calls. */
function onMachine(machine: Machine) {
  const bin = join(dir, `machine-${++runs}`, 'bin');
  const state = join(bin, '..', 'installed');
  const log = join(bin, '..', 'apt-get.log');
  mkdirSync(bin, { recursive: true });
  writeFileSync(state, machine.installed.map((p) => `${p}\n`).join(''));
  const tools = machine.tools ?? ['dpkg-query', 'id', 'apt-get'];
  const stub = (name: string, body: string) => {
    if (!tools.includes(name as never)) return;
    writeFileSync(join(bin, name), `#!/bin/sh\n${body}\n`);
    chmodSync(join(bin, name), 0o755);
  };
  // dpkg-query -W -f='${db:Status-Abbrev}' <pkg>: "ii " when installed, else an error and exit 1, as dpkg's.
  stub('dpkg-query', [
    'for last; do :; done',
    `if /bin/grep -qx "$last" '${state}'; then printf 'ii '; exit 0; fi`,
    'echo "dpkg-query: no packages found matching $last" >&2; exit 1',
  ].join('\n'));
  stub('id', `[ "$1" = -u ] && echo ${machine.uid}`);
  stub('apt-get', [
    `echo "DEBIAN_FRONTEND=$DEBIAN_FRONTEND $*" >> '${log}'`,
    machine.aptFails ? 'exit 100' : '',
    '[ "$1" = install ] || exit 0',
    `for a; do case "$a" in -*|install) ;; *) echo "$a" >> '${state}' ;; esac; done`,
  ].join('\n'));
  const result = spawnSync('/bin/sh', [SCRIPT], { encoding: 'utf8', env: { PATH: bin }, timeout: 10_000 });
  return {
    status: result.status,
    stderr: result.stderr,
    stdout: result.stdout,
    apt: existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n') : [],
  };
}

describe('scripts/system-deps.sh', () => {
  it('names the packages the tests use', () => {
    expect([...PACKAGES].sort()).toEqual(
      [
        'chromium',
        'nginx-light',
        'openssl',
        'python3-engineio',
        'python3-fastapi',
        'python3-socketio',
        'python3-uvicorn',
        'python3-websockets',
        'redis-server',
      ].sort(),
    );
  });

  it('does nothing and says nothing when every package is installed', () => {
    const r = onMachine({ installed: PACKAGES, uid: 1000 });
    expect(r).toMatchObject({ status: 0, stderr: '', stdout: '', apt: [] });
  });

  it('not as root: one line naming what to install, exit 1, apt-get not run', () => {
    const r = onMachine({ installed: PACKAGES.filter((p) => p !== 'chromium' && p !== 'nginx-light'), uid: 1000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toBe('ws-guard tests need: apt-get install chromium nginx-light\n');
    expect(r.apt).toEqual([]);
  });

  it('as root: apt-get update, then installs only the missing packages, non-interactively', () => {
    const r = onMachine({ installed: ['openssl', 'python3-uvicorn'], uid: 0 });
    expect(r.status, r.stderr).toBe(0);
    const missing = PACKAGES.filter((p) => p !== 'openssl' && p !== 'python3-uvicorn');
    expect(r.apt).toEqual([
      'DEBIAN_FRONTEND=noninteractive update -q',
      `DEBIAN_FRONTEND=noninteractive install -y -q --no-install-recommends ${missing.join(' ')}`,
    ]);
    // Run again: now everything is there, so no apt-get at all.
    expect(onMachine({ installed: PACKAGES, uid: 0 }).apt).toEqual([]);
  });

  it('as root without apt-get, or when apt-get fails: one line, exit 1', () => {
    const noApt = onMachine({ installed: PACKAGES.slice(1), uid: 0, tools: ['dpkg-query', 'id'] });
    expect(noApt.status).toBe(1);
    expect(noApt.stderr).toBe(`ws-guard tests need: apt-get install ${PACKAGES[0]}\n`);
    const failing = onMachine({ installed: PACKAGES.slice(1), uid: 0, aptFails: true });
    expect(failing.status).toBe(1);
    expect(failing.stderr.trim().split('\n').at(-1)).toBe(`ws-guard tests need: apt-get install ${PACKAGES[0]} (apt-get failed)`);
  });

  it('off Debian (no dpkg-query): one line naming the packages, exit 1', () => {
    const r = onMachine({ installed: [], uid: 0, tools: ['id', 'apt-get'] });
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(`ws-guard tests need Debian's packages (dpkg-query not found): ${PACKAGES.join(' ')}\n`);
    expect(r.apt).toEqual([]);
  });
});

describe('the quick start, npm test and CI agree', () => {
  const pkg = JSON.parse(read('package.json')) as { scripts: Record<string, string> };

  it('the README quick start is exactly two commands: the demo and the test suite', () => {
    const block = /## Quick start\s+```sh\n([\s\S]*?)```/.exec(read('README.md'))![1]!;
    const commands = block.trim().split('\n').map((line) => line.replace(/\s+#.*$/, '').trim());
    expect(commands).toEqual(['npm ci && npm start', 'npm test']);
  });

  it('npm test checks the system packages first, and sets up node_modules when it is missing', () => {
    expect(pkg.scripts.test).toMatch(/^sh scripts\/system-deps\.sh && \(test -e node_modules\/\.package-lock\.json \|\| npm ci\) && /);
    expect(pkg.scripts.test).toMatch(/vitest run$/);
  });

  it('.ci/run runs the README test command and installs no Debian package of its own', () => {
    const ci = read('.ci/run');
    expect(ci).toMatch(/^npm test$/m);
    expect(ci).not.toMatch(/apt-get install/);
    for (const p of PACKAGES) expect(ci).not.toContain(p);
  });

  it('the README and docs/operations.md name the same packages as the script', () => {
    for (const doc of ['README.md', 'docs/operations.md']) {
      const lines = read(doc).split('\n').filter((line) => line.includes('system-deps.sh'));
      expect(lines.length, doc).toBeGreaterThan(0);
      const text = read(doc).replace(/\s+/g, ' ');
      const named = /`apt-get install ([a-z0-9. -]+)`/.exec(text)?.[1]?.split(' ');
      expect(named?.sort(), doc).toEqual([...PACKAGES].sort());
    }
  });
});
