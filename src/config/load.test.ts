import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfigFile, nearest, parseConfig } from './load.js';

/** The temp dirs of this file's tests, removed once they have run. */
const dirs: string[] = [];
function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'ws-guard-config-'));
  dirs.push(dir);
  return dir;
}
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

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
    expect(config.timeouts).toEqual({
      handshake: 10_000, upstreamConnect: 5_000, upstreamResponse: 10_000, close: 5_000, drain: 30_000, request: 30_000, upstreamHeaders: 60_000,
    });
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
      'compression: expected passthrough or off, got "gzip"',
      expect.stringMatching(/^timeouts\.handshake: expected a duration/),
      'timeouts.clsoe: unknown key, did you mean close?',
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
    const dir = tempDir();
    const good = join(dir, 'good.yaml');
    writeFileSync(good, 'listen: 127.0.0.1:1\nupstream: http://127.0.0.1:2\ntimeouts: { close: 500ms }\n');
    expect(loadConfigFile(good, {}).timeouts.close).toBe(500);
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'listen: [\n');
    expect(() => loadConfigFile(bad, {})).toThrow(ConfigError);
    expect(() => loadConfigFile(join(dir, 'missing.yaml'), {})).toThrow(`cannot read config file ${join(dir, 'missing.yaml')}: no such file`);
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
    const dir = tempDir();
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
      'limits.connections.total: expected a positive whole number, got Infinity',
      'limits.connections.perIp: expected a positive whole number, got 0',
      'limits.handshakes.burst: expected a positive whole number, got NaN',
      'limits.maxFragments: expected a positive whole number, got 9007199254740992',
    ]);
  });
});

