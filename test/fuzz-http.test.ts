// HTTP-level fuzzer (design.md §1 "Totality"): thousands of generated and mutated requests, upgrade-shaped
// and plain, against the built guard running as its own process in front of the real FastAPI app. No case
// may end the process or make it write a malformed answer; afterwards the same process still proxies plain
// HTTP and WebSocket, and no connection is left open.
//
//   npm run build && npx vitest run test/fuzz-http.test.ts
//   WS_GUARD_FUZZ_CASES=50000 WS_GUARD_FUZZ_SEED=7 npx vitest run test/fuzz-http.test.ts   # a long run
//   WS_GUARD_FUZZ_SEED=<seed> WS_GUARD_FUZZ_CASE=<id> ...                                  # replay one case
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { constants as zlibConstants, deflateRawSync } from 'node:zlib';
import { SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from './helpers/clients.js';
import {
  MINIMIZE, VERBOSE, ONLY, SEED, Tally, UNCAUGHT, caseCount, caseRng, esc, httpGet, latin1, lineDeletions, metricSum,
  rawExchange, removeSnapshot, runCampaign, spawnGuard, summarize, wsFrame, wsKey, type FuzzCase, type GuardProc, type Rng,
  openAfterwards, wsEcho,
} from './helpers/fuzz.js';
import { startUpstream, type Upstream } from './helpers/upstream.js';

const CASES = caseCount(4000);
const DEADLINE_MS = 1200;
const IDLE_MS = 150;
const SECRET = 'fuzz-secret-0123456789-0123456789-0123456789';
const ORIGIN = 'http://allowed.example';

interface HttpCase extends FuzzCase {
  upgrade: boolean;
  data: Buffer;
  /** Where `data` is cut into separate writes. */
  splits: number[];
  gapMs: number;
  ending: 'wait' | 'fin' | 'rst';
  rstAfterMs: number;
}

let upstream: Upstream;
let guard: GuardProc | undefined;
let ports: { port: number; adminPort: number };
let validToken = '';
/** Tokens the fuzzer places anywhere a token may be: valid, odd claims, broken, forged. */
const tokens: string[] = [];

const b64url = (v: unknown) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

async function mint(claims: Record<string, unknown>, secret = SECRET, exp = Math.floor(Date.now() / 1000) + 3600): Promise<string> {
  return new SignJWT(claims).setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).setIssuedAt().setExpirationTime(exp)
    .sign(new TextEncoder().encode(secret));
}

beforeAll(async () => {
  upstream = await startUpstream();
  ports = { port: await freePort(), adminPort: await freePort() };
  validToken = await mint({ sub: 'fuzz-user' });
  const now = Math.floor(Date.now() / 1000);
  tokens.push(
    validToken,
    // Claims from outside may be anything: forwardClaims puts `sub` into an upstream header.
    await mint({ sub: 'a\r\nX-Injected: 1' }),
    await mint({ sub: 'caf\u00e9 \u00ff' }),
    await mint({ sub: 'snow \u2603 \ud83d\ude00' }),
    await mint({ sub: '' }),
    await mint({ sub: 'x'.repeat(3000) }),
    await mint({ sub: '\u0000\u007f' }),
    await mint({ sub: 42 }),
    await mint({ sub: { nested: ['a'] } }),
    await mint({ sub: ['a', 'b'] }),
    await mint({ sub: null }),
    await mint({ sub: true }),
    await mint({}),
    await mint({ sub: 'expired' }, SECRET, now - 3600),
    await mint({ sub: 'nbf', nbf: now + 3600 }),
    await mint({ sub: 'forged' }, 'another-secret-0123456789-0123456789-01234'),
    `${b64url({ alg: 'none', typ: 'JWT' })}.${b64url({ sub: 'none', exp: now + 3600 })}.`,
    `${b64url({ alg: 'HS256' })}.${b64url('not json')}.${b64url('sig')}`,
    `${b64url('{')}.${b64url('}')}.x`,
    'a.b.c',
    '...',
    '',
    'x'.repeat(12_000),
    'Bearer',
    '\u00e9\u00e9.\u00ff.\u0080',
  );
});

afterAll(async () => {
  await guard?.stop();
  await upstream?.stop();
  removeSnapshot();
});

function start(): Promise<GuardProc> {
  const yaml = [
    `listen: 127.0.0.1:${ports.port}`,
    `upstream: http://127.0.0.1:${upstream.port}`,
    `admin: 127.0.0.1:${ports.adminPort}`,
    'timeouts: { handshake: 2s, upstreamConnect: 2s, upstreamResponse: 3s, close: 1s, drain: 1s }',
    'auth:',
    '  jwt:',
    '    secret: ${FUZZ_JWT_SECRET}',
    '    algorithms: [HS256]',
    '    forwardClaims: { sub: X-Auth-Sub }',
    `origins: [${ORIGIN}]`,
    'limits:',
    '  connections: { total: 100000, perIp: 100000 }',
    '  messageSize: 64KiB',
    'routes:',
    '  - { path: /ws/echo, auth: false }',
    '',
  ].join('\n');
  return spawnGuard(yaml, { FUZZ_JWT_SECRET: SECRET }, ports);
}

// ---------------------------------------------------------------------------------------------------------
// Generators

