import { createPublicKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import net from 'node:net';
import { z } from 'zod';
import { parseOriginPattern } from '../policies/origin.js';
import { formatDuration, formatSize, parseDuration, parseRate, parseSize } from './units.js';

/**
 * The config schema (design.md §3). Every object is strict, so a misspelt key is an error instead of a
 * silently ignored setting. Unit strings are turned into numbers here, once, so nothing downstream
 * parses them again.
 */

function unit<T>(parse: (text: string) => T | undefined, expected: string) {
  return z.string({ error: `expected ${expected}` }).transform((text, ctx) => {
    const value = parse(text);
    if (value === undefined) {
      ctx.addIssue({ code: 'custom', message: `expected ${expected}, got "${text}"` });
      return z.NEVER;
    }
    return value;
  });
}

function fail(ctx: z.RefinementCtx, message: string): never {
  ctx.addIssue({ code: 'custom', message });
  return z.NEVER;
}

/** A leading minus is taken off before parsing, so "-5s" is refused for being negative, not for its form. */
function splitSign(text: string): [negative: boolean, rest: string] {
  const trimmed = text.trim();
  return trimmed.startsWith('-') ? [true, trimmed.slice(1)] : [false, trimmed];
}

/** Node's timers wait at most 2^31-1 ms (about 24.8 days): a longer delay fires after 1 ms (TimeoutOverflowWarning). */
const TIMER_MAX_MS = 2 ** 31 - 1;
/** The largest clock skew tokens are granted. */
const CLOCK_TOLERANCE_MAX_MS = 5 * 60_000;

interface Measure {
  parse: (text: string) => number | undefined;
  format: (value: number) => string;
  noun: string;
  examples: string;
  /** The number written with a unit, for the message about a bare number. */
  withUnit: (n: number) => string;
}

const DURATION: Measure = {
  parse: parseDuration, format: formatDuration, noun: 'a duration', examples: '500ms, 5s, 2m or 24h', withUnit: (n) => `${n}s or ${n}ms`,
};
const SIZE: Measure = { parse: parseSize, format: formatSize, noun: 'a size', examples: '64KiB or 1MiB', withUnit: (n) => `${n}B` };

/**
 * The message for a value that is not a string: a bare number (YAML reads `65536` as one) is told to add
 * its unit; anything else gets its "got" from the config loader, which words every value alike.
 */
function notText(expected: string, withUnit: (n: number) => string, unitName = 'unit') {
  return (issue: { input?: unknown }) => {
    if (issue.input === undefined) return undefined;
    const n = issue.input;
    return typeof n === 'number' && Number.isFinite(n) ? `${expected}, got ${n} (a number: add a ${unitName}, e.g. ${withUnit(n)})` : expected;
  };
}

interface Bounds {
  /** 1 wherever 0 would switch a protection off (a 0s deadline, a 0B cap). */
  min?: number;
  /** TIMER_MAX_MS for values that reach a timer; else the largest exact integer, so no text becomes Infinity. */
  max?: number;
  /** The key also accepts `off`: messages say so. */
  off?: boolean;
}

/**
 * A unit value out of bounds is refused, never clamped: `0.4ms` rounds to the 0 that turns a deadline off,
 * and a delay Node cannot arm fires almost at once. The message names the bound that was missed.
 */
function measure(text: string, ctx: z.RefinementCtx, m: Measure, { min = 1, max = Number.MAX_SAFE_INTEGER, off = false }: Bounds): number {
  const [negative, rest] = splitSign(text);
  const value = m.parse(rest);
  const instead = off ? ' (write off to disable)' : '';
  if (value === undefined) return fail(ctx, `expected ${m.noun} like ${m.examples}${off ? ', or off' : ''}, got "${text}"`);
  if (negative || value < min) return fail(ctx, `expected ${m.noun} of at least ${m.format(min)}, got "${text}"${instead}`);
  if (value > max) return fail(ctx, `expected ${m.noun} of at most ${m.format(max)}, got "${text}"${instead}`);
  return value;
}

function measured(m: Measure, bounds: Bounds = {}) {
  return z
    .string({ error: notText(`expected ${m.noun} like ${m.examples}`, m.withUnit) })
    .transform((text, ctx) => measure(text, ctx, m, bounds));
}

/** `off` stays a value of its own until routes are merged, so a route's `off` overrides a top-level limit. */
function measuredOrOff(m: Measure, bounds: Bounds = {}) {
  return z
    .string({ error: notText(`expected ${m.noun} like ${m.examples}, or off`, m.withUnit) })
    .transform((text, ctx) => (text.trim() === 'off' ? ('off' as const) : measure(text, ctx, m, { ...bounds, off: true })));
}

/** A duration handed to setTimeout, setInterval, AbortSignal.timeout or http.Server's headersTimeout. */
const timerDuration = measured(DURATION, { max: TIMER_MAX_MS });
/** A duration only compared with clock readings, never armed as a timer. */
const duration = measured(DURATION);
const size = measured(SIZE);

const HOST_PORT = /^(?<host>\[[0-9a-fA-F:.]+\]|[^:\s]+):(?<port>\d{1,5})$/;

function parseHostPort(text: string): { host: string; port: number } | undefined {
  const m = HOST_PORT.exec(text.trim());
  const port = Number(m?.groups?.port);
  if (!m || port > 65535) return undefined;
  return { host: m.groups!.host!.replace(/^\[|\]$/g, ''), port };
}

const port = z.number({ error: 'expected a port number' }).int().min(0).max(65535);

function readFile(path: string): { path: string; pem: string } | undefined {
  try {
    return { path, pem: readFileSync(path, 'utf8') };
  } catch {
    return undefined;
  }
}

const tlsFiles = z
  .strictObject({
    cert: unit(readFile, 'a readable PEM certificate (chain) file'),
    key: unit(readFile, 'a readable PEM private key file'),
  })
  .superRefine((tls, ctx) => {
    try {
      createSecureContext({ cert: tls.cert.pem, key: tls.key.pem });
    } catch (err) {
      ctx.addIssue({ code: 'custom', path: ['key'], message: `does not fit the certificate: ${(err as Error).message}` });
    }
  });

/** `host:port`, or `{ host, port, tls: { cert, key } }` to serve wss:// directly. */
const listen = z.preprocess(
  (value, ctx) => {
    // YAML reads `listen: 8080` as a number: a port without the address to listen on.
    if (typeof value === 'number') {
      ctx.addIssue({ code: 'custom', message: `expected host:port, got ${value} (a port alone: write 0.0.0.0:${value} or 127.0.0.1:${value})` });
      return {};
    }
    if (typeof value !== 'string') return value;
    const parsed = parseHostPort(value);
    if (parsed === undefined) ctx.addIssue({ code: 'custom', message: `expected host:port, got "${value}"` });
    return parsed ?? {};
  },
  z.strictObject({ host: z.string().default('0.0.0.0'), port, tls: tlsFiles.optional() }, { error: 'expected host:port or { host, port, tls }' }),
);

function parseUpstream(text: string): { host: string; port: number; origin: string } | undefined {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return undefined;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'ws:') return undefined;
  if ((url.pathname !== '/' && url.pathname !== '') || url.search || url.username) return undefined;
  const host = url.hostname.replace(/^\[|\]$/g, '');
  return { host, port: url.port ? Number(url.port) : 80, origin: `http://${url.host}` };
}

