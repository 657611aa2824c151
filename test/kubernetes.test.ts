import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';

// No container engine runs in CI, so the Kubernetes manifest in docs/operations.md and the Docker build
// context are checked here: the memory request and limit against the figures of docs/limits.md and the
// ceiling of test/memory.test.ts, --watch for ConfigMap updates, the grace period against the drain, the
// ConfigMap's guard.yaml through `ws-guard check` (the built CLI), and .dockerignore against the Dockerfile.
const root = fileURLToPath(new URL('..', import.meta.url));
const read = (path: string) => readFileSync(join(root, path), 'utf8');
const MiB = 1024 * 1024;

const section = /\n## Kubernetes sidecar\n([\s\S]*?)\n## /.exec(read('docs/operations.md'))![1]!;
const docs = parseAllDocuments(/```yaml\n([\s\S]*?)```/.exec(section)![1]!).map((d) => d.toJS() as Record<string, any>);
const deployment = docs.find((d) => d.kind === 'Deployment')!;
const configMap = docs.find((d) => d.kind === 'ConfigMap')!;
const pod = deployment.spec.template.spec;
const guard = (pod.containers as Array<Record<string, any>>).find((c) => c.name === 'ws-guard')!;
const guardYaml = configMap.data['guard.yaml'] as string;

/** Kubernetes memory quantities, in MiB. */
function mebibytes(quantity: string): number {
  const m = /^(\d+)(Mi|Gi)$/.exec(quantity);
  expect(m, `a quantity in Mi or Gi: ${quantity}`).toBeTruthy();
  return Number(m![1]) * (m![2] === 'Gi' ? 1024 : 1);
}

// The documented figures: docs/limits.md's Memory paragraph, and the test that measures them.
const limitsText = read('docs/limits.md').replace(/\s+/g, ' ');
const memoryTest = read('test/memory.test.ts');
const idle = Number(/\d+–(\d+) MiB before the crowd/.exec(limitsText)![1]);
const peak = Number(/a peak of \d+–(\d+) MiB/.exec(limitsText)![1]);
const ceiling = Number(/const CEILING_MIB = (\d+);/.exec(memoryTest)![1]);
const crowd = 2 * Number(/const CLIENTS = (\d+);/.exec(memoryTest)![1]);