const METHODS: readonly (readonly [number, string])[] = [
  [40, 'GET'], [6, 'POST'], [4, 'HEAD'], [4, 'DELETE'], [4, 'OPTIONS'], [3, 'PUT'], [2, 'PATCH'], [2, 'TRACE'],
  [2, 'CONNECT'], [2, 'get'], [1, 'Get'], [1, 'M-SEARCH'], [1, 'PROPFIND'], [1, 'PURGE'], [1, 'SOURCE'], [1, 'QUERY'],
  [1, 'G\u00c9T'], [1, 'GE'], [1, 'GETT'], [1, 'X'.repeat(300)], [1, ''], [1, ' GET'], [1, 'GET\t'], [1, 'GET\u0000'],
  [1, 'BREW'], [1, '*'],
];

const BASE_TARGETS = [
  '/hello', '/hello?tag=fz', '/headers', '/upload', '/stream?chunks=2', '/ws/echo', '/ws/echo?tag=fz&proto=chat',
  '/ws/close?code=4000&reason=x', '/ws/reject', '/ws/push?bytes=100&size=10', '/nope', '/', '/_seen?tag=fz',
];

/** Targets that have tripped proxies (and this one) before. */
const ODD_TARGETS = [
  '*', 'http://127.0.0.1/hello', 'http://[::1]/ws/echo', 'HTTP://x/ws/echo', 'http://user:pw@x/ws/echo', 'ws://x/ws/echo',
  '//[?', '//[', '/[?', '/?[', '/ws/echo?[', '//', '//hello', '//ws/echo?x', '/ws//echo', '/ws/%65cho', '/ws/%2e%2e/x',
  '/%2F', '/%2f%2f', '/%5c', '/%', '/%zz?x', '/%00', '/%ff', '/ws/echo#frag', '/ws/echo?#', '/ws/echo?a=%',
  '/hello?access_token=A&access_token=B', '/\u00e9', '/\u00c3\u00a9', '/\u00ff\u0080', '/a\tb', '/ws/echo?x=\u007f', '/\u007f',
  'example.com:443', '127.0.0.1:1', '/..', '/./ws/echo', '/ws/echo/../../', '\\ws\\echo', '/ws\\echo', '/hello;x=1',
  '/hello?', '/?', '?', '#', '/hello?a=1&a=2&a', '/ws/echo?access_token=', '/ws/echo?access_token', '/%E2%98%83',
  '/ws/echo?%zz=1', '/ws/echo?access_token=%zz', '/ws/echo?access%5ftoken=x', '/ws/echo?=&&=', '/hello?x=[1]',
  '/hello?x={}', '/"', '/<script>', '/hello|x', '/hello^', '/hello`', '/\u0001', '/ws/echo?\u0008',
];

const INSERTS = ['[', ']', '?', '#', '%', '%2', '%25', '//', '\t', '\u007f', '\u0080', '\u00ff', '\u0000', '"', '<', '{', '|', '\\',
  '^', '`', ' ', '@', ':', ';', '=', '&', '..', '/.', 'access_token=x&', '?access_token=', '\r', '\n', '\u000b', '\u000c'];

function genTarget(rng: Rng): string {
  let target = rng.weighted<() => string>([
    [6, () => rng.pick(BASE_TARGETS)],
    [5, () => rng.pick(ODD_TARGETS)],
    [2, () => `${rng.pick(['/ws/echo', '/ws/close', '/hello', '/headers'])}?access_token=${encodeURIComponent(rng.pick(tokens))}${rng.chance(0.4) ? `&access_token=${rng.pick(tokens)}` : ''}`],
    [1, () => `/${rng.str(rng.range(1, 40))}`],
    [1, () => `/${rng.str(rng.range(1, 30), 'abc/%?#[]:@!$&\'()*+,;=-._~')}`],
    [1, () => `/ws/echo?${'q'.repeat(rng.pick([100, 2000, 9000, 17_000]))}`],
    [1, () => `/${'b'.repeat(rng.pick([1000, 8000, 20_000]))}`],
  ])();
  for (let n = rng.chance(0.35) ? rng.range(1, 3) : 0; n > 0; n--) {
    const at = rng.int(target.length + 1);
    target = target.slice(0, at) + rng.pick(INSERTS) + target.slice(at);
  }
  return target;
}

const VERSIONS: readonly (readonly [number, string])[] = [
  [40, 'HTTP/1.1'], [3, 'HTTP/1.0'], [1, 'HTTP/2.0'], [1, 'HTTP/1.2'], [1, 'HTTP/0.9'], [1, 'http/1.1'], [1, 'HTTP/1.1 '],
  [1, 'HTTP/1'], [1, ''], [1, 'HTTP/11'], [1, 'HTTP/1.1\u0000'], [1, 'HTTP/3'],
];

type Header = [string, string];