const upstream = unit(parseUpstream, 'an http:// URL with host and port, like http://127.0.0.1:8000');

function parseCidr(text: string): { address: string; prefix: number; family: 'ipv4' | 'ipv6' } | undefined {
  const [address = '', prefixText, ...extra] = text.trim().split('/');
  const version = net.isIP(address);
  if (version === 0 || extra.length > 0) return undefined;
  const max = version === 4 ? 32 : 128;
  const prefix = prefixText === undefined ? max : Number(prefixText);
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > max || prefixText === '') return undefined;
  return { address, prefix, family: version === 4 ? 'ipv4' : 'ipv6' };
}

const cidr = unit(parseCidr, 'an IP address or CIDR like 10.0.0.0/8');

const timeouts = z
  .strictObject({
    handshake: timerDuration.default(10_000),
    upstreamConnect: timerDuration.default(5_000),
    upstreamResponse: timerDuration.default(10_000),
    close: timerDuration.default(5_000),
    drain: timerDuration.default(30_000),
    /** Plain HTTP: the whole request body must arrive within this, counted from the request head (408). */
    request: timerDuration.default(30_000),
    /**
     * Plain HTTP: how long the upstream may take to send its response head once the request is sent (504).
     * Longer than upstreamResponse (an upgrade's) so a long poll (Socket.IO waits up to 25 s) survives.
     */
    upstreamHeaders: timerDuration.default(60_000),
  })
  .prefault({});

