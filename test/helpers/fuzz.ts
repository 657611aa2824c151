/**
 * Fuzzing tools for the process-level fuzzers (test/fuzz-http.test.ts, test/fuzz-upstream.test.ts): a
 * seeded PRNG (one independent stream per case, so any case can be replayed alone), raw-socket exchanges
 * with a deadline, a check that what the guard wrote is a well-formed HTTP head, the built guard spawned
 * as a child process (a crash is the process exiting), and a campaign runner that keeps going after a
 * crash (restarts the guard, then narrows every crash down to the case or cases that cause it).
 *
 * Environment:
 *   WS_GUARD_FUZZ_SEED=<n>       the run's seed (default 20240611), printed with every failure
 *   WS_GUARD_FUZZ_CASES=<n>      number of generated cases (each fuzzer has its own default)
 *   WS_GUARD_FUZZ_CASE=<id,...>  replay only these case ids (with the same seed)
 *   WS_GUARD_FUZZ_MINIMIZE=1     shrink each distinct crasher by deleting lines while it still crashes
 *   WS_GUARD_FUZZ_BUILD=<dir>    run the build (dist/) of another checkout, e.g. an older commit
 *   WS_GUARD_FUZZ_VERBOSE=1      print every case and the guard's answer
 *   WS_GUARD_FUZZ_CONCURRENCY=<n> cases in flight at once (default 16)
 *   WS_GUARD_FUZZ_TRIAGE_S=<n>   time allowed for narrowing crashes down to their cases (default 120)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));

export const SEED = envInt('WS_GUARD_FUZZ_SEED', 20240611) >>> 0;
export const CONCURRENCY = envInt('WS_GUARD_FUZZ_CONCURRENCY', 16);
export const MINIMIZE = process.env.WS_GUARD_FUZZ_MINIMIZE === '1';
/** Print every case and what the guard answered. */
export const VERBOSE = process.env.WS_GUARD_FUZZ_VERBOSE === '1';
/** Case ids to replay alone, or undefined for a whole run. */
export const ONLY: number[] | undefined = process.env.WS_GUARD_FUZZ_CASE
  ? process.env.WS_GUARD_FUZZ_CASE.split(',').map((s) => Number(s.trim())).filter((n) => Number.isInteger(n))
  : undefined;

export function envInt(name: string, fallback: number): number {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  const n = Number(text);
  return Number.isFinite(n) ? Math.floor(n) : fallback;
}

export function caseCount(fallback: number): number {
  return envInt('WS_GUARD_FUZZ_CASES', fallback);
}

// ---------------------------------------------------------------------------------------------------------
// PRNG

/** mulberry32: tiny, fast, good enough to spread cases; never used for anything secret. */
export class Rng {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  /** A float in [0, 1). */
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  /** An integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }
  /** Picks by weight: `[[3, a], [1, b]]` gives a three times as often as b. */
  weighted<T>(items: readonly (readonly [number, T])[]): T {
    const total = items.reduce((sum, [w]) => sum + w, 0);
    let at = this.next() * total;
    for (const [w, item] of items) {
      at -= w;
      if (at < 0) return item;
    }
    return items[items.length - 1]![1];
  }
  bytes(n: number): Buffer {
    const out = Buffer.alloc(n);
    for (let i = 0; i < n; i++) out[i] = this.int(256);
    return out;
  }
  /** A latin1 string of `n` random bytes from `alphabet` (default: any byte). */
  str(n: number, alphabet?: string): string {
    let s = '';
    for (let i = 0; i < n; i++) s += alphabet ? alphabet[this.int(alphabet.length)] : String.fromCharCode(this.int(256));
    return s;
  }
}

/** The PRNG of one case: depends only on the run's seed and the case id. */
export function caseRng(id: number, salt = 0): Rng {
  let h = (SEED ^ Math.imul(id + 1, 0x9e3779b1) ^ Math.imul(salt + 7, 0x85ebca6b)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d) >>> 0;
  h = Math.imul(h ^ (h >>> 15), 0x846ca68b) >>> 0;
  return new Rng(h ^ (h >>> 16));
}

/** Bytes of a latin1 string (one byte per char; chars above 0xff are truncated, so keep them out). */
export const latin1 = (s: string): Buffer => Buffer.from(s, 'latin1');