function tokenHeaders(rng: Rng, headers: Header[]): void {
  const t = () => (rng.chance(0.5) ? validToken : rng.pick(tokens));
  const count = rng.weighted([[5, 1], [3, 0], [2, 2], [1, 3]]);
  for (let i = 0; i < count; i++) {
    rng.weighted<() => void>([
      [4, () => headers.push(['Authorization', `Bearer ${t()}`])],
      [1, () => headers.push(['Authorization', rng.pick(['Bearer', 'Bearer ', `bearer ${t()}`, `Bearer  ${t()}`, `Basic ${t()}`, `Bearer ${t()} ${t()}`, `Bearer ${t()},Bearer ${t()}`, 'Digest x', ''])])],
      [3, () => headers.push(['Sec-WebSocket-Protocol', `bearer, ${t()}`])],
      [2, () => headers.push(['Sec-WebSocket-Protocol', rng.pick([
        'bearer, x, bearer, y', 'bearer', 'bearer,', ', ,', `chat, bearer, ${validToken}`, `bearer, ${validToken}, chat`,
        `bearer, ${validToken}, bearer, ${validToken}`, 'chat, superchat', 'bearer, ', ' bearer , x ', 'bear\u00e9r, x', 'x y', 'chat,,chat',
      ])])],
      [3, () => headers.push(['Cookie', `access_token=${t()}`])],
      [2, () => headers.push(['Cookie', rng.pick([
        `access_token=${validToken}; access_token=${validToken}`, `a=1; access_token=${validToken}`, 'access_token', 'access_token=',
        '=;=;', ';;;', 'access_token="quoted"', `access_token=%zz`, `access_token=${validToken}%`, '\u00e9=\u00ff', 'a=b=c',
        `ACCESS_TOKEN=${validToken}`, ` access_token = ${validToken} `, 'access_token=a,access_token=b',
      ])])],
    ])();
  }
}

/** Extra headers with a valid syntax (odd meaning welcome). */
const GOOD_HEADERS: readonly (() => Header)[] = [
  () => ['X-Auth-Sub', 'spoofed'],
  () => ['x-auth-sub', 'spoofed, other'],
  () => ['X-Forwarded-For', '1.2.3.4, ::1, garbage, '],
  () => ['X-Forwarded-Host', 'evil.example'],
  () => ['Forwarded', 'for=1.2.3.4;host=x'],
  () => ['Sec-WebSocket-Extensions', 'permessage-deflate; client_max_window_bits'],
  () => ['Sec-WebSocket-Extensions', 'permessage-deflate; server_max_window_bits=99; client_max_window_bits=x, x-foo'],
  () => ['Sec-WebSocket-Extensions', ';;,,permessage-deflate;;'],
  () => ['Sec-WebSocket-Extensions', 'permessage-deflate; client_no_context_takeover; client_no_context_takeover'],
  () => ['Sec-WebSocket-Key', 'dGhlIHNhbXBsZSBub25jZQ=='],
  () => ['Sec-WebSocket-Version', '8'],
  () => ['Sec-WebSocket-Version', '13, 13'],
  () => ['Upgrade', 'h2c'],
  () => ['Upgrade', 'websocket, h2c'],
  () => ['Upgrade', 'WebSocket'],
  () => ['Connection', 'close'],
  () => ['Connection', 'keep-alive'],
  () => ['Connection', 'Upgrade, Content-Length'],
  () => ['Connection', 'Content-Length'],
  () => ['Connection', 'Transfer-Encoding'],
  () => ['Connection', 'X-Auth-Sub, Authorization, Cookie, Host, Sec-WebSocket-Key'],
  () => ['Connection', 'Upgrade, HTTP2-Settings'],
  () => ['Connection', ',,,'],
  () => ['Keep-Alive', 'timeout=1'],
  () => ['TE', 'trailers'],
  () => ['Trailer', 'X-Foo'],
  () => ['Expect', '100-continue'],
  () => ['Expect', 'garbage'],
  () => ['Host', 'evil.example'],
  () => ['Host', ''],
  () => ['Host', '[::1'],
  () => ['Origin', 'null'],
  () => ['Origin', 'http://evil.example'],
  () => ['Origin', ORIGIN],
  () => ['Origin', `${ORIGIN}, ${ORIGIN}`],
  () => ['Origin', 'http://allowed.example.evil.com'],
  () => ['Origin', 'HTTP://ALLOWED.EXAMPLE'],
  () => ['Origin', 'http://allowed.example:80'],
  () => ['Origin', '\u00e9\u00ff://x'],
  () => ['Content-Type', 'application/json'],
  () => ['Proxy-Connection', 'keep-alive'],
  () => ['Proxy-Authorization', 'Basic x'],
  () => ['HTTP2-Settings', 'AAMAAABkAARAAAAAAAIAAAAA'],
  () => ['Range', 'bytes=0-1'],
  () => ['X-Empty', ''],
  () => ['X-Obs-Text', '\u0080\u00ff\u00e9'],
  () => ['X-Tab', 'a\tb'],
  () => ['X-Long', 'v'.repeat(9000)],
  () => ['X-Unicode', '\u00c3\u00a9'],
];

/** Extra headers a strict parser refuses (or that overflow it). */
const BAD_HEADERS: readonly (() => Header)[] = [
  () => ['X-Ctl', 'a\u0001b'],
  () => ['X-Nul', 'a\u0000b'],
  () => ['X-Del', 'a\u007fb'],
  () => ['X-CR', 'a\rb'],
  () => ['X-LF', 'a\nb'],
  () => ['X-Huge', 'v'.repeat(20_000)],
  () => ['Bad Name', 'x'],
  () => ['Bad\u00e9Name', 'x'],
  () => ['(x)', 'x'],
  () => ['', 'empty name'],
];

const RAW_LINES = [
  ' obs-fold continuation', '\tfolded', 'no colon at all', ':', ': starts with colon', 'X-Space : before colon', 'X-A:no-space',
  'X-A:   lots of space   ', 'X-Dup: 1', 'Host: second.example', 'Content-Length: 0', 'Transfer-Encoding: chunked',
  '\u0000', 'X-\u00ff: y',
];

