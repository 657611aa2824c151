import { spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import { fileURLToPath } from 'node:url';

/** Debian's interpreter: the `python3` on PATH lacks fastapi/uvicorn/websockets. */
export const PYTHON = '/usr/bin/python3';

const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
const UPSTREAM_PY = fileURLToPath(new URL('../fixtures/upstream.py', import.meta.url));
const PYCLIENT_PY = fileURLToPath(new URL('../fixtures/pyclient.py', import.meta.url));

const STARTUP_TIMEOUT_MS = 20_000;
const STOP_GRACE_MS = 3_000;
// pyclient bounds itself (PYCLIENT_TIMEOUT, 15 s); this is only the backstop
// for a wedged interpreter, kept below vitest's 30 s test timeout.
const PYCLIENT_HARD_TIMEOUT_MS = 25_000;
// Enough to explain a crash; bounded so a chatty upstream can't grow memory.
const MAX_STDERR_CHARS = 64 * 1024;

export interface Upstream {
  port: number;
  /** http://127.0.0.1:port */
  url: string;
  pid: number;
  /** Events the upstream recorded for requests carrying `?tag=<tag>`. */
  seen(tag: string): Promise<any[]>;
  /** SIGTERM, wait for exit, SIGKILL if still alive after 3 s. Idempotent. */
  stop(): Promise<void>;
  /** SIGKILL immediately, for "upstream dies" tests. */
  kill(): void;
  /** Everything the upstream wrote to stderr so far (uvicorn errors land here). */
  stderr(): string;
}

export async function startUpstream(): Promise<Upstream> {
  // --exit-on-stdin-eof: if this worker dies without calling stop(), the
  // closed stdin pipe makes the upstream exit instead of leaking.
  const child = spawn(PYTHON, [UPSTREAM_PY, '--exit-on-stdin-eof'], {
    cwd: REPO_ROOT,
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, PYTHONUNBUFFERED: '1' },
  });

  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk: string) => {
    stderr = (stderr + chunk).slice(-MAX_STDERR_CHARS);
  });

  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });

  const port = await waitForListening(child, () => stderr);
  const pid = child.pid;
  if (pid === undefined) throw new Error('upstream spawned without a pid');
  const url = `http://127.0.0.1:${port}`;

  const isAlive = (): boolean => child.exitCode === null && child.signalCode === null;

  return {
    port,
    url,
    pid,
    seen: async (tag: string) => {
      const body = await httpGetText(`${url}/_seen?tag=${encodeURIComponent(tag)}`);
      return JSON.parse(body) as any[];
    },
    stop: async () => {
      if (isAlive()) signalPid(pid, 'SIGTERM');
      const timer = setTimeout(() => {
        if (isAlive()) signalPid(pid, 'SIGKILL');
      }, STOP_GRACE_MS);
      await exited;
      clearTimeout(timer);
    },
    kill: () => {
      if (isAlive()) signalPid(pid, 'SIGKILL');
    },
    stderr: () => stderr,
  };
}

function signalPid(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch (err) {
    // ESRCH: it exited between our liveness check and the signal.
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

function waitForListening(child: ChildProcess, stderr: () => string): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    let stdout = '';
    const fail = (why: string): void => {
      cleanup();
      // Never leave a half-started upstream behind a rejected promise.
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      reject(new Error(`upstream.py ${why}\n--- stderr ---\n${stderr()}`));
    };
    const onData = (chunk: string): void => {
      stdout += chunk;
      const m = /^LISTENING (\d+)$/m.exec(stdout);
      if (m?.[1] !== undefined) {
        cleanup();
        resolve(Number(m[1]));
      }
    };
    const onExit = (code: number | null, signal: NodeJS.Signals | null): void => {
      // stderr may still be in flight when 'exit' fires; 'close' comes after
      // all stdio has drained, so wait for it to report the real error.
      child.once('close', () => fail(`exited before LISTENING (code ${code}, signal ${signal})`));
    };
    const onError = (err: Error): void => fail(`failed to spawn: ${err.message}`);
    const timer = setTimeout(() => fail(`did not print LISTENING within ${STARTUP_TIMEOUT_MS} ms`), STARTUP_TIMEOUT_MS);
    const cleanup = (): void => {
      clearTimeout(timer);
      child.stdout?.off('data', onData);
      child.off('exit', onExit);
      child.off('error', onError);
      // Keep draining stdout so the child can never block on a full pipe.
      child.stdout?.resume();
    };
    child.stdout?.setEncoding('utf8');
    child.stdout?.on('data', onData);
    child.once('exit', onExit);
    child.once('error', onError);
  });
}

function httpGetText(url: string): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    // agent:false so no pooled keep-alive socket lingers as an extra upstream
    // connection between tests.
    const req = http.get(url, { agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => {
        if (res.statusCode === 200) resolve(body);
        else reject(new Error(`GET ${url} -> ${res.statusCode}: ${body}`));
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error(`GET ${url} timed out`)));
  });
}

/**
 * Runs test/fixtures/pyclient.py and resolves with its JSON result, including
 * `{ ok: false, ... }` results (exit 1). Rejects only when the script produced
 * no JSON at all, because a crashed harness must not pass as an expected
 * failure.
 */
export function runPyClient(url: string, scenario: string, ...args: string[]): Promise<any> {
  return new Promise<any>((resolve, reject) => {
    const child = spawn(PYTHON, [PYCLIENT_PY, url, scenario, ...args], {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (c: string) => (stdout += c));
    child.stderr.on('data', (c: string) => {
      stderr = (stderr + c).slice(-MAX_STDERR_CHARS);
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), PYCLIENT_HARD_TIMEOUT_MS);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`pyclient.py failed to spawn: ${err.message}`));
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      const line = stdout.trim().split('\n').pop() ?? '';
      try {
        resolve(JSON.parse(line));
      } catch {
        reject(
          new Error(
            `pyclient.py ${scenario} produced no JSON (code ${code}, signal ${signal})\n` +
              `--- stdout ---\n${stdout}\n--- stderr ---\n${stderr}`,
          ),
        );
      }
    });
  });
}