/** Bytes as a printable, replayable string literal: printable ASCII as is, the rest escaped. */
export function esc(data: Buffer | string, max = 1500): string {
  const buf = typeof data === 'string' ? latin1(data) : data;
  let out = '';
  const n = Math.min(buf.length, max);
  for (let i = 0; i < n; i++) {
    const b = buf[i]!;
    if (b === 0x5c) out += '\\\\';
    else if (b === 0x22) out += '\\"';
    else if (b === 0x0d) out += '\\r';
    else if (b === 0x0a) out += '\\n';
    else if (b === 0x09) out += '\\t';
    else if (b >= 0x20 && b < 0x7f) out += String.fromCharCode(b);
    else out += `\\x${b.toString(16).padStart(2, '0')}`;
  }
  // Long runs of one character (huge targets or headers) are shown compressed.
  out = out.replace(/(.)\1{63,}/g, (run, ch: string) => `${ch}…(${run.length}×)`);
  return `"${out}"${buf.length > max ? `…(+${buf.length - max} bytes)` : ''}`;
}

// ---------------------------------------------------------------------------------------------------------
// WebSocket bits for raw clients and servers

export const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

export function wsKey(rng: Rng): string {
  return rng.bytes(16).toString('base64');
}

/** A frame; masked with a fixed key when `mask` (client → server frames must be masked). */
export function wsFrame(opcode: number, payload: Buffer | string, mask: boolean, fin = true, rsv1 = false): Buffer {
  const data = typeof payload === 'string' ? Buffer.from(payload) : payload;
  const len = data.length;
  const head: number[] = [(fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | opcode];
  const m = mask ? 0x80 : 0;
  if (len < 126) head.push(m | len);
  else if (len < 65536) head.push(m | 126, len >> 8, len & 0xff);
  else {
    head.push(m | 127, 0, 0, 0, 0);
    head.push((len >>> 24) & 0xff, (len >>> 16) & 0xff, (len >>> 8) & 0xff, len & 0xff);
  }
  if (!mask) return Buffer.concat([Buffer.from(head), data]);
  const key = Buffer.from([0x12, 0x34, 0x56, 0x78]);
  const body = Buffer.from(data);
  for (let i = 0; i < body.length; i++) body[i]! ^= key[i % 4]!;
  return Buffer.concat([Buffer.from(head), key, body]);
}

// ---------------------------------------------------------------------------------------------------------
// One raw exchange

export interface RawPlan {
  /** The bytes, written as separate writes (with `gapMs` between them). */
  writes: Buffer[];
  gapMs?: number;
  /** wait: keep the socket open; fin: half-close after writing; rst: destroy `rstAfterMs` after writing. */
  ending: 'wait' | 'fin' | 'rst';
  rstAfterMs?: number;
}

export interface RawResult {
  received: Buffer;
  /** The guard ended or closed the connection (rather than the deadline or our own destroy). */
  peerClosed: boolean;
  connectError?: string;
  ms: number;
}

/**
 * Writes a plan to 127.0.0.1:port and reads until the guard closes, the answer has been quiet for
 * `idleMs` after the first byte, or `deadlineMs` passed; then destroys the socket.
 */
export function rawExchange(port: number, plan: RawPlan, deadlineMs: number, idleMs: number): Promise<RawResult> {
  const started = Date.now();
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let settled = false;
    let connected = false;
    const timers: NodeJS.Timeout[] = [];
    let idle: NodeJS.Timeout | undefined;
    const socket = net.connect({ port, host: '127.0.0.1' });
    socket.setNoDelay(true);
    const done = (peerClosed: boolean, connectError?: string) => {
      if (settled) return;
      settled = true;
      for (const t of timers) clearTimeout(t);
      clearTimeout(idle);
      socket.destroy();
      resolve({ received: Buffer.concat(chunks), peerClosed, connectError, ms: Date.now() - started });
    };
    timers.push(setTimeout(() => done(false), deadlineMs));
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (!connected) done(false, err.code ?? err.message);
      else done(true);
    });
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      clearTimeout(idle);
      idle = setTimeout(() => done(false), idleMs);
    });
    socket.on('end', () => done(true));
    socket.on('close', () => done(true));
    socket.on('connect', () => {
      connected = true;
      let i = 0;
      const writeNext = () => {
        if (settled || socket.destroyed) return;
        if (i < plan.writes.length) {
          socket.write(plan.writes[i++]!);
          if (i < plan.writes.length) timers.push(setTimeout(writeNext, plan.gapMs ?? 0));
          else writeNext();
          return;
        }
        if (plan.ending === 'fin') socket.end();
        else if (plan.ending === 'rst') timers.push(setTimeout(() => done(false), plan.rstAfterMs ?? 0));
      };
      writeNext();
    });
  });
}

// ---------------------------------------------------------------------------------------------------------
// What the guard wrote

const STATUS_LINE = /^HTTP\/1\.[01] [1-9]\d\d(?: [\t\x20-\x7e\x80-\xff]*)?$/;
const HEADER_LINE = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*$/;