type Framing = 'none' | 'cl' | 'cl-short' | 'cl-long' | 'chunked' | 'chunked-bad' | 'both' | 'cl-dup' | 'te-odd';

function framing(rng: Rng, upgrade: boolean, odd: boolean): { headers: Header[]; body: string; kind: Framing } {
  const bodyOf = (n: number) => rng.str(n, 'abcdefghij{}":,0123456789 ');
  const kind = odd
    ? rng.weighted<Framing>([[2, 'cl-short'], [2, 'cl-long'], [3, 'chunked-bad'], [3, 'both'], [3, 'cl-dup'], [3, 'te-odd']])
    : upgrade ? rng.weighted<Framing>([[20, 'none'], [1, 'cl'], [1, 'chunked']]) : rng.weighted<Framing>([[8, 'none'], [5, 'cl'], [4, 'chunked']]);
  const n = rng.pick([0, 1, 5, 32, 300]);
  const body = bodyOf(n);
  const chunked = () => {
    let out = '';
    let left = body;
    while (left.length > 0) {
      const k = Math.min(left.length, rng.range(1, 64));
      out += `${k.toString(16)}${rng.chance(0.1) ? ';ext=1' : ''}\r\n${left.slice(0, k)}\r\n`;
      left = left.slice(k);
    }
    return `${out}0\r\n${rng.chance(0.1) ? 'X-Trailer: t\r\n' : ''}\r\n`;
  };
  switch (kind) {
    case 'none':
      return { headers: [], body: rng.chance(0.05) ? body : '', kind };
    case 'cl':
      return { headers: [['Content-Length', String(n)]], body, kind };
    case 'cl-short':
      return { headers: [['Content-Length', String(n + rng.range(1, 100))]], body, kind };
    case 'cl-long':
      return { headers: [['Content-Length', String(Math.max(0, n - rng.range(1, 5)))]], body: `${body}GET /hello HTTP/1.1\r\nHost: x\r\n\r\n`, kind };
    case 'chunked':
      return { headers: [['Transfer-Encoding', 'chunked']], body: chunked(), kind };
    case 'chunked-bad':
      return {
        headers: [['Transfer-Encoding', 'chunked']],
        body: rng.pick(['zz\r\nab\r\n0\r\n\r\n', '-1\r\nx\r\n0\r\n\r\n', 'ffffffffffffffffff\r\nx\r\n', '5\r\nab\r\n', '1\r\nabc\r\n0\r\n\r\n',
          '0\r\n', ' 1\r\na\r\n0\r\n\r\n', '1\na\n0\n\n', '0x1\r\na\r\n0\r\n\r\n', '1;\u0000\r\na\r\n0\r\n\r\n', '']),
        kind,
      };
    case 'both':
      return { headers: rng.chance(0.5) ? [['Content-Length', String(n)], ['Transfer-Encoding', 'chunked']] : [['Transfer-Encoding', 'chunked'], ['Content-Length', '3']], body: chunked(), kind };
    case 'cl-dup':
      return {
        headers: rng.pick<Header[]>([
          [['Content-Length', String(n)], ['Content-Length', String(n)]],
          [['Content-Length', String(n)], ['Content-Length', String(n + 1)]],
          [['Content-Length', `${n}, ${n}`]],
          [['Content-Length', `${n},${n + 1}`]],
          [['Content-Length', '-1']],
          [['Content-Length', '1e3']],
          [['Content-Length', ` ${n} `]],
          [['Content-Length', '+5']],
          [['Content-Length', '0x10']],
          [['Content-Length', 'abc']],
          [['Content-Length', '99999999999999999999']],
          [['Content-Length', '']],
        ]),
        body,
        kind,
      };
    case 'te-odd':
      return {
        headers: [['Transfer-Encoding', rng.pick(['Chunked', 'gzip, chunked', 'chunked, identity', 'identity', 'gzip', '\tchunked', 'xchunked',
          'chunked, chunked', 'chunked;q=1', 'chunk', ' chunked ', 'chunked\u0000', 'chunked,'])]],
        body: rng.chance(0.5) ? chunked() : body,
        kind,
      };
  }
}

/** Byte-level damage: flips, inserts, deletions, duplicated spans. */
function mutate(rng: Rng, data: Buffer): Buffer {
  let buf = Buffer.from(data);
  for (let n = rng.range(1, 4); n > 0 && buf.length > 0; n--) {
    const at = rng.int(Math.min(buf.length, 600));
    rng.weighted<() => void>([
      [3, () => { buf[at] = buf[at]! ^ (1 << rng.int(8)); }],
      [3, () => { buf = Buffer.concat([buf.subarray(0, at), latin1(rng.pick(INSERTS)), buf.subarray(at)]); }],
      [2, () => { buf = Buffer.concat([buf.subarray(0, at), buf.subarray(at + rng.range(1, 4))]); }],
      [1, () => { const len = rng.range(1, 40); buf = Buffer.concat([buf.subarray(0, at + len), buf.subarray(at, at + len), buf.subarray(at + len)]); }],
      [1, () => { buf[at] = rng.int(256); }],
    ])();
  }
  return buf;
}

function render(requestLine: string, headers: Header[], body: string): string {
  return `${requestLine}\r\n${headers.map(([n, v]) => `${n}: ${v}\r\n`).join('')}\r\n${body}`;
}

