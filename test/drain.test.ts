import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type WebSocket from 'ws';
import { closed, freePort, nextMessage, open } from './helpers/clients.js';
import { startTestGuard, until } from './helpers/guard.js';
import { Op, RawConn, acceptFor, closePayload, frame, upgradeRequest } from './helpers/raw.js';
import { startUpstream, type Upstream } from './helpers/upstream.js';

// The built CLI in front of the real uvicorn upstream: what a SIGTERM really does to open connections.
const bin = fileURLToPath(new URL('../bin/ws-guard.js', import.meta.url));
const CLIENTS = 20;
const RUNS = 3;
let upstream: Upstream;
let dir: string;
let runs = 0;

beforeAll(async () => {
  upstream = await startUpstream();
  dir = mkdtempSync(join(tmpdir(), 'ws-guard-drain-'));
});
afterAll(async () => {
  await upstream?.stop();
  rmSync(dir, { recursive: true, force: true });
});

interface Running {
  child: ChildProcess;
  port: number;
  logs: () => { msg: string; closeCode?: number; closedBy?: string }[];
  /** Sends SIGTERM; resolves with the exit code. */
  terminate(): Promise<number | null>;
}

async function startGuard(extra = ''): Promise<Running> {
  const port = await freePort();
  const file = join(dir, `drain-${++runs}.yaml`);
  writeFileSync(file, `listen: 127.0.0.1:${port}\nupstream: ${upstream.url}\n${extra}`);
  const child = spawn(process.execPath, [bin, '--config', file], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  const logs = () => out.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { msg: string });
  await until(() => logs().some((l) => l.msg === 'ws-guard listening'), 10_000, 'the guard to listen');
  return {
    child,
    port,
    logs,
    terminate: () => {
      child.kill('SIGTERM');
      return exited;
    },
  };
}

/** What the upstream app saw for `tag`, once it has recorded `count` disconnects. */
async function disconnects(tag: string, count: number): Promise<number[]> {
  let codes: number[] = [];
  await until(async () => {
    codes = (await upstream.seen(tag)).filter((e) => e.type === 'ws_disconnect').map((e) => e.code as number);
    return codes.length >= count;
  }, 5000, `${count} disconnects at the upstream for ${tag}`);
  return codes;
}

/** Time for bytes just written on loopback to have reached the guard. */
const settle = () => new Promise((r) => setTimeout(r, 200));

function auditLines(guard: Running) {
  return guard.logs().filter((l) => l.msg === 'connection closed');
}

/** A client frame announcing 100 bytes of payload: its first `at` bytes on the wire, then the rest. */
function splitFrame(at: number): [Buffer, Buffer] {
  const whole = frame({ opcode: Op.TEXT, payload: 'x'.repeat(100) });
  return [whole.subarray(0, at), whole.subarray(at)];
}

/**
 * A raw WebSocket client that keeps sending after the guard's FIN (half-open, like a client still
 * finishing its frame), instead of answering the FIN with its own at once.
 */
async function rawSession(port: number, tag: string): Promise<RawConn> {
  const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  await once(socket, 'connect');
  const conn = new RawConn(socket);
  conn.write(upgradeRequest(`/ws/echo?tag=${tag}`));
  expect((await conn.readHttpResponse()).status).toBe(101);
  return conn;
}