export interface Answer {
  status: number | undefined;
  /** Lower-cased names, repeats joined with ', '. */
  headers: Record<string, string>;
  /** Why the bytes are not a well-formed HTTP/1.x response head, or undefined when they are (or empty). */
  problem: string | undefined;
}

/** Reads the first response head out of what the guard wrote and says whether it is well formed. */
export function parseAnswer(received: Buffer): Answer {
  const headers: Record<string, string> = {};
  if (received.length === 0) return { status: undefined, headers, problem: undefined };
  const end = received.indexOf('\r\n\r\n');
  const text = received.subarray(0, end === -1 ? received.length : end).toString('latin1');
  const lines = text.split('\r\n');
  // Without the blank line, the last line may be cut short by our own deadline: check only whole lines.
  const whole = end === -1 ? lines.slice(0, -1) : lines;
  const first = lines[0]!;
  if (end === -1 && whole.length === 0) {
    if (!'HTTP/1.1 '.startsWith(first.slice(0, 9)) && !first.startsWith('HTTP/1.')) {
      return { status: undefined, headers, problem: `not an HTTP answer: ${esc(first, 80)}` };
    }
    return { status: undefined, headers, problem: undefined };
  }
  if (!STATUS_LINE.test(first)) return { status: undefined, headers, problem: `malformed status line ${esc(first, 200)}` };
  const status = Number(first.slice(9, 12));
  for (const line of whole.slice(1)) {
    if (!HEADER_LINE.test(line)) return { status, headers, problem: `malformed header line ${esc(line, 200)} after ${esc(first, 80)}` };
    const colon = line.indexOf(':');
    const name = line.slice(0, colon).toLowerCase();
    const value = line.slice(colon + 1).trim();
    headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
  }
  if (/[\r\n]/.test(text.replace(/\r\n/g, ''))) return { status, headers, problem: 'bare CR or LF in the head' };
  return { status, headers, problem: undefined };
}

// ---------------------------------------------------------------------------------------------------------
// The guard as a child process

let snapshot: string | undefined;

/**
 * A private copy of the build (dist/, bin/, package.json, config/) with node_modules linked: other people
 * rebuild dist/ while a fuzzer runs, and a guard restarted after a crash must be the same build.
 */
export function buildSnapshot(): string {
  if (snapshot !== undefined) return snapshot;
  const from = process.env.WS_GUARD_FUZZ_BUILD ?? ROOT;
  if (!existsSync(join(from, 'dist/cli/main.js'))) throw new Error(`${from}dist/ is missing: run \`npm run build\` first`);
  const dir = mkdtempSync(join(tmpdir(), 'ws-guard-fuzz-build-'));
  for (const part of ['dist', 'bin', 'config', 'package.json']) {
    if (existsSync(join(from, part))) cpSync(join(from, part), join(dir, part), { recursive: true });
  }
  symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'), 'dir');
  snapshot = dir;
  process.once('exit', removeSnapshot);
  return dir;
}

/** Removes the copy of the build (call from afterAll, once the guard processes are stopped). */
export function removeSnapshot(): void {
  if (snapshot !== undefined) rmSync(snapshot, { recursive: true, force: true });
  snapshot = undefined;
}

export interface GuardProc {
  child: ChildProcess;
  port: number;
  adminPort: number;
  /** Set when the process has exited. */
  exit: { code: number | null; signal: NodeJS.Signals | null; at: number } | undefined;
  stderr(): string;
  /** The JSON log lines (stdout) parsed; lines that are not JSON are kept as { raw }. */
  logs(): Record<string, unknown>[];
  /** Resolves when the process has exited and its output is drained. */
  closed: Promise<void>;
  onExit(listener: () => void): void;
  stop(): Promise<void>;
}

const MAX_LOG_LINES = 20_000;
/** Every guard process started here: none may outlive the test process, whatever happened. */
const children = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
});
const MAX_STDERR = 256 * 1024;