/** What a client may send right behind its handshake: good frames, broken ones, compressed ones, bombs. */
function clientFrames(rng: Rng): Buffer[] {
  const out: Buffer[] = [];
  for (let n = rng.weighted([[6, 1], [3, 2], [1, 6]]); n > 0; n--) {
    out.push(rng.weighted<() => Buffer>([
      [4, () => wsFrame(1, 'hello', true)],
      [1, () => wsFrame(2, rng.bytes(rng.pick([0, 10, 200, 70_000])), true)],
      [1, () => wsFrame(1, 'unmasked', false)],
      [1, () => wsFrame(1, latin1('\u00ff\u00fe not utf-8'), true)],
      [1, () => wsFrame(8, Buffer.from([0x03, 0xe8]), true)],
      [1, () => wsFrame(8, Buffer.from([0x00, 0x01]), true)],
      [1, () => wsFrame(8, Buffer.from([0x03]), true)],
      [1, () => wsFrame(8, Buffer.concat([Buffer.from([0x03, 0xe8]), latin1('\u00ff\u00fe')]), true)],
      [1, () => wsFrame(9, 'ping', true)],
      [1, () => wsFrame(10, 'pong', true)],
      [1, () => wsFrame(9, 'p'.repeat(200), true)],
      [1, () => wsFrame(9, 'p', true, false)],
      [2, () => wsFrame(1, COMPRESSED_HELLO, true, true, true)],
      [2, () => wsFrame(2, rng.bytes(rng.range(1, 60)), true, true, true)],
      [1, () => wsFrame(2, DEFLATE_BOMB, true, true, true)],
      [1, () => Buffer.concat([wsFrame(1, COMPRESSED_HELLO.subarray(0, 3), true, false, true), wsFrame(0, COMPRESSED_HELLO.subarray(3), true, true, true)])],
      [1, () => Buffer.concat([wsFrame(1, 'frag-', true, false), wsFrame(0, 'ment', true)])],
      [1, () => wsFrame(0, 'stray continuation', true)],
      [1, () => Buffer.concat([wsFrame(1, 'a', true, false), wsFrame(1, 'b', true)])],
      [1, () => wsFrame(rng.pick([3, 4, 5, 6, 7, 11, 15]), 'x', true)],
      [1, () => Buffer.from([0xf1, 0x80, 1, 2, 3, 4])],
      [1, () => Buffer.from([0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0])],
      [1, () => Buffer.from([0x82, 0xff, 0, 0, 0, 0, 0, 1, 0x86, 0xa0, 1, 2, 3, 4])],
      [1, () => Buffer.from([0x82, 0xfe, 0xff, 0xff, 1, 2, 3, 4])],
      [1, () => Buffer.concat(Array.from({ length: 100 }, () => wsFrame(1, 'x', true, false)))],
      [1, () => rng.bytes(rng.range(1, 40))],
    ])());
  }
  return out;
}

/** permessage-deflate payloads: "hello" compressed (RFC 7692 §7.2.1: tail removed), and 1 MiB of zeros. */
const COMPRESSED_HELLO = deflateRawSync('hello', { finishFlush: zlibConstants.Z_SYNC_FLUSH }).subarray(0, -4);
const DEFLATE_BOMB = deflateRawSync(Buffer.alloc(1 << 20), { level: 9, finishFlush: zlibConstants.Z_SYNC_FLUSH }).subarray(0, -4);

type Perturbation =
  | 'method' | 'target' | 'insert' | 'version' | 'sep' | 'badHeader' | 'rawLine' | 'framing' | 'mutate' | 'dup' | 'dropBase'
  | 'baseValue' | 'huge';

/**
 * A valid request (upgrade-shaped or plain) with odd but well-formed values, then a few perturbations:
 * most cases keep zero to two, so they get past the parser and reach routing, tokens and the upstream.
 */