const HMAC = ['HS256', 'HS384', 'HS512'] as const;
const ASYMMETRIC = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519'] as const;
/** RFC 7518 §3.2: an HMAC key must be at least as long as the hash output. */
const HMAC_MIN_BYTES: Record<string, number> = { HS256: 32, HS384: 48, HS512: 64 };
/** Which algorithms each kind of public key can verify. */
const KEY_ALGORITHMS: Record<string, readonly string[]> = {
  rsa: ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512'],
  'rsa-pss': ['PS256', 'PS384', 'PS512'],
  ec: ['ES256', 'ES384', 'ES512'],
  ed25519: ['EdDSA', 'Ed25519'],
};

function parseJwksUrl(text: string): URL | undefined {
  try {
    const url = new URL(text);
    const loopback = ['127.0.0.1', '[::1]', 'localhost'].includes(url.hostname);
    return url.protocol === 'https:' || (url.protocol === 'http:' && loopback) ? url : undefined;
  } catch {
    return undefined;
  }
}

/** Reads a PEM public key file; the parsed key is checked here so a bad file stops the start. */
function readPublicKey(path: string): { path: string; pem: string; type: string } | undefined {
  try {
    const pem = readFileSync(path, 'utf8');
    const key: KeyObject = createPublicKey(pem);
    return { path, pem, type: key.asymmetricKeyType ?? 'unknown' };
  } catch {
    return undefined;
  }
}

const TOKEN_SOURCES = ['header', 'protocol', 'query', 'cookie'] as const;
const HEADER_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** The JWT keys, all optional, so a route can override some of them; the full set is checked by `jwtSchema`. */
const jwtShape = {
  secret: z.string().min(1).optional(),
  publicKey: unit(readPublicKey, 'a readable PEM public key file').optional(),
  jwksUrl: unit(parseJwksUrl, 'an https:// URL (http:// only on loopback)').optional(),
  jwksTimeout: timerDuration.optional(),
  jwksCooldown: duration.optional(),
  jwksCacheMaxAge: duration.optional(),
  algorithms: z.array(z.enum([...HMAC, ...ASYMMETRIC], { error: `expected one of ${[...HMAC, ...ASYMMETRIC].join(', ')}` })).min(1).optional(),
  issuer: z.union([z.string(), z.array(z.string()).min(1)], { error: 'expected a string or a list of strings' }).optional(),
  audience: z.union([z.string(), z.array(z.string()).min(1)], { error: 'expected a string or a list of strings' }).optional(),
  requiredClaims: z.array(z.string().min(1)).optional(),
  /** 0 is meaningful here: no tolerance at all. */
  // RFC 7519 §4.1.4 allows "a few minutes" of skew; hours would quietly switch expiry off.
  clockTolerance: measured(DURATION, { min: 0, max: CLOCK_TOLERANCE_MAX_MS }).optional(),
  tokenSources: z.array(z.enum(TOKEN_SOURCES, { error: `expected one of ${TOKEN_SOURCES.join(', ')}` })).min(1).optional(),
  queryParam: z.string().min(1).optional(),
  cookie: z.string().min(1).optional(),
  forwardClaims: z.record(z.string(), z.string().regex(HEADER_NAME, 'expected a header name')).optional(),
  onReject: z.enum(['status', 'close'], { error: 'expected status or close' }).optional(),
  expiry: z.enum(['close', 'ignore'], { error: 'expected close or ignore' }).optional(),
  maxTokenLength: size.optional(),
};

const JWT_DEFAULTS = {
  jwksTimeout: 5_000,
  jwksCooldown: 30_000,
  jwksCacheMaxAge: 600_000,
  requiredClaims: [] as string[],
  clockTolerance: 0,
  tokenSources: [...TOKEN_SOURCES],
  queryParam: 'access_token',
  cookie: 'access_token',
  forwardClaims: {} as Record<string, string>,
  onReject: 'status' as const,
  expiry: 'close' as const,
  maxTokenLength: 8192,
};