describe('config: messages', () => {
  const base = { listen: '127.0.0.1:1', upstream: 'http://127.0.0.1:2' };
  const secretAuth = { auth: { jwt: { secret: '${JWT_SECRET}', algorithms: ['HS256'] } } };

  function fileProblems(text: string): readonly string[] {
    const file = join(tempDir(), 'guard.yaml');
    writeFileSync(file, text);
    try {
      loadConfigFile(file, {});
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      // A file that does not parse is one line, and that line is the whole message.
      if (err.problems.length === 1 && !err.message.startsWith('invalid config')) expect(err.message).toBe(err.problems[0]);
      return err.problems.map((p) => p.replace(file, 'guard.yaml'));
    }
    throw new Error('expected a ConfigError');
  }

  it('an unset variable is one line, whatever the schema would say about the empty stand-in', () => {
    expect(problemsOf({ ...base, ...secretAuth })).toEqual(['auth.jwt.secret: environment variable JWT_SECRET is not set']);
    expect(problemsOf({ listen: '127.0.0.1:${PORT}', upstream: '${UP}' })).toEqual([
      'listen: environment variable PORT is not set',
      'upstream: environment variable UP is not set',
    ]);
  });

  it('an empty variable is reported as empty, and is an error unless ${VAR:-} allows it', () => {
    expect(problemsOf({ ...base, ...secretAuth }, { JWT_SECRET: '' })).toEqual(['auth.jwt.secret: environment variable JWT_SECRET is empty']);
    // An empty issuer would not be checked at all: empty is never taken silently.
    expect(problemsOf({ ...base, auth: { jwt: { secret: 'x'.repeat(32), algorithms: ['HS256'], issuer: '${ISS}' } } }, { ISS: '' })).toEqual([
      'auth.jwt.issuer: environment variable ISS is empty',
    ]);
    // With `:-` the empty value is taken, and the key's own rule decides: a secret cannot be empty.
    expect(problemsOf({ ...base, auth: { jwt: { secret: '${JWT_SECRET:-}', algorithms: ['HS256'] } } }, { JWT_SECRET: '' })).toEqual([
      'auth.jwt.secret: expected a non-empty string, got ""',
    ]);
  });

  it('a bare number where a unit is expected says so, and names the number', () => {
    expect(problemsOf({ ...base, limits: { messageSize: 65536, idleTimeout: 30, messages: { rate: 10 } }, timeouts: { close: 5 } })).toEqual([
      'timeouts.close: expected a duration like 500ms, 5s, 2m or 24h, got 5 (a number: add a unit, e.g. 5s or 5ms)',
      'limits.messages.rate: expected a rate like 10/minute, 20/s or 100 per hour, got 10 (a number: add a period, e.g. 10/s)',
      'limits.messageSize: expected a size like 64KiB or 1MiB, got 65536 (a number: add a unit, e.g. 65536B)',
      'limits.idleTimeout: expected a duration like 500ms, 5s, 2m or 24h, or off, got 30 (a number: add a unit, e.g. 30s or 30ms)',
    ]);
    expect(problemsOf({ ...base, listen: 8080 })).toEqual(['listen: expected host:port, got 8080 (a port alone: write 0.0.0.0:8080 or 127.0.0.1:8080)']);
  });

  it('every "expected" names what it got, in the config\'s words rather than zod\'s', () => {
    expect(problemsOf({
      ...base,
      admin: null,
      trustedProxies: '10.0.0.1',
      allowNoOrigin: 'yes',
      origins: [5],
      auth: { jwt: { secret: 'x'.repeat(32), algorithms: [], issuer: 5, tokenSources: ['body'] } },
      routes: [{ path: 5, auth: true }],
      limits: { messages: { rate: '10/fortnight', burst: '3' }, maxLifetime: true },
    })).toEqual([
      'admin: expected host:port or { listen: host:port, token: ... }, got an empty value',
      'trustedProxies: expected a list, got "10.0.0.1"',
      'auth.jwt.algorithms: expected at least one entry, got an empty list',
      'auth.jwt.issuer: expected a string or a list of strings, got 5',
      'auth.jwt.tokenSources[0]: expected one of header, protocol, query, cookie, got "body"',
      'origins[0]: expected an origin like https://app.example.com or https://*.example.org, got 5',
      'allowNoOrigin: expected true or false, got "yes"',
      'routes[0].path: expected a string, got 5',
      'routes[0].auth: expected false or { jwt: {...} }, got true',
      'limits.messages.rate: expected a rate like 10/minute, 20/s or 100 per hour, got "10/fortnight"',
      'limits.messages.burst: expected a positive whole number, got "3"',
      'limits.maxLifetime: expected a duration like 500ms, 5s, 2m or 24h, or off, got true',
    ]);
    expect(problemsOf('hello')).toEqual(['(root): expected a mapping, got "hello"']);
  });

  it('accepts the common spellings of a rate, within the existing bounds', () => {
    const rateOf = (rate: string) => parseConfig({ ...base, limits: { messages: { rate } } }, {}).limits.messages!.rate;
    expect(rateOf('10/min')).toEqual({ count: 10, periodMs: 60_000 });
    expect(rateOf('10 per minute')).toEqual({ count: 10, periodMs: 60_000 });
    expect(rateOf('10/sec')).toEqual({ count: 10, periodMs: 1000 });
    expect(rateOf('10/hour')).toEqual({ count: 10, periodMs: 3_600_000 });
    expect(rateOf('10/day')).toEqual({ count: 10, periodMs: 86_400_000 });
    expect(rateOf('1/day')).toEqual({ count: 1, periodMs: 86_400_000 });
    expect(problemsOf({ ...base, limits: { messages: { rate: '0.01/day' }, handshakes: { rate: '0 per minute' } } })).toEqual([
      'limits.handshakes.rate: expected a rate of at least 1 per 596h, got "0 per minute"',
      'limits.messages.rate: expected a rate of at least 1 per 596h, got "0.01/day"',
    ]);
  });

  it('suggests the nearest allowed key at that level for an unknown one, only when it is close', () => {
    expect(problemsOf({
      ...base,
      timeouts: { clsoe: '5s' },
      limits: { messages: { rate: '1/s', bursst: 3 }, conections: {} },
      routes: [{ path: '/a', lmits: {}, auth: { jwt: { secrte: 'x' } } }],
      upstreams: 'x',
      colour: 'blue',
    })).toEqual(expect.arrayContaining([
      'timeouts.clsoe: unknown key, did you mean close?',
      'limits.messages.bursst: unknown key, did you mean burst?',
      'limits.conections: unknown key, did you mean connections?',
      'routes[0].lmits: unknown key, did you mean limits?',
      'routes[0].auth.jwt.secrte: unknown key, did you mean secret?',
      'upstreams: unknown key, did you mean upstream?',
      'colour: unknown key',
    ]));
    expect(nearest('bursst', ['rate', 'burst'])).toBe('burst');
    expect(nearest('PerIP', ['total', 'perIp', 'perUser'])).toBe('perIp');
    // Two edits in a short word are a different word, not a slip.
    expect(nearest('ip', ['per'])).toBeUndefined();
    expect(nearest('path', ['auth'])).toBeUndefined();
    expect(nearest('extra', ['listen', 'upstream', 'admin', 'workers'])).toBeUndefined();
  });

  it('a file that cannot be read or parsed is one line: the path, the line and column, the reason', () => {
    expect(fileProblems('listen: [\n')).toEqual([
      'guard.yaml:2:1: invalid YAML: Flow sequence in block collection must be sufficiently indented and end with a ]',
    ]);
    expect(fileProblems('listen: 127.0.0.1:1\nupstream: http://127.0.0.1:2\ntimeouts:\n  close: 5s\n    drain: 1s\n')).toEqual([
      'guard.yaml:4:10: invalid YAML: Nested mappings are not allowed in compact mappings',
    ]);
    expect(fileProblems('listen: 1\nlisten: 2\n')).toEqual(['guard.yaml:2:1: invalid YAML: Map keys must be unique']);
    expect(fileProblems('listen: *nowhere\n')).toEqual([
      'guard.yaml: invalid YAML: Unresolved alias (the anchor must be set before the alias): nowhere',
    ]);
    const dir = tempDir();
    expect(() => loadConfigFile(dir, {})).toThrow(`cannot read config file ${dir}: it is a directory`);
  });
});