function genHttpCase(id: number): HttpCase {
  const rng = caseRng(id);
  const upgrade = rng.chance(0.55);
  // A third of the upgrades are clean (one valid token or none, allowed Origin): they reach the upstream
  // and the session, where the frames behind the handshake are inspected.
  const clean = upgrade && rng.chance(0.35);
  const perturb = new Set<Perturbation>();
  for (let k = clean ? 0 : rng.weighted([[35, 0], [40, 1], [17, 2], [8, 3]]); k > 0; k--) {
    perturb.add(rng.weighted<Perturbation>([
      [3, 'method'], [4, 'target'], [4, 'insert'], [1, 'version'], [1, 'sep'], [3, 'badHeader'], [2, 'rawLine'], [4, 'framing'],
      [4, 'mutate'], [2, 'dup'], [2, 'dropBase'], [2, 'baseValue'], [1, 'huge'],
    ]));
  }
  const method = perturb.has('method')
    ? rng.weighted(METHODS)
    : upgrade ? 'GET' : rng.weighted<string>([[10, 'GET'], [4, 'POST'], [2, 'HEAD'], [2, 'DELETE'], [2, 'OPTIONS'], [1, 'PUT'], [1, 'PATCH']]);
  let target = clean
    ? rng.pick(['/ws/echo', '/ws/echo?tag=fz', '/ws/push?bytes=3000&size=1000', '/ws/close?code=4000&reason=bye', '/ws/echo?proto=chat'])
    : perturb.has('target')
    ? rng.pick(ODD_TARGETS)
    : rng.weighted<() => string>([
      [8, () => rng.pick(BASE_TARGETS)],
      [upgrade ? 4 : 0, () => rng.pick(['/ws/echo', '/ws/echo?tag=fz', '/ws/push?bytes=3000&size=1000'])],
      [2, () => `${rng.pick(['/ws/echo', '/ws/close', '/hello', '/headers'])}?access_token=${encodeURIComponent(rng.pick(tokens))}${rng.chance(0.4) ? `&access_token=${encodeURIComponent(rng.pick(tokens))}` : ''}`],
      [1, () => `/ws/echo?${rng.str(rng.range(1, 30), 'abc/%?[]:@!$&\'()*+,;=-._~')}`],
    ])();
  if (perturb.has('huge')) {
    target = rng.weighted<() => string>([
      [1, () => `/ws/echo?${'q'.repeat(rng.pick([2000, 9000, 17_000]))}`],
      [1, () => `/${'b'.repeat(rng.pick([1000, 8000, 20_000]))}`],
      [1, () => `/${rng.str(rng.range(1, 40))}`],
    ])();
  }
  if (perturb.has('insert')) {
    for (let n = rng.range(1, 2); n > 0; n--) {
      const at = rng.int(target.length + 1);
      target = target.slice(0, at) + rng.pick(INSERTS) + target.slice(at);
    }
  }
  const version = perturb.has('version') ? rng.weighted(VERSIONS) : 'HTTP/1.1';
  const sep = perturb.has('sep') ? rng.pick(['  ', '\t', '', ' \t']) : ' ';
  const requestLine = `${method}${sep}${target}${sep === '' ? ' ' : sep}${version}`;
  const headers: Header[] = [];
  const dropOne = perturb.has('dropBase');
  const altered = perturb.has('baseValue');
  headers.push(['Host', altered && rng.chance(0.3) ? rng.pick(['x', 'evil.example', '127.0.0.1', '', '\u00e9', '[::1]:1']) : `127.0.0.1:${ports.port}`]);
  if (upgrade) {
    headers.push(['Upgrade', altered && rng.chance(0.4) ? rng.pick(['WebSocket', 'websocket ', 'h2c', 'websocket, h2c', '']) : 'websocket']);
    headers.push(['Connection', altered && rng.chance(0.4) ? rng.pick(['upgrade, keep-alive', 'keep-alive, Upgrade', 'close', 'Upgrade, Content-Length', 'Upgrade, Authorization, X-Auth-Sub, Cookie']) : 'Upgrade']);
    headers.push(['Sec-WebSocket-Key', altered && rng.chance(0.4) ? rng.pick(['', 'short', 'dGhlIHNhbXBsZSBub25jZQ', 'AAAAAAAAAAAAAAAAAAAAAAA=', `${wsKey(rng)}, ${wsKey(rng)}`, '\u00e9'.repeat(24)]) : wsKey(rng)]);
    headers.push(['Sec-WebSocket-Version', altered && rng.chance(0.4) ? rng.pick(['8', '', '13, 8', '0013', ' 13']) : '13']);
    if (rng.chance(0.9)) headers.push(['Origin', ORIGIN]);
    if (rng.chance(0.3)) headers.push(['Sec-WebSocket-Extensions', rng.pick(['permessage-deflate; client_max_window_bits', 'permessage-deflate; client_no_context_takeover', 'permessage-deflate'])]);
  } else if (rng.chance(0.7)) {
    headers.push(['Origin', ORIGIN]);
  }
  if (dropOne) headers.splice(rng.int(headers.length), 1);
  if (clean) {
    rng.weighted<() => void>([
      [5, () => headers.push(['Authorization', `Bearer ${validToken}`])],
      [2, () => headers.push(['Sec-WebSocket-Protocol', rng.pick([`bearer, ${validToken}`, `chat, bearer, ${validToken}`])])],
      [1, () => headers.push(['Cookie', `access_token=${validToken}`])],
      [2, () => undefined],
    ])();
  } else {
    tokenHeaders(rng, headers);
  }
  const fr = framing(rng, upgrade, perturb.has('framing'));
  headers.push(...fr.headers);
  for (let n = clean ? 0 : rng.weighted([[4, 0], [4, 1], [2, 2], [1, 4]]); n > 0; n--) headers.push(rng.pick(GOOD_HEADERS)());
  if (perturb.has('badHeader')) headers.splice(rng.range(1, headers.length), 0, rng.pick(BAD_HEADERS)());
  // Order matters to some parsers.
  if (rng.chance(0.3)) for (let i = headers.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [headers[i], headers[j]] = [headers[j]!, headers[i]!];
  }
  if (perturb.has('dup')) for (let n = rng.range(1, 3); n > 0; n--) headers.splice(rng.int(headers.length + 1), 0, headers[rng.int(headers.length)] ?? ['X-A', 'b']);
  let text = render(requestLine, headers, fr.body);
  if (perturb.has('rawLine')) {
    // After a header line: obs-fold must follow one.
    const lines = text.split('\r\n');
    const end = lines.indexOf('');
    lines.splice(rng.range(1, Math.max(1, end)), 0, rng.pick(RAW_LINES));
    text = lines.join('\r\n');
  }
  let data = latin1(text);
  if (upgrade && rng.chance(clean ? 0.8 : 0.3)) data = Buffer.concat([data, ...clientFrames(rng)]);
  if (rng.chance(0.08)) data = Buffer.concat([data, latin1(`GET /hello HTTP/1.1\r\nHost: x\r\nOrigin: ${ORIGIN}\r\n\r\n`)]);
  if (perturb.has('mutate')) data = mutate(rng, data);
  const splits: number[] = [];
  if (rng.chance(0.25)) for (let n = rng.range(1, 3); n > 0; n--) splits.push(rng.range(1, Math.max(1, data.length - 1)));
  splits.sort((a, b) => a - b);
  const ending = rng.weighted<HttpCase['ending']>([[14, 'wait'], [4, 'fin'], [2, 'rst']]);
  return {
    id,
    upgrade,
    data,
    splits,
    gapMs: rng.pick([0, 1, 5, 20]),
    ending,
    rstAfterMs: rng.pick([0, 1, 5, 30, 100]),
    desc: `${upgrade ? (clean ? 'clean upgrade' : 'upgrade') : 'plain'} framing=${fr.kind} perturbed=[${[...perturb].join(',')}] ending=${ending}${splits.length ? ` splits=${splits.join('/')}` : ''}`,
  };
}