const partialJwt = z.strictObject(jwtShape);
type PartialJwt = z.output<typeof partialJwt>;

/** Fills defaults into a (merged) JWT config and checks that its key source and algorithms fit together. */
export function completeJwt(jwt: PartialJwt, ctx: z.RefinementCtx, path: PropertyKey[]) {
  const issue = (key: string, message: string) => ctx.addIssue({ code: 'custom', path: [...path, key], message });
  const sources = (['secret', 'publicKey', 'jwksUrl'] as const).filter((k) => jwt[k] !== undefined);
  if (sources.length !== 1) {
    issue(sources[1] ?? 'secret', 'exactly one of secret, publicKey or jwksUrl is required');
  }
  if (jwt.algorithms === undefined) {
    issue('algorithms', 'is required: list the algorithms tokens may use');
    return z.NEVER;
  }
  const hmac = jwt.algorithms.filter((a) => a.startsWith('HS'));
  if (jwt.secret !== undefined) {
    if (hmac.length !== jwt.algorithms.length) issue('algorithms', 'a secret verifies only HS256, HS384 or HS512');
    const bytes = Buffer.byteLength(jwt.secret);
    for (const alg of hmac) {
      if (bytes < HMAC_MIN_BYTES[alg]!) issue('secret', `${alg} needs a secret of at least ${HMAC_MIN_BYTES[alg]} bytes, got ${bytes}`);
    }
  } else if (hmac.length > 0) {
    issue('algorithms', `${hmac.join(', ')} needs a secret, not a public key`);
  }
  if (jwt.publicKey !== undefined) {
    const fits = KEY_ALGORITHMS[jwt.publicKey.type] ?? [];
    const misfit = jwt.algorithms.filter((a) => !fits.includes(a));
    if (misfit.length > 0) issue('algorithms', `a ${jwt.publicKey.type} key cannot verify ${misfit.join(', ')}`);
  }
  return { ...JWT_DEFAULTS, ...jwt, algorithms: jwt.algorithms };
}

const jwtSchema = partialJwt.transform((jwt, ctx) => completeJwt(jwt, ctx, []));
export type JwtConfig = z.output<typeof jwtSchema>;

const auth = z.strictObject({ jwt: jwtSchema });

const origins = z.array(unit(parseOriginPattern, 'an origin like https://app.example.com or https://*.example.org'));

const positive = z.number({ error: 'expected a positive whole number' }).int().positive();
const RATE_EXPECTED = 'expected a rate like 10/minute, 20/s or 100 per hour';
const rate = z.string({ error: notText(RATE_EXPECTED, (n) => `${n}/s`, 'period') }).transform((text, ctx) => {
  const [negative, rest] = splitSign(text);
  const parsed = parseRate(rest);
  if (parsed === undefined) return fail(ctx, `${RATE_EXPECTED}, got "${text}"`);
  // A throttled message waits up to periodMs / count for its token, on a timer.
  if (negative || parsed.periodMs / parsed.count > TIMER_MAX_MS) {
    return fail(ctx, `expected a rate of at least 1 per ${formatDuration(TIMER_MAX_MS)}, got "${text}"`);
  }
  if (parsed.count > Number.MAX_SAFE_INTEGER) return fail(ctx, `expected a rate of at most ${Number.MAX_SAFE_INTEGER} per period, got "${text}"`);
  return parsed;
});

const limitsShape = z.strictObject({
  connections: z
    .strictObject({
      total: positive.optional(),
      perIp: positive.optional(),
      perUser: positive.optional(),
      warnAt: z.number({ error: 'expected a fraction like 0.9' }).gt(0).max(1).optional(),
    })
    .optional(),
  handshakes: z.strictObject({ rate, burst: positive.optional() }).optional(),
  messages: z
    .strictObject({
      rate,
      burst: positive.optional(),
      per: z.enum(['connection', 'user', 'ip'], { error: 'expected connection, user or ip' }).optional(),
      onExceed: z.enum(['close', 'throttle'], { error: 'expected close or throttle' }).optional(),
    })
    .optional(),
  messageSize: size.optional(),
  /** Process-wide, top level only: bytes of compressed messages held while they are measured (docs/limits.md). */
  holdBudget: size.optional(),
  maxFragments: positive.optional(),
  /** Pings and pongs from the client, per connection; on by default (docs/limits.md), `off` to disable. */
  controlFrames: z
    .union([z.literal('off'), z.strictObject({ rate, burst: positive.optional() })], { error: 'expected { rate, burst } or off' })
    .optional(),
  idleTimeout: measuredOrOff(DURATION, { max: TIMER_MAX_MS }).optional(),
  maxLifetime: measuredOrOff(DURATION, { max: TIMER_MAX_MS }).optional(),
  /** Plain HTTP requests (docs/limits.md): a rate per ip or user, requests in flight per IP, body size. */
  requests: z
    .strictObject({
      rate: rate.optional(),
      burst: positive.optional(),
      per: z.enum(['ip', 'user'], { error: 'expected ip or user' }).optional(),
      concurrent: positive.optional(),
      body: size.optional(),
    })
    .optional(),
});
type PartialLimits = z.output<typeof limitsShape>;