describe('holdBudget', () => {
  const base = { listen: '127.0.0.1:1', upstream: 'http://127.0.0.1:2' };

  it('defaults to 32 MiB for the process and is refused in a route', () => {
    expect(parseConfig(base, {}).limits.holdBudget).toBe(32 * 1024 * 1024);
    expect(parseConfig({ ...base, limits: { holdBudget: '16MiB' } }, {}).limits.holdBudget).toBe(16 * 1024 * 1024);
    expect(problemsOf({ ...base, routes: [{ path: '/a', limits: { holdBudget: '1MiB' } }] })).toEqual([
      'routes[0].limits.holdBudget: is for the whole process: set it in the top-level limits',
    ]);
  });
});

describe('config: admin', () => {
  const base = { listen: '127.0.0.1:8080', upstream: 'http://127.0.0.1:8000' };
  it('takes host:port (no token) or { listen, token } with the token from the environment', () => {
    expect(parseConfig({ ...base, admin: '127.0.0.1:9901' }, {}).admin).toEqual({ host: '127.0.0.1', port: 9901, token: undefined });
    const env = { ADMIN_TOKEN: 'a-token-of-twenty-chars' };
    expect(parseConfig({ ...base, admin: { listen: '127.0.0.1:9901', token: '${ADMIN_TOKEN}' } }, env).admin)
      .toEqual({ host: '127.0.0.1', port: 9901, token: 'a-token-of-twenty-chars' });
  });
  it('refuses a token under 16 characters, naming its length and never its value', () => {
    const problems = problemsOf({ ...base, admin: { listen: '127.0.0.1:9901', token: 'hunter2' } });
    expect(problems).toEqual(['admin.token: expected at least 16 characters (it guards the kill switch, POST /connections/close), got 7']);
    expect(problemsOf({ ...base, admin: { listen: '127.0.0.1:9901', tokn: 'x' } })[0]).toMatch(/^admin.tokn: unknown key/);
  });
});

describe('config: store', () => {
  const base = { listen: '127.0.0.1:8080', upstream: 'http://127.0.0.1:8000' };

  it('is absent by default, and takes a URL with defaults for the rest', () => {
    expect(parseConfig(base, {}).store).toBeUndefined();
    const { store } = parseConfig({ ...base, store: { redis: 'redis://:${REDIS_PASSWORD}@127.0.0.1:6379/2' } }, { REDIS_PASSWORD: 'pw' });
    expect(store?.redis).toBeInstanceOf(URL);
    expect((store?.redis as URL).password).toBe('pw');
    expect({ ...store, redis: undefined }).toEqual({ redis: undefined, keyPrefix: 'ws-guard:', leaseTtl: 15_000, onError: 'local', timeout: 500, batch: 'auto' });
  });

  it('takes the Sentinel and Cluster forms', () => {
    const sentinel = parseConfig({ ...base, store: { redis: { sentinels: ['10.0.0.1:26379', '10.0.0.2:26379'], name: 'mymaster' } } }, {}).store;
    expect(sentinel?.redis).toEqual({ sentinels: [{ host: '10.0.0.1', port: 26379 }, { host: '10.0.0.2', port: 26379 }], name: 'mymaster', db: 0, tls: false });
    const clustered = parseConfig({ ...base, store: { redis: { cluster: ['10.0.0.1:7000'], password: 'x' } } }, {}).store;
    expect(clustered?.redis).toEqual({ cluster: [{ host: '10.0.0.1', port: 7000 }], password: 'x', tls: false });
  });

  it('names each wrong key', () => {
    const problems = problemsOf({
      ...base,
      store: { redis: 'http://127.0.0.1:6379', keyPrefix: 'a{b}', leaseTtl: '500ms', onError: 'maybe', timeout: '0s', batch: 0 },
    });
    expect(problems.map((p) => p.split(':')[0])).toEqual(['store.redis', 'store.keyPrefix', 'store.leaseTtl', 'store.onError', 'store.timeout', 'store.batch']);
  });

  it('refuses a URL without a host or with a database beyond two digits', () => {
    expect(problemsOf({ ...base, store: { redis: 'redis://' } })[0]).toMatch(/^store\.redis: expected/);
    expect(problemsOf({ ...base, store: { redis: 'redis://127.0.0.1:6379/123' } })[0]).toMatch(/^store\.redis: expected/);
  });
});
