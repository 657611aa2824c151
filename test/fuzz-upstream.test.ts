// Hostile-upstream fuzzer (design.md §1 "Totality"): the built guard runs as its own process in front of a
// raw TCP server that answers each request with a generated response — odd status lines, headers, bodies,
// framing, informational answers, and for upgrades every kind of 101 and what may follow it. No answer may
// end the process, make it write a malformed answer, or turn a bad 101 or a refusal into a tunnel. The
// same server also acts as a normal upstream (/normal/...), so afterwards the SAME guard process is shown
// to still proxy plain HTTP and a WebSocket echo, with no connection left open.
//
//   npm run build && npx vitest run test/fuzz-upstream.test.ts
//   WS_GUARD_FUZZ_CASES=20000 WS_GUARD_FUZZ_SEED=7 npx vitest run test/fuzz-upstream.test.ts   # a long run
//   WS_GUARD_FUZZ_SEED=<seed> WS_GUARD_FUZZ_CASE=<id> ...                                      # replay one case
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import http, { STATUS_CODES } from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocketServer } from 'ws';
import { freePort } from './helpers/clients.js';
import {
  MINIMIZE, ONLY, SEED, Tally, UNCAUGHT, VERBOSE, WS_GUID, caseCount, caseRng, esc, httpGet, latin1, lineDeletions, metricSum,
  rawExchange, removeSnapshot, runCampaign, spawnGuard, summarize, wsFrame, wsKey, type FuzzCase, type GuardProc, type Rng,
  openAfterwards, wsEcho,
} from './helpers/fuzz.js';

const CASES = caseCount(1500);
const DEADLINE_MS = 2500;
const IDLE_MS = 200;
const SECRET = 'fuzz-secret-0123456789-0123456789-0123456789';
const ORIGIN = 'http://allowed.example';

interface UpCase extends FuzzCase {
  upgrade: boolean;
  /** What the client sends the guard. */
  request: Buffer;
  /** Client bytes after the head (frames), sent a moment later. */
  clientAfter: Buffer | undefined;
  /** What the hostile upstream writes, piece by piece. */
  response: Buffer[];
  gapMs: number;
  /** After writing: half-close, reset, keep the connection for the next request, or say nothing more. */
  after: 'end' | 'destroy' | 'keep' | 'hang';
  /** Whether the answer is a 101 a WebSocket client must accept (RFC 6455 §4.1); on 'no' the guard must not answer 101. */
  valid101: Verdict;
  /** The hostile answer's first final status line is a non-101 one that the guard may relay. */
  refusal: boolean;
}

let hostile: Hostile;
let ports: { port: number; adminPort: number };
let token = '';
let guard: GuardProc | undefined;
const cases = new Map<number, UpCase>();

beforeAll(async () => {
  hostile = await startHostile();
  ports = { port: await freePort(), adminPort: await freePort() };
  token = await new SignJWT({ sub: 'fuzz-user' }).setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + 3600).sign(new TextEncoder().encode(SECRET));
});

afterAll(async () => {
  await guard?.stop();
  await hostile?.close();
  removeSnapshot();
});

function start(): Promise<GuardProc> {
  const yaml = [
    `listen: 127.0.0.1:${ports.port}`,
    `upstream: http://127.0.0.1:${hostile.port}`,
    `admin: 127.0.0.1:${ports.adminPort}`,
    'timeouts: { handshake: 2s, upstreamConnect: 1s, upstreamResponse: 1s, close: 500ms, drain: 1s }',
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
    '  - { path: /c/, auth: false }',
    '  - { path: /normal/, auth: false }',
    '',
  ].join('\n');
  return spawnGuard(yaml, { FUZZ_JWT_SECRET: SECRET }, ports);
}

// ---------------------------------------------------------------------------------------------------------
// The hostile upstream

interface Hostile {
  port: number;
  /** Requests it could not tie to a case (the guard sent something unexpected). */
  strays: string[];
  close(): Promise<void>;
}

