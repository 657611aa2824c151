import { spawn, type ChildProcess } from 'node:child_process';
import { Redis } from 'ioredis';
import { accepts, sleep } from './fuzz.js';
import { freePort } from './clients.js';

/** Debian's redis-server (scripts/system-deps.sh installs it). */
export const REDIS_SERVER = '/usr/bin/redis-server';

export interface RedisServer {
  port: number;
  /** redis://127.0.0.1:port/0 */
  url: string;
  pid(): number | undefined;
  /** A client for checking what the store wrote (closed by stop()). */
  client: Redis;
  /** SIGKILL, wait for the exit: Redis is gone, with everything it held (nothing is saved to disk). */
  kill(): Promise<void>;
  /** Starts it again on the same port, empty. */
  restart(): Promise<void>;
  /** SIGSTOP / SIGCONT: Redis stops answering without closing any connection (a hung server). */
  pause(): void;
  resume(): void;
  stop(): Promise<void>;
}

/** Every redis-server started here: none may outlive the test process. */
const servers = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of servers) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
});

/**
 * Starts redis-server on 127.0.0.1:port with no persistence and waits until it accepts connections.
 * `args` come first: a config file for a sentinel, or cluster settings.
 */
export async function launch(port: number, args: string[] = [], cwd?: string): Promise<ChildProcess> {
  // The exit hook above ends it if the test process goes away without stop().
  const child = spawn(REDIS_SERVER, [...args, '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: ['ignore', 'ignore', 'pipe'],
    cwd,
  });
  servers.add(child);
  child.once('exit', () => servers.delete(child));
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => (stderr = (stderr + d).slice(-8192)));
  const deadline = Date.now() + 10_000;
  while (!(await accepts(port))) {
    if (child.exitCode !== null) throw new Error(`redis-server exited (${child.exitCode}): ${stderr}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`redis-server did not listen on ${port} within 10 s: ${stderr}`);
    }
    await sleep(20);
  }
  return child;
}

export function ended(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
}

/** Starts Debian's redis-server on 127.0.0.1 at a free port. */
export async function startRedis(): Promise<RedisServer> {
  const port = await freePort();
  let child = await launch(port);
  const client = new Redis({ port, host: '127.0.0.1', lazyConnect: false, maxRetriesPerRequest: 1, retryStrategy: () => 100 });
  client.on('error', () => {});
  const kill = async () => {
    child.kill('SIGCONT');
    child.kill('SIGKILL');
    await ended(child);
  };
  return {
    port,
    url: `redis://127.0.0.1:${port}/0`,
    pid: () => child.pid,
    client,
    kill,
    restart: async () => {
      await kill();
      child = await launch(port);
    },
    pause: () => child.kill('SIGSTOP'),
    resume: () => child.kill('SIGCONT'),
    stop: async () => {
      client.disconnect();
      await kill();
    },
  };
}

/**
 * The connection slots Redis counts for one counter, summed over the replicas whose lease is live (what
 * the store's scripts count), e.g. `t:0:` for the process-wide total.
 */
export async function storedSlots(redis: Redis, counter: string, prefix = 'ws-guard:'): Promise<number> {
  const [seconds, micros] = await redis.time();
  const now = Number(seconds) * 1000 + Math.floor(Number(micros) / 1000);
  const fields = await redis.hgetall(`${prefix}{slots}:c:${counter}`);
  let sum = 0;
  for (const [replica, count] of Object.entries(fields)) {
    const lease = await redis.zscore(`${prefix}{slots}:replicas`, replica);
    if (lease !== null && Number(lease) >= now) sum += Number(count);
  }
  return sum;
}