/** Starts `node bin/ws-guard.js --config <file>` from the snapshot and waits for its listening line. */
export async function spawnGuard(configYaml: string, env: Record<string, string>, ports: { port: number; adminPort: number }): Promise<GuardProc> {
  const dir = buildSnapshot();
  const file = join(dir, `fuzz-${process.pid}-${ports.port}.yaml`);
  writeFileSync(file, configYaml);
  const child = spawn(process.execPath, [join(dir, 'bin/ws-guard.js'), '--config', file], {
    env: { ...process.env, ...env, WS_GUARD_LOG_LEVEL: process.env.WS_GUARD_LOG_LEVEL ?? 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  child.once('exit', () => children.delete(child));
  let stderr = '';
  let partial = '';
  const logs: Record<string, unknown>[] = [];
  let listening = false;
  child.stderr!.setEncoding('latin1');
  child.stderr!.on('data', (d: string) => {
    stderr = (stderr + d).slice(-MAX_STDERR);
  });
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (d: string) => {
    partial += d;
    const lines = partial.split('\n');
    partial = lines.pop()!;
    for (const line of lines) {
      if (line === '') continue;
      let parsed: Record<string, unknown>;
      try {
        parsed = JSON.parse(line) as Record<string, unknown>;
      } catch {
        parsed = { raw: line };
      }
      if (parsed.msg === 'ws-guard listening') listening = true;
      // Info lines (one per refusal) are only counted; warnings and worse are kept for the report.
      if (logs.length < MAX_LOG_LINES && (typeof parsed.level !== 'number' || parsed.level >= 40)) logs.push(parsed);
    }
  });
  const exitListeners: (() => void)[] = [];
  const proc: GuardProc = {
    child,
    ...ports,
    exit: undefined,
    stderr: () => stderr,
    logs: () => logs,
    closed: new Promise<void>((resolve) => child.once('close', () => resolve())),
    onExit: (l) => exitListeners.push(l),
    stop: async () => {
      if (proc.exit === undefined) child.kill('SIGKILL');
      await proc.closed;
    },
  };
  child.once('exit', (code, signal) => {
    proc.exit = { code, signal, at: Date.now() };
    for (const l of exitListeners) l();
  });
  // Ready when the listener accepts a connection (the log line saying so has changed before).
  const deadline = Date.now() + 15_000;
  while (!listening && !(await accepts(ports.port))) {
    if (proc.exit !== undefined) {
      await proc.closed;
      throw new Error(`the guard exited before listening (code ${proc.exit.code}):\n${stderr}\n${JSON.stringify(logs)}`);
    }
    if (Date.now() > deadline) {
      await proc.stop();
      throw new Error(`the guard did not listen within 15 s:\n${stderr}`);
    }
    await sleep(25);
  }
  return proc;
}

/** Whether something accepts TCP connections on 127.0.0.1:port. */
export function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1' });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export async function until(check: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** GET on 127.0.0.1, resolving with status, headers and body; agent: false so nothing lingers. */
export function httpGet(port: number, path: string, headers: Record<string, string> = {}, timeoutMs = 5000): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, headers, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`GET ${path} timed out`)));
  });
}

/** The sum of every sample of `name` in a Prometheus text exposition (undefined when absent). */
export function metricSum(text: string, name: string): number | undefined {
  let sum: number | undefined;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([^ ]+)/.exec(line);
    if (m?.[1] === name) sum = (sum ?? 0) + Number(m[3]);
  }
  return sum;
}

/** Text a crashing Node process (or a guard that logs what it should not have let escape) writes. */
export const UNCAUGHT = /uncaught|unhandled|triggerUncaughtException|^\s+at .*\(.*:\d+:\d+\)$|^\w*Error(?: \[\w+\])?: /im;

/** A stable name for a crash: the error class, its code and the first frame in the guard's own code. */
export function crashSignature(stderr: string, logs: Record<string, unknown>[]): { signature: string; text: string } {
  const fromLog = [...logs].reverse().find((l) => typeof l.level === 'number' && l.level >= 50 && l.err !== undefined);
  const text = stderr.trim() !== '' ? stderr : fromLog ? JSON.stringify(fromLog.err) : '(no output)';
  const lines = text.split('\n');
  const errLine = lines.find((l) => /^(?:Uncaught )?\w*(?:Error|Exception)\b/.test(l.trim())) ?? lines.find((l) => l.trim() !== '') ?? '';
  const name = /^(?:Uncaught )?(\w+)/.exec(errLine.trim())?.[1] ?? '?';
  const code = /\bcode: '(\w+)'/.exec(text)?.[1] ?? /\[(ERR_\w+)\]/.exec(text)?.[1] ?? /"code":"(\w+)"/.exec(text)?.[1] ?? '';
  const frame = /(dist\/[\w/.-]+\.js):(\d+)/.exec(text);
  const where = frame ? `${frame[1]}:${frame[2]}` : (/\((node:[^)]+)\)/.exec(text)?.[1] ?? 'unknown place');
  return { signature: `${name}${code ? ` [${code}]` : ''} at ${where}`, text: trimStack(text) };
}

function trimStack(text: string): string {
  const lines = text.split('\n').filter((l) => l.trim() !== '');
  return lines.slice(0, 30).join('\n');
}

// ---------------------------------------------------------------------------------------------------------
// Campaign: many cases against one process, surviving (and explaining) its crashes

export interface FuzzCase {
  id: number;
  /** One line saying what the case is, for reports. */
  desc: string;
}

export interface CaseReport<C extends FuzzCase> {
  fuzzCase: C;
  result: RawResult;
  answer: Answer;
  /** The process died while this case ran: what it got may be collateral damage of another case. */
  guardDied: boolean;
}