async function startHostile(): Promise<Hostile> {
  const sockets = new Set<net.Socket>();
  const strays: string[] = [];
  // "Normal" mode: a plain HTTP app and a WebSocket echo, reached by handing the socket over.
  const normal = http.createServer((req, res) => {
    res.setHeader('Connection', 'close');
    if (req.url?.startsWith('/normal/hello')) {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end('{"hello":"world"}');
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  const wss = new WebSocketServer({ noServer: true });
  normal.on('upgrade', (req, socket, head) => {
    wss.handleUpgrade(req, socket, head, (ws) => ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary })));
  });

  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    let buf = Buffer.alloc(0);
    let busy = false;
    let upgraded = false;
    const onData = (chunk: Buffer) => {
      if (upgraded) return; // frames after a 101 (or after a refusal) are read and dropped
      buf = Buffer.concat([buf, chunk]);
      next();
    };
    socket.on('data', onData);
    const next = () => {
      if (busy || socket.destroyed) return;
      const end = buf.indexOf('\r\n\r\n');
      if (end === -1) return;
      const head = buf.subarray(0, end).toString('latin1');
      let bodyEnd = end + 4;
      const cl = /\r\ncontent-length:[ \t]*(\d+)/i.exec(head);
      if (/\r\ntransfer-encoding:[^\r]*chunked/i.test(head)) {
        const zero = buf.indexOf('0\r\n\r\n', end + 4);
        if (zero === -1) return;
        bodyEnd = zero + 5;
      } else if (cl) {
        bodyEnd += Number(cl[1]);
        if (buf.length < bodyEnd) return;
      }
      const whole = buf.subarray(0, bodyEnd);
      buf = buf.subarray(bodyEnd);
      const target = head.split(' ')[1] ?? '';
      if (target.startsWith('/normal/')) {
        socket.off('data', onData);
        socket.unshift(Buffer.concat([whole, buf]));
        normal.emit('connection', socket);
        return;
      }
      const id = /^\/[ca]\/(-?\d+)/.exec(target)?.[1];
      const c = id === undefined ? undefined : cases.get(Number(id));
      if (c === undefined) {
        strays.push(head.slice(0, 200));
        socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
        return;
      }
      busy = true;
      if (c.upgrade) upgraded = true;
      let i = 0;
      const write = () => {
        if (socket.destroyed) return;
        if (i < c.response.length) {
          socket.write(c.response[i++]!);
          setTimeout(write, c.gapMs);
          return;
        }
        if (c.after === 'end') socket.end();
        else if (c.after === 'destroy') socket.destroy();
        else if (c.after === 'keep' && !c.upgrade) {
          busy = false;
          next();
        }
        // hang: say nothing more; the guard's deadline (or the client leaving) ends it.
      };
      write();
    };
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    strays,
    close: async () => {
      for (const s of sockets) s.destroy();
      for (const ws of wss.clients) ws.terminate();
      await new Promise((r) => server.close(r));
      normal.close();
    },
  };
}

// ---------------------------------------------------------------------------------------------------------
// Generators

const acceptFor = (key: string) => createHash('sha1').update(key + WS_GUID).digest('base64');

const REASON_OK = (status: number) => STATUS_CODES[status] ?? 'Whatever';

function statusLine(rng: Rng, normalStatus: () => number): { line: string; status: string; ok: boolean } {
  const version = rng.weighted<string>([[110, 'HTTP/1.1'], [8, 'HTTP/1.0'], [1, 'HTTP/2'], [1, 'HTTP/2.0'], [1, 'HTTP/1.2'],
    [1, 'http/1.1'], [1, 'HTTP/1.10'], [1, 'ICY'], [1, 'HTTP/1'], [1, ''], [1, 'HTTP/1.1 ']]);
  const status = rng.weighted<() => string>([
    [60, () => String(normalStatus())],
    [4, () => String(rng.int(100)).padStart(rng.chance(0.75) ? 3 : 1, '0')],
    [2, () => String(rng.pick([100, 102, 103]))],
    [1, () => String(rng.range(104, 199))],
    [2, () => String(rng.pick([600, 999, 1000, 65536, 99999, 4294967296]))],
    [2, () => rng.pick(['abc', '2OO', '', '-1', ' 200', '20', '2000', '0200', '200 ', '2\u00e90', '+200', '0x1F'])],
  ])();
  const code = Number(status);
  const reason = rng.weighted<() => string | undefined>([
    [50, () => (Number.isInteger(code) ? REASON_OK(code) : 'OK')],
    [3, () => ''],
    [2, () => undefined],
    [4, () => rng.pick(['O\u0001K', '\u007f', 'x\ty', 'a\u0000b', '\u001b[31mred', 'Not\u000bFound', 'Bad\u0008'])],
    [3, () => rng.pick(['\u00e9t\u00e9', '\u0080\u00ff', 'caf\u00c3\u00a9'])],
    [1, () => 'x\ry'],
    [1, () => 'r'.repeat(rng.pick([1000, 20_000]))],
  ])();
  const ok = version === 'HTTP/1.1' && /^[1-5]\d\d$/.test(status) && code >= 200 && (reason === undefined || /^[\t\x20-\x7e]*$/.test(reason));
  return { line: `${version} ${status}${reason === undefined ? '' : ` ${reason}`}\r\n`, status, ok };
}