/**
 * A route's limits over the top-level ones, each group (connections, handshakes, messages) merged key by
 * key. `off` is still a value here, so a route's `idleTimeout: off` wins over a top-level duration.
 */
function mergeLimits(top: PartialLimits | undefined, own: PartialLimits | undefined): PartialLimits {
  const merged: PartialLimits = { ...top, ...own };
  for (const group of ['connections', 'handshakes', 'messages', 'requests'] as const) {
    if (top?.[group] && own?.[group]) (merged as Record<string, unknown>)[group] = { ...top[group], ...own[group] };
  }
  // `off` on either side is not merged: a route's `off` wins, and a route's own object replaces a top-level `off`.
  const topControl = top?.controlFrames;
  const ownControl = own?.controlFrames;
  if (typeof topControl === 'object' && typeof ownControl === 'object') merged.controlFrames = { ...topControl, ...ownControl };
  return merged;
}

/** 32 MiB: 16 messages of the README's 1 MiB `messageSize` measured at once, each held at up to twice its size. */
const DEFAULT_HOLD_BUDGET = 32 * 1024 * 1024;

const unlessOff = (value: number | 'off' | undefined) => (value === 'off' ? undefined : value);

/**
 * 100 pings or pongs a second per connection, 200 at once: thousands of times what keepalives and
 * answered pings need, and a cap on what a flood makes the upstream answer (docs/limits.md).
 */
const DEFAULT_CONTROL_FRAMES = { rate: { count: 100, periodMs: 1000 }, burst: 200 };

/**
 * Plain HTTP requests in flight per client address when nothing is configured: far above what a browser
 * opens to one site (6 per host over HTTP/1.1), low enough that one address cannot hold the app's workers.
 */
const DEFAULT_CONCURRENT_REQUESTS = 32;

/** Fills the defaults: a burst of one period's count, 90% warning, control frames 100/s (burst 200). */
function completeLimits(limits: PartialLimits) {
  const { connections, handshakes, messages } = limits;
  const requests = limits.requests ?? {};
  return {
    ...limits,
    connections: connections && { ...connections, warnAt: connections.warnAt ?? 0.9 },
    handshakes: handshakes && { ...handshakes, burst: handshakes.burst ?? Math.max(1, Math.ceil(handshakes.rate.count)) },
    messages: messages && {
      ...messages,
      burst: messages.burst ?? Math.max(1, Math.ceil(messages.rate.count)),
      per: messages.per ?? ('connection' as const),
      onExceed: messages.onExceed ?? ('close' as const),
    },
    controlFrames: limits.controlFrames === 'off'
      ? undefined
      : limits.controlFrames === undefined
        ? DEFAULT_CONTROL_FRAMES
        : { ...limits.controlFrames, burst: limits.controlFrames.burst ?? Math.max(1, Math.ceil(limits.controlFrames.rate.count)) },
    requests: {
      rate: requests.rate,
      burst: requests.rate === undefined ? undefined : requests.burst ?? Math.max(1, Math.ceil(requests.rate.count)),
      per: requests.per ?? ('ip' as const),
      concurrent: requests.concurrent ?? DEFAULT_CONCURRENT_REQUESTS,
      body: requests.body,
    },
    holdBudget: limits.holdBudget ?? DEFAULT_HOLD_BUDGET,
    idleTimeout: unlessOff(limits.idleTimeout),
    maxLifetime: unlessOff(limits.maxLifetime),
  };
}
export type LimitsConfig = ReturnType<typeof completeLimits>;