export interface Crash<C extends FuzzCase> {
  signature: string;
  text: string;
  /** The case (or the smallest set of cases run together) that made the process exit. */
  cases: C[];
  /** False when replaying the suspects alone did not crash again (the crash needs the timing of the run). */
  reproduced: boolean;
  /** A smaller variant of cases[0] that still crashes the same way (WS_GUARD_FUZZ_MINIMIZE=1). */
  minimized?: C;
}

export interface CampaignOptions<C extends FuzzCase> {
  cases: C[];
  start: () => Promise<GuardProc>;
  exec: (guard: GuardProc, c: C) => Promise<RawResult>;
  concurrency?: number;
  /** Give up the run after this many crashes (the rest of the cases are reported as not run). */
  maxCrashes?: number;
  /** Crashes with a signature seen this many times already are not narrowed down again. */
  triagePerSignature?: number;
  /** Smaller variants of a case, for the minimizer (each tried in turn; the first that still crashes wins). */
  shrink?: (c: C) => C[];
  onCase?: (report: CaseReport<C>) => void;
  /** A wrong (not malformed) answer: returns why, or undefined when the answer is acceptable. */
  judge?: (c: C, result: RawResult, answer: Answer) => string | undefined;
  /** Time allowed for narrowing crashes down after the run (default WS_GUARD_FUZZ_TRIAGE_S=120 s). */
  triageMs?: number;
}

export interface CampaignResult<C extends FuzzCase> {
  guard: GuardProc;
  crashes: Crash<C>[];
  /** Crashes not narrowed down (their signature was already explained enough times). */
  repeatCrashes: Map<string, number>;
  /** Times the process died during the run (the replays that narrow crashes down come on top). */
  runCrashes: number;
  restarts: number;
  ran: number;
  notRun: number;
  /** Non-crash problems per case: a malformed answer, or a wrong one (`judge`). */
  badAnswers: { fuzzCase: C; problem: string; received: Buffer }[];
  /** Warn/error log lines (and stderr text) of processes that did not crash. */
  survivorLogs: Record<string, unknown>[];
  survivorStderr: string[];
  /** The whole campaign, and the run alone (without narrowing crashes down). */
  ms: number;
  runMs: number;
}

/**
 * Runs every case with bounded concurrency against one guard process. When the process exits, the cases
 * in flight (and those finished just before) are suspects: the guard is restarted, the run goes on, and
 * afterwards each crash is narrowed down by replaying its suspects in halves against a fresh process.
 */
