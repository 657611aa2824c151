import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from './helpers/clients.js';
import { until } from './helpers/guard.js';
import { Op, frame, rawConnect, upgradeRequest, type RawConn } from './helpers/raw.js';
import { startUpstream, type Upstream } from './helpers/upstream.js';

/**
 * A hostile crowd must not grow the guard's memory: 200 clients that never read while the upstream pushes
 * 8 MiB at each, and 200 clients streaming 1-byte fragments of a message that never ends. The guard is a
 * real process; its RSS is read from /proc.
 *
 * Ceiling: 256 MiB of RSS for the whole process. Measured here (2 cores, Node 20): about 75 MiB after
 * start, a peak of 141 MiB during this test (socket buffers at their high-water marks, 64 KiB read
 * buffers awaiting GC). A design that buffered what it cannot deliver would need over 1.6 GiB (200 × 8 MiB
 * pushed), so the ceiling leaves room for a slower machine's GC timing and still catches that.
 */
const CEILING_KIB = 256 * 1024;
const CLIENTS = 200;

const bin = fileURLToPath(new URL('../bin/ws-guard.js', import.meta.url));
let upstream: Upstream;
let dir: string;

beforeAll(async () => {
  upstream = await startUpstream();
  dir = mkdtempSync(join(tmpdir(), 'ws-guard-memory-'));
});
afterAll(async () => {
  await upstream?.stop();
  rmSync(dir, { recursive: true, force: true });
});

function rssKiB(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
}

describe('memory under a hostile crowd', () => {
  it(`stays under ${CEILING_KIB / 1024} MiB with ${CLIENTS} non-reading clients and ${CLIENTS} fragment floods`, async () => {
    const port = await freePort();
    const file = join(dir, 'guard.yaml');
    writeFileSync(file, `listen: 127.0.0.1:${port}\nupstream: ${upstream.url}\nlimits: { messageSize: 1MiB, maxFragments: 100000 }\n`);
    const child = spawn(process.execPath, [bin, '--config', file], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    const conns: RawConn[] = [];
    let peak = 0;
    const sample = setInterval(() => (peak = Math.max(peak, rssKiB(child.pid!))), 100);
    try {
      await until(() => out.includes('ws-guard listening'), 10_000, 'the guard to listen');

      for (let i = 0; i < CLIENTS; i++) {
        const conn = await rawConnect(port);
        conns.push(conn);
        conn.write(upgradeRequest(`/ws/push?bytes=${8 * 1024 * 1024}&size=65536`));
        await conn.readHttpResponse();
        conn.socket.pause();
      }

      const tiny = frame({ opcode: Op.CONTINUATION, fin: false, payload: 'x' });
      const flood = Buffer.concat(Array.from({ length: 1000 }, () => tiny));
      const floods = [];
      for (let i = 0; i < CLIENTS; i++) {
        const conn = await rawConnect(port);
        conns.push(conn);
        conn.write(upgradeRequest('/ws/echo'));
        await conn.readHttpResponse();
        conn.write(frame({ opcode: Op.TEXT, fin: false, payload: 'x' }));
        floods.push((async () => {
          for (let k = 0; k < 20 && !conn.closed; k++) {
            if (!conn.socket.write(flood)) await new Promise((r) => conn.socket.once('drain', r));
          }
        })());
      }
      await Promise.all(floods);
      await new Promise((r) => setTimeout(r, 1000));
      peak = Math.max(peak, rssKiB(child.pid!));
      expect(child.exitCode).toBeNull();
      process.stderr.write(`memory test: guard RSS peak ${Math.round(peak / 1024)} MiB (ceiling ${CEILING_KIB / 1024} MiB)\n`);
      expect(peak).toBeLessThan(CEILING_KIB);
    } finally {
      clearInterval(sample);
      for (const conn of conns) conn.destroy();
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    }
  }, 120_000);
});