const HTTP_MODES = ['auth', 'pass', 'deny'] as const;
const httpMode = z.enum(HTTP_MODES, { error: 'expected auth, pass or deny' });

const route = z.strictObject({
  path: z.string().startsWith('/', 'expected a path starting with /'),
  /** false: no authentication on this route; an object: JWT keys merged over the top-level ones. */
  auth: z.union([z.literal(false), z.strictObject({ jwt: partialJwt })], { error: 'expected false or { jwt: {...} }' }).optional(),
  origins: origins.optional(),
  allowNoOrigin: z.boolean().optional(),
  /** Plain HTTP on this route: auth (default where the route has auth), pass, or deny (404). */
  http: httpMode.optional(),
  /** Merged over the top-level limits; a route's own `connections` is a pool of its own (see docs/limits.md). */
  limits: limitsShape.optional(),
});

/**
 * The admin listener: `host:port` (probes and metrics only), or `{ listen, token }`, whose bearer token
 * guards the operator endpoints (GET /connections, POST /connections/close). The token is at least 16
 * characters: it guards a kill switch that disconnects and bans users, so it must not be guessable.
 */
export const MIN_ADMIN_TOKEN = 16;
const admin = z.preprocess(
  (value) => (typeof value === 'string' ? { listen: value } : value),
  z.strictObject({
    listen: unit(parseHostPort, 'host:port'),
    // The message names the length only: a config error must not print the secret.
    token: z.string({ error: 'expected a string' }).superRefine((token, ctx) => {
      if (token.length < MIN_ADMIN_TOKEN) {
        ctx.addIssue({ code: 'custom', message: `expected at least ${MIN_ADMIN_TOKEN} characters (it guards the kill switch, POST /connections/close), got ${token.length}` });
      }
    }).optional(),
  }, { error: 'expected host:port or { listen: host:port, token: ... }' }),
).transform(({ listen, token }) => ({ ...listen, token }));

/**
 * The cluster-wide limit store (docs/scaling.md). `redis` is a redis:// or rediss:// URL, or the Sentinel
 * form `{ sentinels: [host:port, ...], name }`, or the Cluster form `{ cluster: [host:port, ...] }`.
 */
