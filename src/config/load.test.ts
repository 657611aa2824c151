import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfigFile, parseConfig } from './load.js';

function problemsOf(raw: unknown, env: NodeJS.ProcessEnv = {}): readonly string[] {
  try {
    parseConfig(raw, env);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  throw new Error('expected a ConfigError');
}

describe('config', () => {
  it('applies defaults and converts units', () => {
    const config = parseConfig({ listen: '127.0.0.1:8080', upstream: 'http://127.0.0.1:8000' }, {});
    expect(config.listen).toEqual({ host: '127.0.0.1', port: 8080 });
    expect(config.upstream).toEqual({ host: '127.0.0.1', port: 8000, origin: 'http://127.0.0.1:8000' });
    expect(config.compression).toBe('passthrough');
    expect(config.trustedProxies).toEqual([]);
    expect(config.timeouts).toEqual({ handshake: 10_000, upstreamConnect: 5_000, upstreamResponse: 10_000, close: 5_000, drain: 30_000 });
    expect(Object.isFrozen(config.timeouts)).toBe(true);
  });

  it('accepts listen as an object and IPv6 host:port', () => {
    expect(parseConfig({ listen: { port: 9000 }, upstream: 'http://[::1]:8000' }, {}).listen).toEqual({ host: '0.0.0.0', port: 9000 });
    expect(parseConfig({ listen: '[::1]:9000', upstream: 'ws://[::1]:8000' }, {}).upstream.host).toBe('::1');
  });

  it('reports every problem at once, each with its key path', () => {
    const problems = problemsOf({
      listen: 'localhost',
      upstream: 'ftp://x',
      trustedProxies: ['10.0.0.0/33'],
      compression: 'gzip',
      timeouts: { handshake: '10', clsoe: '5s' },
      extra: true,
    });
    expect(problems).toEqual(expect.arrayContaining([
      expect.stringMatching(/^listen: expected host:port/),
      expect.stringMatching(/^upstream: expected an http:\/\/ URL/),
      expect.stringMatching(/^trustedProxies\[0\]: expected an IP address or CIDR/),
      'compression: expected passthrough or off',
      expect.stringMatching(/^timeouts\.handshake: expected a duration/),
      'timeouts.clsoe: unknown key',
      'extra: unknown key',
    ]));
    expect(problems).toHaveLength(7);
  });

  it('requires listen and upstream', () => {
    expect(problemsOf({})).toEqual(['listen: is required', 'upstream: is required']);
  });

  it('interpolates ${ENV} and ${ENV:-default} inside values, and names a missing variable', () => {
    const config = parseConfig({ listen: '127.0.0.1:${PORT}', upstream: '${UP:-http://127.0.0.1:9}' }, { PORT: '7000' });
    expect(config.listen.port).toBe(7000);
    expect(config.upstream.port).toBe(9);
    expect(problemsOf({ listen: '${NOPE}', upstream: 'http://127.0.0.1:1' })).toContain('listen: environment variable NOPE is not set');
  });

  it('loads YAML files and reports syntax errors and unreadable files', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ws-guard-config-'));
    const good = join(dir, 'good.yaml');
    writeFileSync(good, 'listen: 127.0.0.1:1\nupstream: http://127.0.0.1:2\ntimeouts: { close: 500ms }\n');
    expect(loadConfigFile(good, {}).timeouts.close).toBe(500);
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'listen: [\n');
    expect(() => loadConfigFile(bad, {})).toThrow(ConfigError);
    expect(() => loadConfigFile(join(dir, 'missing.yaml'), {})).toThrow(/ENOENT/);
  });

  it('the example config is valid', () => {
    const file = new URL('../../config/guard.example.yaml', import.meta.url).pathname;
    const config = loadConfigFile(file, { JWT_SECRET: 'x'.repeat(32) });
    expect(config.upstream.origin).toBe('http://127.0.0.1:8000');
    expect(() => loadConfigFile(file, {})).toThrow(/auth\.jwt\.secret: environment variable JWT_SECRET is not set/);
  });
});