/** Cases the issue names as crashers today: they lead every run (ids -1, -2, ...). */
function knownCases(): HttpCase[] {
  const host = `Host: 127.0.0.1:${ports.port}\r\n`;
  const up = `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: ${ORIGIN}\r\n`;
  const list: [string, string][] = [
    ['upgrade to //[? (log redaction)', `GET //[? HTTP/1.1\r\n${host}${up}\r\n`],
    ['upgrade to /ws/echo?[ (log redaction)', `GET /ws/echo?%[ HTTP/1.1\r\n${host}${up}\r\n`],
    ['plain GET //[?', `GET //[? HTTP/1.1\r\n${host}\r\n`],
    ['plain target with a tab', `GET /a\tb HTTP/1.1\r\n${host}\r\n`],
    ['plain target with latin1 bytes', `GET /\u00e9\u00ff HTTP/1.1\r\n${host}\r\n`],
    ['upgrade target with a tab', `GET /ws/echo?a\tb HTTP/1.1\r\n${host}${up}\r\n`],
    ['GET with Transfer-Encoding: chunked', `GET /hello HTTP/1.1\r\n${host}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n`],
    ['HEAD with Transfer-Encoding: chunked', `HEAD /hello HTTP/1.1\r\n${host}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n`],
    ['DELETE with Transfer-Encoding: chunked', `DELETE /hello HTTP/1.1\r\n${host}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n`],
    ['OPTIONS with Transfer-Encoding: chunked', `OPTIONS /hello HTTP/1.1\r\n${host}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n`],
    ['POST whose Content-Length is named by Connection', `POST /upload HTTP/1.1\r\n${host}Connection: Content-Length\r\nContent-Length: 5\r\n\r\nhello`],
    ['GET whose Content-Length is named by Connection', `GET /hello HTTP/1.1\r\n${host}Connection: Content-Length\r\nContent-Length: 5\r\n\r\nhello`],
    ['POST whose Transfer-Encoding is named by Connection', `POST /upload HTTP/1.1\r\n${host}Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n`],
    ['query access_token twice (upgrade)', `GET /ws/close?access_token=${validToken}&access_token=${validToken} HTTP/1.1\r\n${host}${up}\r\n`],
    ['query access_token twice (plain)', `GET /hello?access_token=${validToken}&access_token=x HTTP/1.1\r\n${host}\r\n`],
    ['Sec-WebSocket-Protocol: bearer, x, bearer, y', `GET /ws/close HTTP/1.1\r\n${host}${up}Sec-WebSocket-Protocol: bearer, x, bearer, y\r\n\r\n`],
    ['two access_token cookies', `GET /ws/close HTTP/1.1\r\n${host}${up}Cookie: access_token=${validToken}; access_token=${validToken}\r\n\r\n`],
    ['odd cookie', `GET /ws/close HTTP/1.1\r\n${host}${up}Cookie: =;=;access_token\r\n\r\n`],
    ['cookie %zz', `GET /ws/close HTTP/1.1\r\n${host}${up}Cookie: access_token=%zz\r\n\r\n`],
    ['sub with CRLF forwarded as a header', `GET /ws/close HTTP/1.1\r\n${host}${up}Authorization: Bearer ${tokens[1]}\r\n\r\n`],
    ['sub beyond latin1 forwarded as a header', `GET /ws/close HTTP/1.1\r\n${host}${up}Authorization: Bearer ${tokens[3]}\r\n\r\n`],
    ['sub that is an object', `GET /ws/close HTTP/1.1\r\n${host}${up}Authorization: Bearer ${tokens[8]}\r\n\r\n`],
    ['plain request with an obs-text header', `GET /headers HTTP/1.1\r\n${host}X-A: \u00e9\u00ff\r\n\r\n`],
    ['absolute-form upgrade', `GET http://127.0.0.1/ws/echo HTTP/1.1\r\n${host}${up}\r\n`],
    ['asterisk-form OPTIONS', `OPTIONS * HTTP/1.1\r\n${host}\r\n`],
  ];
  return list.map(([desc, text], i) => ({
    id: -(i + 1), upgrade: text.includes('Upgrade: websocket'), data: latin1(text), splits: [], gapMs: 0, ending: 'wait' as const, rstAfterMs: 0,
    desc: `known: ${desc}`,
  }));
}