function junkHeaders(rng: Rng): string[] {
  const out: string[] = [];
  for (let n = rng.weighted([[5, 0], [4, 1], [2, 2], [1, 4]]); n > 0; n--) {
    out.push(rng.weighted<() => string>([
      [3, () => `X-Fine-${rng.int(100)}: value`],
      [2, () => `Set-Cookie: s${rng.int(9)}=1; Path=/`],
      [2, () => rng.pick(['Connection: close', 'Connection: keep-alive', 'Connection: Content-Length', 'Connection: Transfer-Encoding', 'Connection: X-A, Upgrade', 'Connection: upgrade'])],
      [1, () => 'Keep-Alive: timeout=0, max=0'],
      [1, () => 'Upgrade: websocket'],
      [1, () => 'Trailer: X-T'],
      [1, () => 'X-WS-Guard-Error: SPOOFED'],
      [1, () => `Sec-WebSocket-Accept: ${acceptFor('x')}`],
      [1, () => rng.pick(['bad name: x', 'x(y): 1', ': empty name', 'no colon', 'X-A : space before colon', '\u00e9: x', 'X-\u0001: y'])],
      [1, () => rng.pick(['X-A: a\u0001b', 'X-A: \u0000', 'X-A: a\u007fb', 'X-A: \u001b[0m', 'X-A: a\rb'])],
      [2, () => rng.pick(['X-A: \u00e9\u00ff\u0080', 'X-A: caf\u00c3\u00a9'])],
      [1, () => 'X-Folded: a\r\n continued'],
      [1, () => `X-Big: ${'b'.repeat(rng.pick([9000, 20_000, 70_000]))}`],
      [1, () => Array.from({ length: rng.pick([200, 2000]) }, (_, i) => `X-M${i}: m`).join('\r\n')],
      [1, () => 'Location: http://evil.example/'],
      [1, () => 'Content-Type: text/html; charset=\u00ff'],
      [1, () => 'X-Empty:'],
    ])());
  }
  return out;
}

type BodyMode = 'none' | 'cl' | 'cl-short' | 'cl-long' | 'cl-dup' | 'cl-conflict' | 'cl-bad' | 'chunked' | 'chunked-bad' | 'chunked-cut'
  | 'te-cl' | 'te-odd' | 'until-close';

function body(rng: Rng): { headers: string[]; bytes: string; mode: BodyMode; endsWithClose: boolean } {
  const n = rng.pick([0, 1, 5, 100, 3000]);
  const data = rng.str(n, 'abcdefghijklmnopqrstuvwxyz0123456789{}":, ');
  const chunked = (text: string) => {
    let out = '';
    for (let at = 0; at < text.length;) {
      const k = Math.min(text.length - at, rng.range(1, 500));
      out += `${k.toString(16)}\r\n${text.slice(at, at + k)}\r\n`;
      at += k;
    }
    return `${out}0\r\n\r\n`;
  };
  const mode = rng.weighted<BodyMode>([[12, 'cl'], [4, 'none'], [2, 'cl-short'], [2, 'cl-long'], [1, 'cl-dup'], [2, 'cl-conflict'], [2, 'cl-bad'],
    [5, 'chunked'], [2, 'chunked-bad'], [2, 'chunked-cut'], [2, 'te-cl'], [2, 'te-odd'], [2, 'until-close']]);
  switch (mode) {
    case 'none':
      return { headers: [], bytes: '', mode, endsWithClose: false };
    case 'cl':
      return { headers: [`Content-Length: ${n}`], bytes: data, mode, endsWithClose: false };
    case 'cl-short':
      return { headers: [`Content-Length: ${n + rng.range(1, 1000)}`], bytes: data, mode, endsWithClose: true };
    case 'cl-long':
      return { headers: [`Content-Length: ${Math.max(0, n - 3)}`], bytes: `${data}HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsmuggle`, mode, endsWithClose: false };
    case 'cl-dup':
      return { headers: [`Content-Length: ${n}`, `Content-Length: ${n}`], bytes: data, mode, endsWithClose: false };
    case 'cl-conflict':
      return { headers: rng.chance(0.5) ? [`Content-Length: ${n}`, `Content-Length: ${n + 2}`] : [`Content-Length: ${n}, ${n + 2}`], bytes: data, mode, endsWithClose: false };
    case 'cl-bad':
      return { headers: [`Content-Length: ${rng.pick(['-1', 'abc', '1e3', '', ' ', '+5', '0x10', '99999999999999999999', '5 5'])}`], bytes: data, mode, endsWithClose: true };
    case 'chunked':
      return { headers: ['Transfer-Encoding: chunked'], bytes: chunked(data), mode, endsWithClose: false };
    case 'chunked-bad':
      return {
        headers: ['Transfer-Encoding: chunked'],
        bytes: rng.pick(['zz\r\nab\r\n0\r\n\r\n', '-1\r\nx\r\n0\r\n\r\n', 'fffffffffffffffffff\r\nx\r\n', '1\r\nabc\r\n0\r\n\r\n', '1\na\n0\n\n',
          '0\r\nX-Bad Trailer: x\r\n\r\n', '0\r\nX-T: \u0001\r\n\r\n', '1;\u0000\r\na\r\n0\r\n\r\n']),
        mode,
        endsWithClose: true,
      };
    case 'chunked-cut':
      return { headers: ['Transfer-Encoding: chunked'], bytes: chunked(data).slice(0, rng.range(0, 20)), mode, endsWithClose: true };
    case 'te-cl':
      return { headers: ['Transfer-Encoding: chunked', `Content-Length: ${n}`], bytes: chunked(data), mode, endsWithClose: false };
    case 'te-odd':
      return { headers: [`Transfer-Encoding: ${rng.pick(['gzip', 'chunked, chunked', 'identity', 'gzip, chunked', 'chunked, gzip', 'Chunked', 'xchunked'])}`], bytes: data, mode, endsWithClose: true };
    case 'until-close':
      return { headers: [], bytes: data, mode, endsWithClose: true };
  }
}

