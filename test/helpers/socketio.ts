import { spawn } from 'node:child_process';
import http from 'node:http';
import { fileURLToPath } from 'node:url';
import { io, type ManagerOptions, type Socket, type SocketOptions } from 'socket.io-client';
import { PYTHON } from './upstream.js';

const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
const APP_PY = fileURLToPath(new URL('../fixtures/socketio_app.py', import.meta.url));
const STARTUP_TIMEOUT_MS = 20_000;
const STOP_GRACE_MS = 3_000;
const MAX_STDERR_CHARS = 64 * 1024;

/** One request (polling GET/POST or WebSocket handshake) that reached the Socket.IO app. */
export interface SeenRequest {
  type: 'http' | 'websocket';
  method: string;
  transport: 'polling' | 'websocket' | null;
  sid: string | null;
  query: Record<string, string>;
  xAuthSub: string | null;
  authorization: string | null;
  /** The app's answer (101 for an accepted WebSocket), null while it is still open. */
  status: number | null;
  /** How long the app took to answer it. */
  ms: number | null;
}

export interface SeenEvent {
  event: 'connect' | 'echo' | 'disconnect';
  sid: string;
  transport?: string | null;
  xAuthSub?: string | null;
  /** environ["HTTP_X_AUTH_SUB"] in the connect handler (python-engineio folds X_Auth_Sub into it too). */
  environXAuthSub?: string | null;
  authorization?: string | null;
  auth?: unknown;
  data?: unknown;
}

export interface SocketIoApp {
  port: number;
  /** http://127.0.0.1:port */
  url: string;
  /** What reached the app for clients that sent `?tag=<tag>` (read directly, not through the guard). */
  seen(tag: string): Promise<{ requests: SeenRequest[]; events: SeenEvent[] }>;
  stderr(): string;
  /** SIGTERM, then SIGKILL after 3 s. Idempotent. */
  stop(): Promise<void>;
}

/** Starts test/fixtures/socketio_app.py (python-socketio under uvicorn) on 127.0.0.1. */
export async function startSocketIoApp(options: { pingInterval?: number; pingTimeout?: number } = {}): Promise<SocketIoApp> {
  const args = [APP_PY, '--exit-on-stdin-eof'];
  if (options.pingInterval !== undefined) args.push('--ping-interval', String(options.pingInterval));
  if (options.pingTimeout !== undefined) args.push('--ping-timeout', String(options.pingTimeout));
  const child = spawn(PYTHON, args, { cwd: REPO_ROOT, stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, PYTHONUNBUFFERED: '1' } });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (c: string) => (stderr = (stderr + c).slice(-MAX_STDERR_CHARS)));
  const alive = () => child.exitCode === null && child.signalCode === null;
  const exited = new Promise<void>((resolve) => (alive() ? child.once('exit', () => resolve()) : resolve()));

  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    const fail = (why: string) => {
      clearTimeout(timer);
      if (alive()) child.kill('SIGKILL');
      reject(new Error(`socketio_app.py ${why}\n--- stderr ---\n${stderr}`));
    };
    const timer = setTimeout(() => fail(`did not print LISTENING within ${STARTUP_TIMEOUT_MS} ms`), STARTUP_TIMEOUT_MS);
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (c: string) => {
      out += c;
      const m = /^LISTENING (\d+)$/m.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    child.once('close', (code, signal) => fail(`exited before LISTENING (code ${code}, signal ${signal})`));
    child.once('error', (err) => fail(`failed to spawn: ${err.message}`));
  });
  const url = `http://127.0.0.1:${port}`;
  return {
    port,
    url,
    stderr: () => stderr,
    seen: async (tag) => JSON.parse(await getText(`${url}/_seen?tag=${encodeURIComponent(tag)}`)),
    stop: async () => {
      if (alive()) child.kill('SIGTERM');
      const timer = setTimeout(() => alive() && child.kill('SIGKILL'), STOP_GRACE_MS);
      await exited;
      clearTimeout(timer);
    },
  };
}

function getText(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`GET ${url} -> ${res.statusCode}: ${body}`))));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error(`GET ${url} timed out`)));
  });
}

export type Transports = Array<'polling' | 'websocket'>;
export type ClientOptions = Partial<ManagerOptions & SocketOptions>;

/**
 * A socket.io-client Socket to `url` (the guard), never reconnecting (a refusal must stay a refusal), with
 * `forceNew` so no two tests share a Manager. Not yet connected: call `connected(socket)`.
 */
export function sioClient(url: string, tag: string, transports: Transports, options: ClientOptions = {}): Socket {
  return io(url, {
    transports,
    autoConnect: false,
    reconnection: false,
    forceNew: true,
    timeout: 10_000,
    ...options,
    query: { tag, ...(options.query as Record<string, string> | undefined) },
  });
}

/** Resolves with the app's `welcome` once connected; rejects with the connect_error. */
export function connected(socket: Socket): Promise<{ sub: string | null; transport: string }> {
  return new Promise((resolve, reject) => {
    socket.once('welcome', resolve);
    socket.once('connect_error', reject);
    socket.connect();
  });
}

/** Resolves with the connect_error (its `description` holds the HTTP status or the transport's error). */
export function refused(socket: Socket): Promise<Error & { description?: unknown; type?: string }> {
  return new Promise((resolve, reject) => {
    socket.once('connect', () => reject(new Error('expected connect_error, got connected')));
    socket.once('connect_error', (err) => resolve(err));
    socket.connect();
  });
}

/** Resolves once `socket` has the transport `name` (e.g. after the polling → websocket upgrade). */
export function onTransport(socket: Socket, name: 'polling' | 'websocket', ms = 10_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const engine = socket.io.engine;
    if (engine.transport.name === name) return resolve();
    const timer = setTimeout(() => reject(new Error(`no ${name} transport within ${ms} ms`)), ms);
    engine.once('upgrade', (t: { name: string }) => {
      clearTimeout(timer);
      if (t.name === name) resolve();
      else reject(new Error(`upgraded to ${t.name}`));
    });
  });
}

/** Emits `echo` with `data`; resolves with the app's `echo` event and its ack. */
export function echo(socket: Socket, data: unknown, ms = 10_000): Promise<{ event: unknown; ack: unknown }> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no echo within ${ms} ms`)), ms);
    let event: unknown;
    let ack: unknown;
    let got = 0;
    const done = () => {
      if (++got === 2) {
        clearTimeout(timer);
        resolve({ event, ack });
      }
    };
    socket.once('echo', (d: unknown) => {
      event = d;
      done();
    });
    socket.emit('echo', data, (d: unknown) => {
      ack = d;
      done();
    });
  });
}