describe('the Kubernetes manifest (docs/operations.md)', () => {
  it('reads the documented figures', () => {
    expect({ idle, peak, ceiling, crowd }).toEqual({ idle: 75, peak: 141, ceiling: 300, crowd: 400 });
    expect(limitsText).toContain(`ceiling of ${ceiling} MiB RSS`);
  });

  it('sets MALLOC_TRIM_THRESHOLD_ as the Dockerfile does', () => {
    const env = (guard.env as Array<{ name: string; value?: string }>).find((e) => e.name === 'MALLOC_TRIM_THRESHOLD_');
    expect(env?.value).toBe(/^ENV MALLOC_TRIM_THRESHOLD_=(\d+)$/m.exec(read('Dockerfile'))![1]);
  });

  it('limits memory above the tested ceiling and above idle plus what the allocator may keep', () => {
    const trim = Number((guard.env as Array<{ name: string; value?: string }>).find((e) => e.name === 'MALLOC_TRIM_THRESHOLD_')!.value) / MiB;
    const limit = mebibytes(guard.resources.limits.memory);
    expect(limit).toBeGreaterThan(ceiling);
    expect(limit).toBeGreaterThan(trim);
    expect(limit).toBeGreaterThan(idle + trim);
    expect(section).toContain(`${idle} + ${trim} = ${idle + trim} MiB`);
    expect(section).toContain(`limits.memory: ${guard.resources.limits.memory}`);
  });

  it('requests at least the measured peak (so above the idle RSS), and no more than the limit', () => {
    const request = mebibytes(guard.resources.requests.memory);
    expect(request).toBeGreaterThanOrEqual(peak);
    expect(request).toBeGreaterThan(idle);
    expect(request).toBeLessThanOrEqual(mebibytes(guard.resources.limits.memory));
    expect(section).toContain(`requests.memory: ${guard.resources.requests.memory}`);
  });

  it('caps connections at the crowd the memory test measures', () => {
    const config = parse(guardYaml) as { limits: { connections: { total: number } } };
    expect(config.limits.connections.total).toBeLessThanOrEqual(crowd);
  });

  it('runs with --watch, which the text relies on for ConfigMap updates', () => {
    expect(section).toMatch(/ConfigMap update[\s\S]*--watch/);
    expect(guard.args).toEqual(expect.arrayContaining(['--config', '/etc/ws-guard/guard.yaml', '--watch']));
    const mount = (guard.volumeMounts as Array<{ mountPath: string; subPath?: string }>)[0]!;
    expect(mount).toEqual({ name: 'config', mountPath: '/etc/ws-guard' }); // a subPath mount would never update
  });

  it('gives the drain and the preStop pause time before the kubelet kills the pod', () => {
    const drain = Number(/drain: (\d+)s/.exec(guardYaml)![1]);
    const preStop = Number(guard.lifecycle.preStop.exec.command[1]);
    expect(pod.terminationGracePeriodSeconds).toBeGreaterThan(drain + preStop);
  });

  describe('the ConfigMap', () => {
    let dir: string;
    beforeAll(() => {
      dir = mkdtempSync(join(tmpdir(), 'ws-guard-k8s-'));
    });
    afterAll(() => rmSync(dir, { recursive: true, force: true }));

    it('holds a guard.yaml that ws-guard check accepts', () => {
      const file = join(dir, 'guard.yaml');
      writeFileSync(file, guardYaml);
      const r = spawnSync(process.execPath, [join(root, 'bin/ws-guard.js'), 'check', file], {
        encoding: 'utf8',
        timeout: 20_000,
        env: { ...process.env, JWT_SECRET: 'kubernetes-test-secret-long-enough-for-hs256-0123' },
      });
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/: valid/);
    });
  });
});

describe('.dockerignore', () => {
  const rules = read('.dockerignore')
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line && !line.startsWith('#'))
    .map((line) => {
      const negate = line.startsWith('!');
      const pattern = line.replace(/^!/, '').replace(/^\/+|\/+$/g, '');
      const source = pattern
        .split(/(\*\*\/|\*\*|\*|\?)/)
        .map((part) => ({ '**/': '(?:.*/)?', '**': '.*', '*': '[^/]*', '?': '[^/]' })[part] ?? part.replace(/[.+^${}()|[\]\\]/g, '\\$&'))
        .join('');
      return { negate, re: new RegExp(`^${source}(?:/.*)?$`) };
    });
  /** Docker's rule: the last pattern that matches decides; a directory's pattern covers what is inside. */
  const ignored = (path: string) => rules.reduce((out, rule) => (rule.re.test(path) ? !rule.negate : out), false);

  function walk(path: string): string[] {
    if (!statSync(join(root, path)).isDirectory()) return [path];
    return readdirSync(join(root, path)).flatMap((name) => walk(join(path, name)));
  }

  it('keeps out what the image builds itself, the repository and the tests', () => {
    for (const path of ['node_modules', 'node_modules/ws/index.js', 'dist/cli/main.js', '.git', 'test/memory.test.ts', 'src/frames/x.test.ts', 'ws-guard-0.1.0.tgz']) {
      expect(ignored(path), path).toBe(true);
    }
  });

  it('keeps every file the Dockerfile copies from the context that the build uses', () => {
    const sources = read('Dockerfile')
      .split('\n')
      .filter((line) => /^COPY\s/.test(line) && !/--from=/.test(line))
      .flatMap((line) => line.trim().split(/\s+/).slice(1, -1));
    expect(sources).toEqual(expect.arrayContaining(['package.json', 'package-lock.json', 'tsconfig.build.json', 'src', 'bin', 'config']));
    const files = sources.flatMap((s) => walk(s)).map((f) => relative('.', f));
    expect(files.length).toBeGreaterThan(20);
    // Only the sources' own tests stay out: tsconfig.build.json does not compile them.
    expect(files.filter((f) => ignored(f) !== /^src\/.*\.test\.ts$/.test(f))).toEqual([]);
  });
});