/** A whole non-101 response, maybe after informational ones. */
function genResponse(rng: Rng, head: boolean): { text: string; refusal: boolean; desc: string } {
  let pre = '';
  if (rng.chance(0.12)) {
    pre = rng.pick(['HTTP/1.1 100 Continue\r\n\r\n', 'HTTP/1.1 103 Early Hints\r\nLink: </x.css>; rel=preload\r\n\r\n', 'HTTP/1.1 102 Processing\r\n\r\n',
      'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n', 'HTTP/1.1 199 Odd\r\nX-A: b\r\n\r\n', 'HTTP/1.1 100 Cont\u0001inue\r\n\r\n']);
  }
  const sl = statusLine(rng, () => rng.pick([200, 200, 200, 201, 204, 206, 301, 302, 304, 400, 401, 403, 404, 418, 429, 500, 502, 503]));
  const b = body(rng);
  const headers = [...b.headers, ...junkHeaders(rng)];
  if (rng.chance(0.3)) for (let i = headers.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [headers[i], headers[j]] = [headers[j]!, headers[i]!];
  }
  // 204/304, or a HEAD, with a body: the body bytes are there anyway.
  const text = `${pre}${sl.line}${headers.map((h) => `${h}\r\n`).join('')}\r\n${b.bytes}`;
  void head;
  return { text, refusal: sl.status !== '101', desc: `status=${esc(sl.status)} body=${b.mode}${pre ? ' +1xx' : ''}` };
}

type Verdict = 'yes' | 'maybe' | 'no';

interface Upgrade101 { text: string; valid: Verdict; desc: string }

/**
 * A 101 answer, valid or flawed. `valid` says whether a WebSocket client must accept it (yes), must fail
 * it (no: RFC 6455 §4.1 client steps 2-6 — accept, Upgrade, Connection, a protocol or extension not offered),
 * or whether either reading is defensible (maybe: odd reason, HTTP/1.0, deflate parameters, framing headers).
 */
