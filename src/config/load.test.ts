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

describe('config: values that would switch a protection off', () => {
  const base = { listen: '127.0.0.1:1', upstream: 'http://127.0.0.1:2' };
  const secret = 'x'.repeat(32);
  const jwt = (keys: Record<string, unknown>) => ({ auth: { jwt: { secret, algorithms: ['HS256'], ...keys } } });
  const huge = '9'.repeat(400);

  it('refuses zero, sub-millisecond and negative timeouts, and ones Node cannot arm', () => {
    expect(problemsOf({ ...base, timeouts: { handshake: '0s' } })).toEqual([
      'timeouts.handshake: expected a duration of at least 1ms, got "0s"',
    ]);
    expect(problemsOf({
      ...base,
      timeouts: { handshake: 'off', upstreamConnect: '0ms', upstreamResponse: '597h', close: '0.4ms', drain: '-5s' },
    })).toEqual([
      'timeouts.handshake: expected a duration like 500ms, 5s, 2m or 24h, got "off"',
      'timeouts.upstreamConnect: expected a duration of at least 1ms, got "0ms"',
      'timeouts.upstreamResponse: expected a duration of at most 596h, got "597h"',
      'timeouts.close: expected a duration of at least 1ms, got "0.4ms"',
      'timeouts.drain: expected a duration of at least 1ms, got "-5s"',
    ]);
    expect(problemsOf({ ...base, timeouts: { drain: `${huge}ms` } })).toEqual([
      `timeouts.drain: expected a duration of at most 596h, got "${huge}ms"`,
    ]);
  });

  it('accepts timeouts from 1ms (0.5ms rounds up to it) to 596h', () => {
    const config = parseConfig({ ...base, timeouts: { handshake: '0.5ms', close: '1ms', drain: '596h' } }, {});
    expect(config.timeouts).toMatchObject({ handshake: 1, close: 1, drain: 596 * 3_600_000 });
  });

  it('refuses JWT durations that disable a safeguard; clockTolerance alone may be 0s', () => {
    expect(problemsOf({ ...base, ...jwt({ jwksTimeout: '0s', jwksCooldown: '0s', jwksCacheMaxAge: '-1m', clockTolerance: '-1s' }) })).toEqual([
      'auth.jwt.jwksTimeout: expected a duration of at least 1ms, got "0s"',
      'auth.jwt.jwksCooldown: expected a duration of at least 1ms, got "0s"',
      'auth.jwt.jwksCacheMaxAge: expected a duration of at least 1ms, got "-1m"',
      'auth.jwt.clockTolerance: expected a duration of at least 0ms, got "-1s"',
    ]);
    expect(problemsOf({ ...base, ...jwt({ jwksTimeout: '600h', jwksCacheMaxAge: `${huge}h` }) })).toEqual([
      'auth.jwt.jwksTimeout: expected a duration of at most 596h, got "600h"',
      `auth.jwt.jwksCacheMaxAge: expected a duration of at most 2501999792h, got "${huge}h"`,
    ]);
    // Only timers are held to 596h: the JWKS cache age is compared with the clock.
    expect(problemsOf({ ...base, ...jwt({ clockTolerance: '100000h' }) })).toEqual([
      'auth.jwt.clockTolerance: expected a duration of at most 5m, got "100000h"',
    ]);
    const ok = parseConfig({ ...base, ...jwt({ clockTolerance: '0s', jwksCacheMaxAge: '1000h' }) }, {}).auth!.jwt;
    expect(ok).toMatchObject({ clockTolerance: 0, jwksCacheMaxAge: 1000 * 3_600_000 });
  });

  it('refuses a zero idle timeout or lifetime, naming off as the way to disable it', () => {
    expect(problemsOf({
      ...base,
      limits: { idleTimeout: '0s', maxLifetime: '1000h' },
      routes: [{ path: '/a', limits: { idleTimeout: '0.4ms', maxLifetime: '-1h' } }, { path: '/b', limits: { idleTimeout: 'never' } }],
    })).toEqual([
      'routes[0].limits.idleTimeout: expected a duration of at least 1ms, got "0.4ms" (write off to disable)',
      'routes[0].limits.maxLifetime: expected a duration of at least 1ms, got "-1h" (write off to disable)',
      'routes[1].limits.idleTimeout: expected a duration like 500ms, 5s, 2m or 24h, or off, got "never"',
      'limits.idleTimeout: expected a duration of at least 1ms, got "0s" (write off to disable)',
      'limits.maxLifetime: expected a duration of at most 596h, got "1000h" (write off to disable)',
    ]);
  });

  it('accepts off for idleTimeout and maxLifetime, and a route off overrides the top-level value', () => {
    const config = parseConfig({
      ...base,
      limits: { idleTimeout: '5m', maxLifetime: 'off' },
      routes: [
        { path: '/quiet', limits: { idleTimeout: 'off' } },
        { path: '/short', limits: { maxLifetime: '1h' } },
        { path: '/plain' },
      ],
    }, {});
    expect(config.limits.idleTimeout).toBe(300_000);
    expect(config.limits.maxLifetime).toBeUndefined();
    const [quiet, short, plain] = config.routes;
    expect([quiet!.limits.idleTimeout, quiet!.limits.maxLifetime]).toEqual([undefined, undefined]);
    expect([short!.limits.idleTimeout, short!.limits.maxLifetime]).toEqual([300_000, 3_600_000]);
    expect([plain!.limits.idleTimeout, plain!.limits.maxLifetime]).toEqual([300_000, undefined]);
  });

  it('refuses sizes below 1B (after rounding down), negative or endless, and off', () => {
    expect(problemsOf({
      ...base,
      ...jwt({ maxTokenLength: '0B' }),
      limits: { messageSize: '0.9B' },
      routes: [{ path: '/a', limits: { messageSize: '-1MiB' } }, { path: '/b', limits: { messageSize: `${huge}GiB` } }, { path: '/c', limits: { messageSize: 'off' } }],
    })).toEqual([
      'auth.jwt.maxTokenLength: expected a size of at least 1B, got "0B"',
      'routes[0].limits.messageSize: expected a size of at least 1B, got "-1MiB"',
      `routes[1].limits.messageSize: expected a size of at most 8388607GiB, got "${huge}GiB"`,
      'routes[2].limits.messageSize: expected a size like 64KiB or 1MiB, got "off"',
      'limits.messageSize: expected a size of at least 1B, got "0.9B"',
    ]);
  });

  it('refuses rates of nothing, slower than a timer can wait, negative or endless', () => {
    expect(problemsOf({
      ...base,
      limits: {
        handshakes: { rate: '0/s' },
        messages: { rate: '0.0001/hour' },
      },
      routes: [{ path: '/a', limits: { messages: { rate: '-5/s' } } }, { path: '/b', limits: { handshakes: { rate: `${huge}/s` } } }],
    })).toEqual([
      'routes[0].limits.messages.rate: expected a rate of at least 1 per 596h, got "-5/s"',
      `routes[1].limits.handshakes.rate: expected a rate of at most 9007199254740991 per period, got "${huge}/s"`,
      'limits.handshakes.rate: expected a rate of at least 1 per 596h, got "0/s"',
      'limits.messages.rate: expected a rate of at least 1 per 596h, got "0.0001/hour"',
    ]);
    expect(parseConfig({ ...base, limits: { messages: { rate: '0.002/hour' } } }, {}).limits.messages!.rate).toEqual({ count: 0.002, periodMs: 3_600_000 });
  });

  it('reads off as a word and 1e400 as Infinity from YAML, and refuses the Infinity', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ws-guard-config-'));
    const file = join(dir, 'off.yaml');
    writeFileSync(file, 'listen: 127.0.0.1:1\nupstream: http://127.0.0.1:2\nlimits: { idleTimeout: off, maxLifetime: 24h }\n');
    expect(loadConfigFile(file, {}).limits).toMatchObject({ idleTimeout: undefined, maxLifetime: 86_400_000 });
    writeFileSync(file, 'listen: 127.0.0.1:1\nupstream: http://127.0.0.1:2\nlimits: { connections: { total: 1e400 } }\n');
    expect(() => loadConfigFile(file, {})).toThrow('limits.connections.total: expected a positive whole number');
  });

  it('refuses counts of zero and numbers too large to be exact', () => {
    expect(problemsOf({
      ...base,
      limits: { connections: { total: Infinity, perIp: 0 }, maxFragments: 2 ** 53, handshakes: { rate: '1/s', burst: NaN } },
    })).toEqual([
      'limits.connections.total: expected a positive whole number',
      'limits.connections.perIp: expected a positive whole number',
      'limits.handshakes.burst: expected a positive whole number',
      'limits.maxFragments: expected a positive whole number',
    ]);
  });
});