describe('drain (SIGTERM) loses nothing', () => {
  it(`${CLIENTS} clients, ${RUNS} runs: exit 0, one audit line each, 1001 at every client and at the upstream`, async () => {
    for (let run = 0; run < RUNS; run++) {
      const guard = await startGuard();
      const tag = `drain-${run}-${Date.now()}`;
      const sockets: WebSocket[] = [];
      try {
        for (let i = 0; i < CLIENTS; i++) sockets.push(await open(`ws://127.0.0.1:${guard.port}/ws/echo?tag=${tag}`));
        // Every session has carried a message both ways, so each is open end to end before the signal.
        await Promise.all(sockets.map(async (ws, i) => {
          const reply = nextMessage(ws);
          ws.send(`hello ${i}`);
          expect(String((await reply).data)).toBe(`hello ${i}`);
        }));
        const closes = Promise.all(sockets.map((ws) => closed(ws)));
        expect(await guard.terminate()).toBe(0);
        expect((await closes).map((c) => c.code)).toEqual(Array(CLIENTS).fill(1001));
        const audit = auditLines(guard);
        expect(audit).toHaveLength(CLIENTS);
        expect(audit.every((l) => l.closeCode === 1001 && l.closedBy === 'guard')).toBe(true);
        expect(await disconnects(tag, CLIENTS)).toEqual(Array(CLIENTS).fill(1001));
      } finally {
        for (const ws of sockets) ws.terminate();
        if (guard.child.exitCode === null) guard.child.kill('SIGKILL');
      }
    }
  });

  it('a client stalled mid-frame gets its close after the frame completes; the upstream still sees 1001', async () => {
    const guard = await startGuard();
    const tag = `stalled-${Date.now()}`;
    const conn = await rawSession(guard.port, tag);
    try {
      const [start, rest] = splitFrame(6 + 10);
      conn.write(start);
      await settle();
      const exited = guard.terminate();
      // The client-bound direction is at a frame boundary: the client's close comes at once.
      const close = await conn.readFrame();
      expect(close).toMatchObject({ opcode: Op.CLOSE, closeCode: 1001 });
      await new Promise((r) => setTimeout(r, 300));
      expect(guard.child.exitCode).toBeNull();
      conn.write(rest);
      conn.socket.end(frame({ opcode: Op.CLOSE, payload: closePayload(1001) }));
      expect(await exited).toBe(0);
      const events = await upstream.seen(tag);
      // The whole frame went through, then the guard's close: nothing was cut or made up.
      expect(events.find((e) => e.type === 'ws_text')).toMatchObject({ len: 100 });
      expect(await disconnects(tag, 1)).toEqual([1001]);
      expect(auditLines(guard)).toHaveLength(1);
    } finally {
      conn.destroy();
      if (guard.child.exitCode === null) guard.child.kill('SIGKILL');
    }
  });

  it('a frame that never completes is cut by timeouts.close, not earlier, and still gets its audit line', async () => {
    const guard = await startGuard('timeouts: { close: 500ms, drain: 10s }\n');
    const tag = `never-${Date.now()}`;
    const conn = await rawSession(guard.port, tag);
    try {
      conn.write(splitFrame(6 + 10)[0]);
      await settle();
      const signalled = Date.now();
      const exitCode = await guard.terminate();
      const took = Date.now() - signalled;
      expect(exitCode).toBe(0);
      expect(took).toBeGreaterThanOrEqual(450);
      expect(took).toBeLessThan(5000);
      expect(auditLines(guard)).toHaveLength(1);
      // No close frame can follow half a frame: the upstream sees the connection drop (1006).
      expect(await disconnects(tag, 1)).toEqual([1006]);
    } finally {
      conn.destroy();
      if (guard.child.exitCode === null) guard.child.kill('SIGKILL');
    }
  });
});

/**
 * An upstream that answers only when told to: the drain begins while a handshake is being dialled or a
 * plain request waits for its answer. It reports the close code of the close frame it receives.
 */
async function slowUpstream() {
  let answer!: () => void;
  const answered = new Promise<void>((resolve) => (answer = resolve));
  let arrived!: () => void;
  const waiting = new Promise<void>((resolve) => (arrived = resolve));
  let closeCode!: (code: number) => void;
  const closeReceived = new Promise<number>((resolve) => (closeCode = resolve));
  const server = http.createServer((_req, res) => {
    arrived();
    void answered.then(() => res.end('answered late'));
  });
  server.on('upgrade', (req: http.IncomingMessage, socket: net.Socket) => {
    arrived();
    void answered.then(() => {
      const accept = acceptFor(String(req.headers['sec-websocket-key']));
      socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
    });
    let got = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      got = Buffer.concat([got, chunk]);
      // A masked close frame with a code: 0x88, 0x80 | length, 4 key bytes, then the code masked.
      if (got.length < 8 || got[0] !== 0x88) return;
      closeCode(((got[6]! ^ got[2]!) << 8) | (got[7]! ^ got[3]!));
      socket.end(Buffer.from([0x88, 0x02, 0x03, 0xe9]));
    });
    socket.on('error', () => socket.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    waiting,
    answer,
    closeReceived,
    close: () => {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

describe('drain with work in flight', () => {
  it('a session whose dial was in flight when the drain began is closed with 1001 on both sides, and waited for', async () => {
    const slow = await slowUpstream();
    const g = await startTestGuard({ upstream: slow.url, timeouts: { drain: '10s' } });
    try {
      const opening = open(`${g.wsUrl}/late`);
      await slow.waiting;
      const draining = g.guard.drain();
      slow.answer();
      const ws = await opening;
      expect(await closed(ws)).toMatchObject({ code: 1001 });
      expect(await slow.closeReceived).toBe(1001);
      await draining;
      expect(g.logs.filter((l) => l.msg === 'connection closed')).toMatchObject([{ closeCode: 1001, closedBy: 'guard' }]);
    } finally {
      await g.close();
      await slow.close();
    }
  });

  it('a plain request in flight gets its answer, and its keep-alive connection does not hold the drain', async () => {
    const slow = await slowUpstream();
    const g = await startTestGuard({ upstream: slow.url, timeouts: { drain: '10s' } });
    try {
      const agent = new http.Agent({ keepAlive: true });
      const response = new Promise<{ status: number; body: string }>((resolve, reject) => {
        http.get(`${g.httpUrl}/slow`, { agent }, (res) => {
          let body = '';
          res.on('data', (d: Buffer) => (body += d.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        }).on('error', reject);
      });
      await slow.waiting;
      const started = Date.now();
      const draining = g.guard.drain();
      setTimeout(() => slow.answer(), 200);
      expect(await response).toEqual({ status: 200, body: 'answered late' });
      await draining;
      // Well under the 5 s a kept-alive connection would otherwise be given (keepAliveTimeout).
      expect(Date.now() - started).toBeLessThan(2000);
      agent.destroy();
    } finally {
      await g.close();
      await slow.close();
    }
  });
});