function gen101(rng: Rng, key: string, offered: { protocols: string[]; deflate: boolean }): Upgrade101 {
  const accept = acceptFor(key);
  const headers: string[] = [];
  let valid: Verdict = 'yes';
  const flaws: string[] = [];
  const no = (why: string) => {
    valid = 'no';
    flaws.push(why);
  };
  const maybe = (why: string) => {
    if (valid === 'yes') valid = 'maybe';
    flaws.push(`${why}?`);
  };
  const version = rng.weighted<string>([[30, 'HTTP/1.1'], [1, 'HTTP/1.0'], [1, 'HTTP/2']]);
  if (version === 'HTTP/1.0') maybe(version);
  if (version === 'HTTP/2') no(version);
  const reason = rng.weighted<string>([[20, 'Switching Protocols'], [2, ''], [1, 'Sw\u0001itching'], [1, '\u00e9']]);
  if (!/^[\x20-\x7e]*$/.test(reason)) maybe('reason');
  const upgradeValue = rng.weighted<string | undefined>([[25, 'websocket'], [2, 'WebSocket'], [2, undefined], [1, 'h2c'], [1, 'websocket, h2c'], [1, '']]);
  if (upgradeValue !== undefined) headers.push(`Upgrade: ${upgradeValue}`);
  if (upgradeValue === undefined || upgradeValue.toLowerCase() !== 'websocket') no(`Upgrade=${upgradeValue}`);
  const connection = rng.weighted<string | undefined>([[25, 'Upgrade'], [2, 'upgrade, keep-alive'], [2, undefined], [1, 'close'], [1, 'keep-alive']]);
  if (connection !== undefined) headers.push(`Connection: ${connection}`);
  if (connection === undefined || !/\bupgrade\b/i.test(connection)) no(`Connection=${connection}`);
  const accepts: string[] = [];
  const acceptValue = rng.weighted<string | undefined>([[25, accept], [2, acceptFor('wrong')], [2, undefined], [1, `${accept} `], [1, ''], [1, `${accept}, ${accept}`]]);
  if (acceptValue !== undefined) accepts.push(acceptValue);
  if (rng.chance(0.05)) accepts.push(rng.pick([accept, acceptFor('other')]));
  for (const a of accepts) headers.push(`Sec-WebSocket-Accept: ${a}`);
  const trimmed = accepts.map((a) => a.trim());
  if (trimmed.length === 1 && trimmed[0] === accept) {
    // the one right answer
  } else if (trimmed.length === 2 && trimmed.every((a) => a === accept)) {
    maybe('accept twice');
  } else {
    no(`accept=${JSON.stringify(trimmed)}`);
  }
  if (rng.chance(0.3)) {
    const p = rng.pick(['chat', 'superchat', 'evil', 'bearer', '', 'chat, superchat']);
    headers.push(`Sec-WebSocket-Protocol: ${p}`);
    if (!offered.protocols.includes(p)) no(`protocol=${p}`);
  }
  if (rng.chance(0.3)) {
    const e = rng.pick(['permessage-deflate', 'permessage-deflate; server_no_context_takeover', 'permessage-deflate; client_no_context_takeover',
      'permessage-deflate; client_max_window_bits=8', 'permessage-deflate; server_max_window_bits=99', 'permessage-deflate; client_max_window_bits=x',
      'permessage-deflate; x=1', 'x-foo', 'permessage-deflate, permessage-deflate', 'permessage-deflate;;', 'permessage-deflate; server_max_window_bits']);
    headers.push(`Sec-WebSocket-Extensions: ${e}`);
    if (!offered.deflate) no(`extension not offered: ${e}`);
    else if (e === 'x-foo' || e.includes(', ')) no(`extension=${e}`);
    else if (e !== 'permessage-deflate') maybe(`extension=${e}`);
  }
  if (rng.chance(0.2)) headers.push(...junkHeaders(rng));
  if (rng.chance(0.05)) {
    headers.push(rng.pick(['Content-Length: 5', 'Transfer-Encoding: chunked', 'Content-Length: 0']));
    maybe('framing header');
  }
  let after = '';
  if (rng.chance(0.5)) {
    after = rng.weighted<() => Buffer>([
      [4, () => wsFrame(1, 'from upstream', false)],
      [2, () => wsFrame(1, 'masked from upstream', true)],
      [1, () => wsFrame(9, 'ping', false)],
      [2, () => wsFrame(8, Buffer.from([0x03, 0xe8, 0x62, 0x79, 0x65]), false)],
      [1, () => wsFrame(8, Buffer.from([0x00, 0x01]), false)],
      [1, () => wsFrame(8, Buffer.from([0x03]), false)],
      [1, () => Buffer.from([0xc1, 0x03, 0x61, 0x62, 0x63])],
      [1, () => Buffer.from([0xf1, 0x00])],
      [1, () => Buffer.from([0x81, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])],
      [1, () => Buffer.from([0x09, 0x7e, 0x01, 0x00])],
      [1, () => rng.bytes(rng.range(1, 64))],
      [1, () => latin1('HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n')],
      [1, () => Buffer.concat([wsFrame(1, 'a', false, false), wsFrame(0, 'b', false)])],
    ])().toString('latin1');
  }
  const text = `${version} 101${reason ? ` ${reason}` : ''}\r\n${headers.map((h) => `${h}\r\n`).join('')}\r\n${after}`;
  return { text, valid, desc: `101${flaws.length ? ` flaws=[${flaws.join(',')}]` : ' valid'}${after ? ' +bytes' : ''}` };
}

