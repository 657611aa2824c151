import { SignJWT } from 'jose';
import { afterAll, afterEach, beforeAll } from 'vitest';
import type WebSocket from 'ws';
import { freePort } from './clients.js';
import { removeSnapshot, spawnGuard, until, type GuardProc } from './fuzz.js';
import { startRedis, type RedisServer } from './redis.js';
import { startUpstream, type Upstream } from './upstream.js';

/** The two ports of a replica: its proxy listener and its admin listener. */
export interface Ports {
  port: number;
  adminPort: number;
}

/** The YAML lines of a replica after its `listen:` line (which the fixture writes, having chosen the port). */
export type LinesFor = (ports: Ports) => string[];

/** A replica's configuration file: `listen:` on `ports.port`, then `lines`. */
export function replicaYaml(ports: Ports, lines: string[]): string {
  return [`listen: 127.0.0.1:${ports.port}`, ...lines, ''].join('\n');
}

/** An HS256 token for user `sub`, signed with `secret`. */
export function jwt(sub: string, secret: string, expiresIn = '2m'): Promise<string> {
  return new SignJWT({ sub }).setProtectedHeader({ alg: 'HS256' }).setExpirationTime(expiresIn).sign(new TextEncoder().encode(secret));
}

/** The `auth:` line that accepts the tokens `jwt` mints with `secret`. */
export const jwtAuthLine = (secret: string) => `auth: { jwt: { secret: "${secret}", algorithms: [HS256] } }`;

/** The close code the upstream saw for the connection tagged `tag` (waits up to 5 s for it). */
export async function upstreamClose(upstream: Upstream, tag: string): Promise<number> {
  let code: number | undefined;
  await until(async () => {
    code = (await upstream.seen(tag)).find((e: { type: string }) => e.type === 'ws_disconnect')?.code;
    return code !== undefined;
  }, 5000, `the upstream to see ${tag} end`);
  return code!;
}

export interface ReplicaFixture {
  /** The FastAPI upstream, started once for the file. */
  readonly upstream: Upstream;
  /** The Redis shared by the file's tests (only with `redis: true`), emptied after each test. */
  readonly redis: RedisServer;
  /** The sockets tracked in the current test, oldest first. */
  readonly sockets: readonly WebSocket[];
  /** Terminates `ws` after the test. */
  track(ws: WebSocket): WebSocket;
  /** Runs `stop` after the test, once its sockets and replicas are gone. */
  afterThisTest(stop: () => Promise<unknown>): void;
  /** One replica, on `ports` or on free ones; stopped after the test. */
  spawnReplica(linesFor: LinesFor, ports?: Ports): Promise<GuardProc>;
  /** `n` replicas started in parallel, each on free ports; `each` runs on each replica once it listens. */
  spawnReplicas(n: number, linesFor: LinesFor): Promise<GuardProc[]>;
  spawnReplicas<T>(n: number, linesFor: LinesFor, each: (guard: GuardProc) => Promise<T>): Promise<T[]>;
}

/**
 * Replicas of ws-guard as child processes (spawnGuard) against the FastAPI upstream and, with `redis`, one
 * redis-server for the whole file. Registers the hooks: after each test its sockets are terminated, its
 * replicas stopped, then whatever it passed to afterThisTest, then the shared Redis is flushed.
 */
export function replicaFixture(options: { redis?: boolean } = {}): ReplicaFixture {
  const shared = options.redis ?? true;
  let upstream: Upstream | undefined;
  let redis: RedisServer | undefined;
  const sockets: WebSocket[] = [];
  const running: GuardProc[] = [];
  const stops: (() => Promise<unknown>)[] = [];

  beforeAll(async () => {
    if (shared) [upstream, redis] = await Promise.all([startUpstream(), startRedis()]);
    else upstream = await startUpstream();
  });
  afterEach(async () => {
    for (const ws of sockets.splice(0)) ws.terminate();
    await Promise.all(running.splice(0).map((g) => g.stop()));
    await Promise.all(stops.splice(0).map((stop) => stop()));
    await redis?.client.flushall();
  });
  afterAll(async () => {
    await Promise.all([upstream?.stop(), redis?.stop()]);
    removeSnapshot();
  });

  async function spawnReplica(linesFor: LinesFor, ports?: Ports): Promise<GuardProc> {
    const chosen = ports ?? { port: await freePort(), adminPort: await freePort() };
    const guard = await spawnGuard(replicaYaml(chosen, linesFor(chosen)), {}, chosen);
    running.push(guard);
    return guard;
  }

  function spawnReplicas(n: number, linesFor: LinesFor): Promise<GuardProc[]>;
  function spawnReplicas<T>(n: number, linesFor: LinesFor, each: (guard: GuardProc) => Promise<T>): Promise<T[]>;
  function spawnReplicas(n: number, linesFor: LinesFor, each?: (guard: GuardProc) => Promise<unknown>): Promise<unknown[]> {
    return Promise.all(Array.from({ length: n }, async () => {
      const guard = await spawnReplica(linesFor);
      return each === undefined ? guard : each(guard);
    }));
  }

  return {
    get upstream() {
      if (upstream === undefined) throw new Error('the upstream is started in beforeAll');
      return upstream;
    },
    get redis() {
      if (redis === undefined) throw new Error(shared ? 'Redis is started in beforeAll' : 'this fixture has no shared Redis (redis: false)');
      return redis;
    },
    sockets,
    track: (ws) => {
      sockets.push(ws);
      return ws;
    },
    afterThisTest: (stop) => {
      stops.push(stop);
    },
    spawnReplica,
    spawnReplicas,
  };
}