function planOf(c: HttpCase) {
  const writes: Buffer[] = [];
  let last = 0;
  for (const at of c.splits) {
    if (at > last && at < c.data.length) writes.push(c.data.subarray(last, at));
    last = Math.max(last, at);
  }
  writes.push(c.data.subarray(last));
  return { writes, gapMs: c.gapMs, ending: c.ending, rstAfterMs: c.rstAfterMs };
}

const show = (c: HttpCase) => `#${c.id} ${c.desc}\n${esc(c.data)}`;

function shrink(c: HttpCase): HttpCase[] {
  const variants = lineDeletions(c.data).map((data) => ({ ...c, data, splits: [], ending: 'wait' as const, desc: `${c.desc} (shrunk)` }));
  if (c.splits.length > 0 || c.ending !== 'wait') variants.unshift({ ...c, splits: [], ending: 'wait', desc: `${c.desc} (one write)` });
  return variants;
}

// ---------------------------------------------------------------------------------------------------------

describe('HTTP fuzzer against the built guard process', () => {
  it(`survives ${ONLY ? ONLY.join(',') : CASES} generated requests (seed ${SEED}) and still proxies`, async () => {
    const cases = ONLY
      ? ONLY.map((id) => (id < 0 ? knownCases()[-id - 1]! : genHttpCase(id)))
      : [...knownCases(), ...Array.from({ length: CASES }, (_, i) => genHttpCase(i))];
    const statuses = new Tally();
    const codes = new Tally();
    /** Answers that are not faults of the process but look wrong; printed, not failed. */
    const notes = new Map<string, HttpCase[]>();
    const note = (what: string, c: HttpCase) => notes.set(what, [...(notes.get(what) ?? []), c]);
    const result = await runCampaign<HttpCase>({
      cases,
      start,
      exec: (g, c) => rawExchange(g.port, planOf(c), DEADLINE_MS, IDLE_MS),
      shrink,
      onCase: ({ fuzzCase, answer, result: r, guardDied }) => {
        if (VERBOSE) console.log(`${show(fuzzCase)}\n  → ${esc(r.received, 600)}${r.peerClosed ? ' [closed by guard]' : ''}${guardDied ? ' [the process died meanwhile]' : ''} ${r.ms} ms`);
        statuses.add(`${fuzzCase.upgrade ? 'upgrade' : 'plain'} ${guardDied ? 'died meanwhile' : answer.status ?? 'none'}`);
        const code = answer.headers['x-ws-guard-error'];
        if (code) codes.add(code);
        // The app is up the whole run: "unreachable" means the guard blamed the upstream for something else.
        if (!guardDied && (code === 'UPSTREAM_UNREACHABLE' || code === 'UPSTREAM_TIMEOUT')) {
          note(`${code} answered though the upstream is up (${/upstream [a-z ]+: \w+/.exec(r.received.toString('latin1'))?.[0] ?? '?'}; ending=${fuzzCase.ending})`, fuzzCase);
        }
      },
    });
    guard = result.guard;

    // Afterwards the same process must still serve.
    const failures: string[] = [];
    if (guard.exit !== undefined) failures.push(`the guard exited: ${JSON.stringify(guard.exit)}`);
    const hello = await httpGet(guard.port, '/hello', { Origin: ORIGIN, Authorization: `Bearer ${validToken}` }).catch((e: Error) => e);
    if (hello instanceof Error || hello.status !== 200 || hello.body !== '{"hello":"world"}') {
      failures.push(`GET /hello after the run: ${hello instanceof Error ? hello.message : `${hello.status} ${hello.body}`}`);
    }
    const echo = await wsEcho(`ws://127.0.0.1:${guard.port}/ws/echo`, { Origin: ORIGIN, Authorization: `Bearer ${validToken}` }).catch((e: Error) => e.message);
    if (echo !== 'after the fuzz') failures.push(`WebSocket echo after the run: ${echo}`);
    const leftovers = await openAfterwards(guard.adminPort);
    if (leftovers.problem !== '') failures.push(leftovers.problem);
    if (UNCAUGHT.test(guard.stderr())) failures.push(`stderr of the final process:\n${guard.stderr().slice(0, 3000)}`);

    const summary = summarize('HTTP fuzzer', result, show, [
      `answers: ${statuses}`,
      `guard error codes: ${codes}`,
      ...[...notes].map(([what, list]) => `NOTE ${what}: ${list.length}×, e.g.\n${list.slice(0, 2).map((c) => `      ${show(c)}`).join('\n')}`),
      `afterwards: ${leftovers.last}`,
      ...failures.map((f) => `FINAL CHECK FAILED: ${f}`),
    ]);
    const file = join(tmpdir(), `ws-guard-fuzz-http-${SEED}.txt`);
    writeFileSync(file, summary);
    console.log(`${summary}\n(summary written to ${file}${MINIMIZE ? '' : '; WS_GUARD_FUZZ_MINIMIZE=1 shrinks crashers'})`);

    expect.soft(result.crashes.map((c) => `${c.signature} ← ${c.cases.map((x) => `#${x.id}`).join(',')}`)).toEqual([]);
    expect.soft([...result.repeatCrashes.keys()]).toEqual([]);
    expect.soft(result.badAnswers.map((b) => `#${b.fuzzCase.id}: ${b.problem}`)).toEqual([]);
    expect.soft(result.notRun).toBe(0);
    expect(failures).toEqual([]);
  }, 600_000);
});