function genUpCase(id: number): UpCase {
  const rng = caseRng(id, 1);
  const upgrade = rng.chance(0.5);
  const authed = rng.chance(0.2);
  const path = `/${authed ? 'a' : 'c'}/${id}`;
  const host = `Host: 127.0.0.1:${ports.port}\r\n`;
  const auth = authed ? `Authorization: Bearer ${token}\r\n` : '';
  let request: string;
  let clientAfter: Buffer | undefined;
  let response: { text: string; valid101: Verdict; refusal: boolean; desc: string };
  if (upgrade) {
    const key = wsKey(rng);
    const protocols = rng.chance(0.4) ? ['chat', 'superchat'] : [];
    const deflate = rng.chance(0.4);
    request = `GET ${path} HTTP/1.1\r\n${host}Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n` +
      `Origin: ${ORIGIN}\r\n${auth}${protocols.length ? `Sec-WebSocket-Protocol: ${protocols.join(', ')}\r\n` : ''}` +
      `${deflate ? 'Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n' : ''}\r\n`;
    if (rng.chance(0.6)) clientAfter = Buffer.concat([wsFrame(1, 'from client', true), ...(rng.chance(0.3) ? [wsFrame(8, Buffer.from([0x03, 0xe8]), true)] : [])]);
    if (rng.chance(0.65)) {
      const r = gen101(rng, key, { protocols, deflate });
      response = { text: r.text, valid101: r.valid, refusal: false, desc: r.desc };
    } else {
      const r = genResponse(rng, false);
      response = { text: r.text, valid101: 'no', refusal: r.refusal, desc: `refused upgrade ${r.desc}` };
    }
  } else {
    const method = rng.weighted<string>([[10, 'GET'], [3, 'HEAD'], [3, 'POST'], [2, 'DELETE'], [1, 'OPTIONS'], [1, 'PUT']]);
    const withBody = method === 'POST' || method === 'PUT';
    const reqBody = withBody ? rng.str(rng.pick([0, 10, 2000]), 'xyz') : '';
    request = `${method} ${path}${rng.chance(0.2) ? '?q=1' : ''} HTTP/1.1\r\n${host}Origin: ${ORIGIN}\r\n${auth}` +
      `${rng.chance(0.4) ? 'Connection: close\r\n' : ''}${withBody ? `Content-Length: ${reqBody.length}\r\n` : ''}\r\n${reqBody}`;
    const r = genResponse(rng, method === 'HEAD');
    response = { text: r.text, valid101: 'no', refusal: r.refusal, desc: `${method} ${r.desc}` };
  }
  const bytes = latin1(response.text);
  const pieces: Buffer[] = [];
  if (rng.chance(0.25)) {
    const cuts = Array.from({ length: rng.range(1, 3) }, () => rng.range(1, Math.max(1, bytes.length - 1))).sort((a, b) => a - b);
    let last = 0;
    for (const at of cuts) {
      if (at > last) pieces.push(bytes.subarray(last, at));
      last = Math.max(last, at);
    }
    pieces.push(bytes.subarray(last));
  } else {
    pieces.push(bytes);
  }
  const after = rng.weighted<UpCase['after']>([[8, 'end'], [4, 'destroy'], [upgrade ? 0 : 5, 'keep'], [2, 'hang']]);
  return {
    id,
    upgrade,
    request: latin1(request),
    clientAfter,
    response: pieces,
    gapMs: rng.pick([0, 1, 10, 50]),
    after,
    valid101: response.valid101,
    refusal: response.refusal,
    desc: `${upgrade ? 'upgrade' : 'plain'}${authed ? ' (token)' : ''}: upstream answers ${response.desc}, then ${after}${pieces.length > 1 ? ` in ${pieces.length} pieces` : ''}`,
  };
}