const REDIS_URL = /^rediss?:\/\/[^\s]+$/;
function redisUrl(text: string): URL | undefined {
  if (!REDIS_URL.test(text.trim())) return undefined;
  try {
    const url = new URL(text.trim());
    const db = url.pathname.replace(/^\//, '');
    return url.hostname !== '' && /^(\d{1,2})?$/.test(db) ? url : undefined;
  } catch {
    return undefined;
  }
}
const hostPorts = z.array(unit(parseHostPort, 'host:port'), { error: 'expected a list of host:port' }).min(1, 'expected at least one host:port');
const redisCredentials = {
  username: z.string({ error: 'expected a string' }).optional(),
  password: z.string({ error: 'expected a string' }).optional(),
  /** TLS to every node (the URL form says it with rediss://). */
  tls: z.boolean({ error: 'expected true or false' }).default(false),
};
const redisTarget = z.union(
  [
    unit(redisUrl, 'a URL like redis://host:6379/0 or rediss://user:password@host:6380'),
    z.strictObject({
      sentinels: hostPorts,
      /** The master's name, as the sentinels know it. */
      name: z.string({ error: 'expected the master name' }).min(1, 'expected the master name'),
      db: z.number({ error: 'expected a database number' }).int().min(0).max(15).default(0),
      sentinelPassword: z.string({ error: 'expected a string' }).optional(),
      ...redisCredentials,
    }),
    z.strictObject({ cluster: hostPorts, ...redisCredentials }),
  ],
  { error: 'expected redis://host:port/db, { sentinels: [host:port], name: master } or { cluster: [host:port] }' },
);
/** Redis Cluster puts keys with the same {hash tag} together; a prefix with braces would choose the tag instead. */
const keyPrefix = z
  .string({ error: 'expected a string' })
  .min(1, 'expected at least one character')
  .max(64, 'expected at most 64 characters')
  .refine((p) => !/[{}\s]/.test(p), 'expected no braces or spaces (Redis Cluster reads {...} as a hash tag)');
const store = z.strictObject({
  redis: redisTarget,
  keyPrefix: keyPrefix.default('ws-guard:'),
  /** A replica that stops renewing its lease loses its connection slots after this. */
  leaseTtl: measured(DURATION, { min: 1000, max: 10 * 60_000 }).default(15_000),
  /** What admission does while Redis cannot answer: this replica's own limits, admit, or refuse (503). */
  onError: z.enum(['local', 'open', 'closed'], { error: 'expected local, open or closed' }).default('local'),
  /** The deadline of one call to Redis; past it the call counts as a failure (onError). */
  timeout: measured(DURATION, { min: 10, max: 60_000 }).default(500),
  /**
   * Message tokens (limits.messages per: user|ip) a replica may use ahead of Redis, per user or address:
   * the overshoot bound is batch × replicas. `auto`: 100 ms of the rate (at least 1, at most the burst).
   */
  batch: z.union([z.literal('auto'), positive.max(1_000_000_000, 'expected auto or a whole number up to 1000000000')], { error: 'expected auto or a positive whole number' }).default('auto'),
});
export type StoreConfig = z.output<typeof store>;

export const configSchema = z
  .strictObject({
    listen,
    upstream,
    /** The admin listener: /healthz, /readyz, /metrics. Keep it off the public interface. */
    admin: admin.optional(),
    /** Processes sharing the listener; `auto` is one per core. Connection and handshake limits hold for the group. */
    workers: z.union([positive, z.literal('auto')], { error: 'expected a number of processes or auto' }).default(1),
    trustedProxies: z.array(cidr).default([]),
    compression: z.enum(['passthrough', 'off'], { error: 'expected passthrough or off' }).default('passthrough'),
    timeouts,
    auth: auth.optional(),
    origins: origins.optional(),
    allowNoOrigin: z.boolean().default(false),
    /** Plain HTTP where no route says otherwise: auth (default where there is auth), pass, or deny (404). */
    http: httpMode.optional(),
    routes: z.array(route).default([]),
    limits: limitsShape.optional(),
    /** Limits shared by every replica through Redis; omitted = this process (and its workers) only. */
    store: store.optional(),
  })
  .transform((config, ctx) => ({
    ...config,
    limits: completeLimits(config.limits ?? {}),
    // Each route's auth is resolved here, once: its JWT keys merged over the top-level ones.
    routes: config.routes.map((r, i) => {
      if (r.limits?.holdBudget !== undefined) {
        ctx.addIssue({ code: 'custom', path: ['routes', i, 'limits', 'holdBudget'], message: 'is for the whole process: set it in the top-level limits' });
      }
      let routeAuth: { jwt: JwtConfig } | undefined = config.auth;
      if (r.auth === false) routeAuth = undefined;
      else if (r.auth !== undefined) {
        const merged = completeJwt(mergeJwt(config.auth?.jwt, r.auth.jwt), ctx, ['routes', i, 'auth', 'jwt']);
        routeAuth = merged === z.NEVER ? undefined : { jwt: merged };
      }
      return {
        ...r,
        auth: routeAuth,
        origins: r.origins ?? config.origins,
        allowNoOrigin: r.allowNoOrigin ?? config.allowNoOrigin,
        http: r.http ?? config.http,
        limits: completeLimits(mergeLimits(config.limits, r.limits)),
        /** Whether this route counts its connections in a pool of its own, besides the global one. */
        ownConnectionPool: r.limits?.connections !== undefined,
        /** Whether this route counts plain requests in flight on its own, apart from the rest of the process. */
        ownRequestPool: r.limits?.requests?.concurrent !== undefined,
      };
    }),
  }));

/** A route's JWT keys over the top-level ones; a route that names its own key source replaces the top one. */
function mergeJwt(top: JwtConfig | undefined, override: PartialJwt): PartialJwt {
  if (top === undefined) return override;
  const ownKey = override.secret !== undefined || override.publicKey !== undefined || override.jwksUrl !== undefined;
  const { secret, publicKey, jwksUrl, ...rest } = top;
  return { ...rest, ...(ownKey ? {} : { secret, publicKey, jwksUrl }), ...override };
}

export type GuardConfig = z.output<typeof configSchema>;
export type ConfigInput = z.input<typeof configSchema>;
export type RouteConfig = GuardConfig['routes'][number];