export async function runCampaign<C extends FuzzCase>(options: CampaignOptions<C>): Promise<CampaignResult<C>> {
  const started = Date.now();
  const concurrency = options.concurrency ?? CONCURRENCY;
  const maxCrashes = options.maxCrashes ?? 60;
  const perSignature = options.triagePerSignature ?? 2;
  let guard = await options.start();
  let restarts = 0;
  let restarting: Promise<GuardProc> | undefined;
  const survivorLogs: Record<string, unknown>[] = [];
  const survivorStderr: string[] = [];
  const badAnswers: CampaignResult<C>['badAnswers'] = [];

  interface Pending { guard: GuardProc; signature: string; text: string; suspects: C[] }
  const pendingCrashes: Pending[] = [];
  const inFlight = new Map<GuardProc, Set<C>>();
  const recentlyDone = new Map<GuardProc, { c: C; at: number }[]>();

  let collecting = true;
  let pendingCrashesSeen = 0;
  const runGuards: GuardProc[] = [];
  const watch = (g: GuardProc) => {
    if (collecting) runGuards.push(g);
    inFlight.set(g, new Set());
    recentlyDone.set(g, []);
    g.onExit(() => {
      if (!collecting) return;
      pendingCrashesSeen++;
      const at = g.exit!.at;
      const suspects = new Set(inFlight.get(g));
      for (const d of recentlyDone.get(g)!) if (at - d.at < 1500) suspects.add(d.c);
      void g.closed.then(() => {
        const { signature, text } = crashSignature(g.stderr(), g.logs());
        pendingCrashes.push({ guard: g, signature, text, suspects: [...suspects].sort((a, b) => a.id - b.id) });
      });
    });
  };
  watch(guard);

  const current = async (): Promise<GuardProc> => {
    if (guard.exit === undefined) return guard;
    if (restarting === undefined) {
      restarting = (async () => {
        await guard.closed;
        restarts++;
        const next = await options.start();
        watch(next);
        guard = next;
        return next;
      })().finally(() => {
        restarting = undefined;
      });
    }
    return restarting;
  };

  const queue = [...options.cases];
  let ran = 0;
  let stopped = false;
  const worker = async () => {
    while (queue.length > 0 && !stopped) {
      const c = queue.shift()!;
      let attempts = 0;
      for (;;) {
        const g = await current();
        inFlight.get(g)!.add(c);
        const result = await options.exec(g, c);
        // A process that is dying refuses or resets connections a moment before its exit is seen.
        if (g.exit === undefined && (result.connectError !== undefined || result.received.length === 0)) {
          const until = Date.now() + (result.connectError !== undefined ? 2000 : 200);
          while (g.exit === undefined && Date.now() < until) await sleep(10);
        }
        inFlight.get(g)!.delete(c);
        const list = recentlyDone.get(g)!;
        list.push({ c, at: Date.now() });
        if (list.length > 4 * concurrency) list.splice(0, list.length - 4 * concurrency);
        // Refused because the process had just died: run the case again on the next one.
        if (result.connectError !== undefined && g.exit !== undefined && attempts++ < 2) continue;
        ran++;
        if (result.connectError !== undefined && g.exit === undefined) {
          badAnswers.push({ fuzzCase: c, problem: `the live process refused the connection: ${result.connectError}`, received: result.received });
        }
        const answer = parseAnswer(result.received);
        if (answer.problem !== undefined) badAnswers.push({ fuzzCase: c, problem: answer.problem, received: result.received });
        else if (g.exit === undefined) {
          const wrong = options.judge?.(c, result, answer);
          if (wrong !== undefined) badAnswers.push({ fuzzCase: c, problem: wrong, received: result.received });
        }
        options.onCase?.({ fuzzCase: c, result, answer, guardDied: g.exit !== undefined });
        break;
      }
      if (pendingCrashesSeen >= maxCrashes) stopped = true;
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const notRun = queue.length;
  const runMs = Date.now() - started;
  // Let a last crash be seen, then stop collecting: the replays below crash the guard on purpose.
  await sleep(300);
  await current();
  collecting = false;
  const runCrashes = pendingCrashesSeen;
  const settle = Date.now() + 5000;
  while (pendingCrashes.length < runCrashes && Date.now() < settle) await sleep(20);

  // Narrow each crash down to its cause.
  const crashes: Crash<C>[] = [];
  const repeatCrashes = new Map<string, number>();
  const explained = new Map<string, number>();
  const knownCrashers = new Set<number>();
  const runSet = async (set: C[]): Promise<{ crashed: boolean; signature: string; text: string }> => {
    const g = await current();
    await Promise.all(set.map((c) => options.exec(g, c)));
    await sleep(400);
    if (g.exit === undefined) return { crashed: false, signature: '', text: '' };
    await g.closed;
    return { crashed: true, ...crashSignature(g.stderr(), g.logs()) };
  };
  const bisect = async (set: C[], depth = 0): Promise<{ cases: C[]; signature: string; text: string }[]> => {
    const outcome = await runSet(set);
    if (process.env.WS_GUARD_FUZZ_DEBUG) console.log(`bisect depth ${depth}: ${set.map((c) => c.id).join(',')} -> ${outcome.crashed ? outcome.signature : 'no crash'}`);
    if (!outcome.crashed) return [];
    if (set.length === 1 || depth > 12) return [{ cases: set, signature: outcome.signature, text: outcome.text }];
    const half = Math.ceil(set.length / 2);
    // Crashes can depend on timing: a half that did not crash gets a second chance before giving up.
    for (let attempt = 0; attempt < 2; attempt++) {
      const found = [...(await bisect(set.slice(0, half), depth + 1)), ...(await bisect(set.slice(half), depth + 1))];
      if (found.length > 0) return found;
    }
    // A crowd can hide a crasher (timing): small sets are also tried one case at a time.
    if (set.length <= 16) {
      const alone: { cases: C[]; signature: string; text: string }[] = [];
      for (const c of set) {
        const one = await runSet([c]);
        if (one.crashed) alone.push({ cases: [c], signature: one.signature, text: one.text });
      }
      if (alone.length > 0) return alone;
    }
    // Neither half alone: the crash needs the cases together (or the timing of a crowd).
    return [{ cases: set, signature: outcome.signature, text: outcome.text }];
  };
  const triageStart = Date.now();
  const triageMs = options.triageMs ?? envInt('WS_GUARD_FUZZ_TRIAGE_S', 120) * 1000;
  for (const p of pendingCrashes) {
    if (Date.now() - triageStart > triageMs) {
      repeatCrashes.set(p.signature, (repeatCrashes.get(p.signature) ?? 0) + 1);
      continue;
    }
    if ((explained.get(p.signature) ?? 0) >= perSignature || p.suspects.every((c) => knownCrashers.has(c.id))) {
      repeatCrashes.set(p.signature, (repeatCrashes.get(p.signature) ?? 0) + 1);
      continue;
    }
    const suspects = p.suspects.filter((c) => !knownCrashers.has(c.id));
    const found = suspects.length > 0 ? await bisect(suspects) : [];
    if (found.length === 0) {
      crashes.push({ signature: p.signature, text: p.text, cases: p.suspects, reproduced: false });
      explained.set(p.signature, (explained.get(p.signature) ?? 0) + 1);
    }
    for (const f of found) {
      for (const c of f.cases) knownCrashers.add(c.id);
      crashes.push({ signature: f.signature, text: f.text, cases: f.cases, reproduced: true });
      explained.set(f.signature, (explained.get(f.signature) ?? 0) + 1);
    }
  }

  if (MINIMIZE && options.shrink) {
    const done = new Set<string>();
    for (const crash of crashes) {
      if (!crash.reproduced || crash.cases.length !== 1 || done.has(crash.signature)) continue;
      done.add(crash.signature);
      let best = crash.cases[0]!;
      let budget = 120;
      for (let improved = true; improved && budget > 0;) {
        improved = false;
        for (const candidate of options.shrink(best)) {
          if (budget-- <= 0) break;
          const outcome = await runSet([candidate]);
          if (outcome.crashed && outcome.signature === crash.signature) {
            best = candidate;
            improved = true;
            break;
          }
        }
      }
      crash.minimized = best;
    }
  }

  const g = await current();
  for (const run of runGuards) {
    for (const l of run.logs()) survivorLogs.push(l);
    if (run.exit === undefined && UNCAUGHT.test(run.stderr())) survivorStderr.push(run.stderr());
  }
  return { guard: g, crashes, repeatCrashes, runCrashes, restarts, ran, notRun, badAnswers, survivorLogs, survivorStderr, ms: Date.now() - started, runMs };
}

/** Deletes one line (CRLF-separated) at a time from `data`: the minimizer's candidates. */
export function lineDeletions(data: Buffer, keepFirst = true): Buffer[] {
  const text = data.toString('latin1');
  const lines = text.split('\r\n');
  const out: Buffer[] = [];
  for (let i = keepFirst ? 1 : 0; i < lines.length; i++) {
    if (lines[i] === '' ) continue;
    out.push(latin1([...lines.slice(0, i), ...lines.slice(i + 1)].join('\r\n')));
  }
  // Also: cut everything after the first blank line (a body, a pipelined request, frames), or pieces of it.
  const end = text.indexOf('\r\n\r\n');
  if (end !== -1 && end + 4 < text.length) {
    const head = text.slice(0, end + 4);
    const rest = text.slice(end + 4);
    const cuts: string[] = [];
    for (const k of [2, 4, 8, 16]) {
      const size = Math.ceil(rest.length / k);
      if (size < 1) continue;
      for (let i = 0; i < k; i++) cuts.push(head + rest.slice(0, i * size) + rest.slice((i + 1) * size));
    }
    out.unshift(latin1(head), ...cuts.filter((c) => c.length < text.length).map(latin1));
  }
  return out;
}

/** A readable, de-duplicated account of a campaign, printed by the fuzzers. */
export function summarize<C extends FuzzCase>(
  title: string,
  result: CampaignResult<C>,
  show: (c: C) => string,
  extra: string[] = [],
): string {
  const out: string[] = [];
  out.push(`=== ${title}: seed ${SEED} (replay: WS_GUARD_FUZZ_SEED=${SEED} WS_GUARD_FUZZ_CASE=<id>) ===`);
  out.push(`ran ${result.ran} cases in ${(result.runMs / 1000).toFixed(1)} s (+${((result.ms - result.runMs) / 1000).toFixed(1)} s narrowing crashes down); the process died ${result.runCrashes}× during the run (restarts incl. triage replays: ${result.restarts}); not run: ${result.notRun}`);
  const bySig = new Map<string, Crash<C>[]>();
  for (const c of result.crashes) bySig.set(c.signature, [...(bySig.get(c.signature) ?? []), c]);
  if (bySig.size > 0) out.push(`--- ${bySig.size} distinct crash signature(s) ---`);
  for (const [sig, list] of bySig) {
    const again = result.repeatCrashes.get(sig) ?? 0;
    out.push(`* CRASH ${sig}  (narrowed ${list.length}×, ${again} more crash(es) with this signature)`);
    out.push(indent(list[0]!.text, '    | '));
    for (const crash of list.slice(0, 3)) {
      const label = !crash.reproduced ? 'NOT reproduced in replays; suspects' : crash.cases.length > 1 ? 'reproduced only by these together' : 'reproduced by';
      out.push(`    ${label} ${crash.cases.map((c) => `#${c.id}`).join(', ')}`);
      for (const c of crash.cases.slice(0, 3)) out.push(indent(show(c), '      '));
    }
    const min = list.find((c) => c.minimized)?.minimized;
    if (min) out.push(`    minimized:\n${indent(show(min), '      ')}`);
  }
  for (const [sig, n] of result.repeatCrashes) if (!bySig.has(sig)) out.push(`* CRASH ${sig} (${n}×, not narrowed down)`);
  const badByProblem = new Map<string, CampaignResult<C>['badAnswers']>();
  for (const b of result.badAnswers) {
    const key = b.problem.replace(/"[^"]*"/g, '"…"').slice(0, 60);
    badByProblem.set(key, [...(badByProblem.get(key) ?? []), b]);
  }
  if (badByProblem.size > 0) out.push(`--- malformed or wrong answers written by the guard (${result.badAnswers.length}) ---`);
  for (const [, list] of badByProblem) {
    out.push(`* ${list[0]!.problem} (${list.length}×)`);
    for (const b of list.slice(0, 2)) out.push(indent(`${show(b.fuzzCase)}\nguard wrote: ${esc(b.received, 400)}`, '      '));
  }
  const errors = new Map<string, number>();
  const errorSample = new Map<string, Record<string, unknown>>();
  for (const l of result.survivorLogs) {
    const err = l.err as { type?: string; message?: string; stack?: string; code?: string } | undefined;
    const stackFrame = /(dist\/[\w/.-]+\.js:\d+)/.exec(err?.stack ?? '')?.[1] ?? '';
    const key = `${String(l.level)} ${String(l.msg ?? l.raw ?? '')} ${String(l.where ?? '')} ${err?.type ?? ''} ${err?.code ?? ''} ${stackFrame}`.trim();
    errors.set(key, (errors.get(key) ?? 0) + 1);
    if (!errorSample.has(key)) errorSample.set(key, l);
  }
  const interesting = [...errors].filter(([k]) => !/^40 http request failed/.test(k));
  if (interesting.length > 0) out.push('--- warn/error log lines of the surviving process ---');
  for (const [k, n] of interesting) {
    const sample = errorSample.get(k)!;
    const err = sample.err as { message?: string; stack?: string } | undefined;
    out.push(`* ${k} (${n}×)${err?.stack ? `\n${indent(err.stack.split('\n').slice(0, 6).join('\n'), '    | ')}` : ''}`);
  }
  const httpFailed = [...errors].filter(([k]) => /^40 http request failed/.test(k)).reduce((s, [, n]) => s + n, 0);
  if (httpFailed > 0) out.push(`(${httpFailed} "http request failed" warnings: the guard answered those itself)`);
  for (const s of result.survivorStderr) out.push(`--- stderr of the surviving process ---\n${indent(s.slice(0, 4000), '    | ')}`);
  out.push(...extra);
  return out.join('\n');
}

export function indent(text: string, prefix: string): string {
  return text.split('\n').map((l) => prefix + l).join('\n');
}

/** Counts of values, printed as "a: 3, b: 1". */
export class Tally {
  private counts = new Map<string, number>();
  add(key: string): void {
    this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
  }
  toString(): string {
    return [...this.counts].sort((a, b) => b[1] - a[1]).map(([k, n]) => `${k}: ${n}`).join(', ');
  }
}

/** Sends one message through a WebSocket and returns its echo: the guard still proxies after a run. */
export async function wsEcho(url: string, headers: Record<string, string>): Promise<string> {
  const ws = new WebSocket(url, { headers });
  try {
    await new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
      ws.once('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
      setTimeout(() => reject(new Error('no 101 within 5 s')), 5000);
    });
    ws.send('after the fuzz');
    return await new Promise<string>((resolve, reject) => {
      ws.once('message', (d) => resolve(String(d)));
      setTimeout(() => reject(new Error('no echo within 5 s')), 5000);
    });
  } finally {
    ws.terminate();
  }
}

/** '' when the admin metrics show no open connection (polled for a while), else what is left. */
export async function openAfterwards(adminPort: number): Promise<{ problem: string; last: string }> {
  let last = '';
  try {
    await until(async () => {
      const text = (await httpGet(adminPort, '/metrics')).body;
      const active = metricSum(text, 'ws_guard_connections_active') ?? 0;
      const fds = metricSum(text, 'ws_guard_process_open_fds') ?? 0;
      last = `ws_guard_connections_active=${active} ws_guard_process_open_fds=${fds}`;
      return active === 0 && fds < 150;
    }, 10_000, 'no open connection');
    return { problem: '', last };
  } catch {
    return { problem: `connections left open after the run: ${last}`, last };
  }
}