/** The issue's known crashers and the classic bad 101s: they lead every run (ids -1, -2, ...). */
function knownCases(): UpCase[] {
  const mk = (n: number, upgrade: boolean, method: string, response: string, desc: string, valid101: Verdict = 'no'): UpCase => {
    const id = -n;
    const key = 'dGhlIHNhbXBsZSBub25jZQ==';
    const request = upgrade
      ? `GET /c/${id} HTTP/1.1\r\nHost: 127.0.0.1:${ports.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\nOrigin: ${ORIGIN}\r\n\r\n`
      : `${method} /c/${id} HTTP/1.1\r\nHost: 127.0.0.1:${ports.port}\r\nOrigin: ${ORIGIN}\r\n\r\n`;
    return {
      id, upgrade, request: latin1(request), clientAfter: upgrade ? wsFrame(1, 'from client', true) : undefined,
      response: [latin1(response.replace('{ACCEPT}', acceptFor(key)))], gapMs: 0, after: 'end', valid101,
      refusal: !response.startsWith('HTTP/1.1 101'), desc: `known: ${desc}`,
    };
  };
  const okUp = 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n';
  return [
    mk(1, false, 'GET', 'HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n', 'plain: status below 100'),
    mk(2, false, 'GET', 'HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n', 'plain: status 000'),
    mk(3, false, 'GET', 'HTTP/1.1 200 O\u0001K\r\nContent-Length: 0\r\n\r\n', 'plain: control character in the reason'),
    mk(4, false, 'GET', 'HTTP/1.1 200 \u007f\r\nContent-Length: 2\r\n\r\nok', 'plain: DEL as the reason'),
    mk(5, false, 'GET', 'HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello', 'plain: 204 with a body'),
    mk(6, false, 'GET', 'HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello', 'plain: 304 with a body'),
    mk(7, false, 'GET', 'HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n', 'plain: 204 with a chunked body'),
    mk(8, false, 'HEAD', 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello', 'plain: HEAD answered with a body'),
    mk(9, true, 'GET', 'HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n', 'refused upgrade: status below 100'),
    mk(10, true, 'GET', 'HTTP/1.1 403 Forbid\u0001den\r\nContent-Length: 0\r\n\r\n', 'refused upgrade: control character in the reason'),
    mk(11, true, 'GET', 'HTTP/1.1 403 \u007f\r\nContent-Length: 3\r\n\r\nno!', 'refused upgrade: DEL as the reason'),
    mk(12, true, 'GET', 'HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello', 'refused upgrade: 204 with a body'),
    mk(13, false, 'GET', 'HTTP/1.1 1000 Big\r\nContent-Length: 0\r\n\r\n', 'plain: status 1000'),
    mk(14, false, 'GET', 'HTTP/1.1 abc Letters\r\nContent-Length: 0\r\n\r\n', 'plain: status not a number'),
    mk(15, false, 'GET', 'HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n', 'plain: HTTP/2 status line'),
    mk(16, false, 'GET', 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello', 'plain: conflicting Content-Length'),
    mk(17, false, 'GET', 'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok', 'plain: 100 then 200'),
    mk(18, false, 'GET', 'HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok', 'plain: 103 then 200'),
    mk(19, false, 'GET', 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nxx', 'plain request answered 101'),
    mk(20, true, 'GET', `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptFor('x')}\r\n\r\n`, '101 with a wrong accept'),
    mk(21, true, 'GET', 'HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n', '101 without Upgrade'),
    mk(22, true, 'GET', `${okUp}Sec-WebSocket-Protocol: evil\r\n\r\n`, '101 with a protocol not offered'),
    mk(23, true, 'GET', `${okUp}Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n`, '101 with an extension not offered'),
    mk(24, true, 'GET', `${okUp}\r\n\u00ff\u00fe garbage \u0000`, '101 then garbage', 'yes'),
    mk(25, true, 'GET', `${okUp}\r\n`, '101 then an immediate close', 'yes'),
    mk(26, true, 'GET', 'HTTP/1.1 101 Sw\u0001itching\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n', '101 with a control character in the reason', 'maybe'),
    mk(27, false, 'GET', 'HTTP/1.1 200 OK\r\nX-A: a\u0001b\r\nContent-Length: 0\r\n\r\n', 'plain: control character in a header value'),
    mk(28, false, 'GET', 'HTTP/1.1 200 OK\r\nX-A: \u00e9\u00ff\r\nContent-Length: 0\r\n\r\n', 'plain: obs-text in a header value'),
    mk(29, false, 'GET', 'HTTP/1.1 99 Odd\r\nContent-Length: 0\r\n\r\n', 'plain: two-digit status'),
    mk(30, false, 'GET', 'HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab', 'plain: one byte more than Content-Length, then close'),
    mk(31, true, 'GET', 'HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 404 O\u0001K\r\n\r\n', 'refused upgrade after a 1xx: control character in the reason'),
    mk(32, false, 'GET', 'HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 O\u0001K\r\nContent-Length: 0\r\n\r\n', 'plain after a 1xx: control character in the reason'),
  ];
}

const show = (c: UpCase) =>
  `#${c.id} ${c.desc}\n  client sends: ${esc(c.request, 600)}${c.clientAfter ? ` + ${esc(c.clientAfter, 60)}` : ''}\n` +
  `  upstream answers: ${esc(Buffer.concat(c.response), 900)}`;

function shrink(c: UpCase): UpCase[] {
  const whole = Buffer.concat(c.response);
  const variants: UpCase[] = lineDeletions(whole).map((r) => ({ ...c, response: [r], desc: `${c.desc} (shrunk)` }));
  if (c.response.length > 1 || c.after !== 'end' || c.clientAfter) variants.unshift({ ...c, response: [whole], after: 'end', clientAfter: undefined, desc: `${c.desc} (simplified)` });
  return variants;
}

/** What the guard must never do with a hostile answer, beyond writing a malformed one. */
function judge(c: UpCase, result: { received: Buffer; peerClosed: boolean }, answer: { status: number | undefined; headers: Record<string, string> }): string | undefined {
  if (!c.upgrade) {
    if (answer.status === 101) return 'a plain request was answered 101';
    return undefined;
  }
  if (answer.status === 101 && c.valid101 === 'no') return 'tunnel: the client got a 101 for an upgrade the upstream did not validly accept';
  if (answer.status !== undefined && answer.status !== 101) {
    if (!/\bclose\b/i.test(answer.headers.connection ?? '')) return `refused upgrade answered ${answer.status} without Connection: close`;
    if (!result.peerClosed && (c.after === 'end' || c.after === 'destroy')) return `refused upgrade answered ${answer.status} but the connection stayed open after the upstream closed`;
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------------------

describe('hostile-upstream fuzzer against the built guard process', () => {
  it(`survives ${ONLY ? ONLY.join(',') : CASES} generated upstream answers (seed ${SEED}) and still proxies`, async () => {
    const list = ONLY
      ? ONLY.map((id) => (id < 0 ? knownCases()[-id - 1]! : genUpCase(id)))
      : [...knownCases(), ...Array.from({ length: CASES }, (_, i) => genUpCase(i))];
    for (const c of list) cases.set(c.id, c);
    const statuses = new Tally();
    /** Answers that are not faults of the process but look wrong; printed, not failed. */
    const notes = new Map<string, UpCase[]>();
    const note = (what: string, c: UpCase) => notes.set(what, [...(notes.get(what) ?? []), c]);
    const result = await runCampaign<UpCase>({
      cases: list,
      start,
      exec: (g, c) => rawExchange(g.port, { writes: c.clientAfter ? [c.request, c.clientAfter] : [c.request], gapMs: 30, ending: 'wait' }, DEADLINE_MS, IDLE_MS),
      shrink: (c) => shrink(c).map((v) => {
        // Variants need their own ids so the hostile server can tell them apart.
        const id = 1_000_000 + cases.size;
        const variant = { ...v, id, request: latin1(v.request.toString('latin1').replace(`/${c.id} `, `/${id} `)) };
        cases.set(id, variant);
        return variant;
      }),
      judge,
      onCase: ({ fuzzCase, answer, result: r, guardDied }) => {
        statuses.add(`${fuzzCase.upgrade ? 'upgrade' : 'plain'} ${guardDied ? 'died meanwhile' : answer.status ?? 'none'}`);
        if (!guardDied && r.received.length === 0 && r.peerClosed) {
          note(`${fuzzCase.upgrade ? 'upgrade' : 'plain request'}: the guard closed the connection without writing a byte`, fuzzCase);
        }
        if (VERBOSE) console.log(`${show(fuzzCase)}\n  → ${esc(r.received, 600)}${r.peerClosed ? ' [closed by guard]' : ''}${guardDied ? ' [the process died meanwhile]' : ''} ${r.ms} ms`);
      },
    });
    guard = result.guard;

    const failures: string[] = [];
    if (guard.exit !== undefined) failures.push(`the guard exited: ${JSON.stringify(guard.exit)}`);
    const hello = await httpGet(guard.port, '/normal/hello', { Origin: ORIGIN, Authorization: `Bearer ${token}` }).catch((e: Error) => e);
    if (hello instanceof Error || hello.status !== 200 || hello.body !== '{"hello":"world"}') {
      failures.push(`GET /normal/hello after the run: ${hello instanceof Error ? hello.message : `${hello.status} ${hello.body}`}`);
    }
    const echo = await wsEcho(`ws://127.0.0.1:${guard.port}/normal/ws`, { Origin: ORIGIN, Authorization: `Bearer ${token}` }).catch((e: Error) => e.message);
    if (echo !== 'after the fuzz') failures.push(`WebSocket echo after the run: ${echo}`);
    const leftovers = await openAfterwards(guard.adminPort);
    if (leftovers.problem !== '') failures.push(leftovers.problem);
    if (UNCAUGHT.test(guard.stderr())) failures.push(`stderr of the final process:\n${guard.stderr().slice(0, 3000)}`);

    const summary = summarize('hostile-upstream fuzzer', result, show, [
      `answers: ${statuses}`,
      ...[...notes].map(([what, list]) => `NOTE ${what}: ${list.length}×, e.g.\n${list.slice(0, 3).map((c) => `      ${show(c)}`).join('\n')}`),
      ...(hostile.strays.length ? [`requests the upstream could not tie to a case: ${hostile.strays.length}, e.g. ${esc(hostile.strays[0]!)}`] : []),
      `afterwards: ${leftovers.last}`,
      ...failures.map((f) => `FINAL CHECK FAILED: ${f}`),
    ]);
    const file = join(tmpdir(), `ws-guard-fuzz-upstream-${SEED}.txt`);
    writeFileSync(file, summary);
    console.log(`${summary}\n(summary written to ${file}${MINIMIZE ? '' : '; WS_GUARD_FUZZ_MINIMIZE=1 shrinks crashers'})`);

    expect.soft(result.crashes.map((c) => `${c.signature} ← ${c.cases.map((x) => `#${x.id}`).join(',')}`)).toEqual([]);
    expect.soft([...result.repeatCrashes.keys()]).toEqual([]);
    expect.soft(result.badAnswers.map((b) => `#${b.fuzzCase.id}: ${b.problem}`)).toEqual([]);
    expect.soft(result.notRun).toBe(0);
    expect(failures).toEqual([]);
  }, 600_000);
});


