import cluster, { type Worker } from 'node:cluster';
import { availableParallelism } from 'node:os';
import { AggregatorRegistry, type Registry } from 'prom-client';
import type { GuardConfig } from '../config/schema.js';
import { serveLimits } from '../limits/ipc-store.js';
import { MemoryStore } from '../limits/memory-store.js';
import { resignReplica } from '../limits/redis-store.js';
import { startAdmin, type Admin, type Operator } from '../ops/admin.js';
import { broadcastOperator, channelName, OperatorChannel } from '../ops/operator-channel.js';
import type { ConnectionInfo, ConnectionSelector } from '../server/guard.js';
import type { Logger } from '../ops/logger.js';
import { startedThroughNpm, watchParent } from './parent.js';
import { ListenError } from '../server/listen.js';

/**
 * A worker that crashes after it was serving is replaced, up to this many times within the window; one
 * more crash in it is a crash loop, which restarting does not cure: the group stops, exit 1.
 */
const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 60_000;
/** How long a scrape waits for each worker: well inside Prometheus' default scrape timeout (10 s). */
const METRICS_TIMEOUT_MS = 2000;

/** Worker → primary: the worker could not start, and this line says why. */
interface StartupFailure {
  wsGuardStartup: string;
}
/** Primary → worker: send your metrics; worker → primary: here they are (prom-client's JSON form). */
interface MetricsRequest {
  wsGuardMetrics: number;
}
interface MetricsReply {
  wsGuardMetrics: number;
  metrics?: object[];
  error?: string;
}

/**
 * Session ids of worker N start at N × this, so an id names one connection in the whole group (worker 2's
 * fifth connection is 2000000005).
 */
export const WORKER_ID_RANGE = 1_000_000_000;
/** How long the admin listener waits for each worker to list or close its connections. */
const OPERATOR_TIMEOUT_MS = 2000;

/** Primary → worker: list or close your connections; worker → primary: the answer. */
type OperatorOp = { op: 'list' } | { op: 'close'; selector: ConnectionSelector; banMs: number | undefined };
type OperatorRequest = { wsGuardOperator: number } & OperatorOp;
interface OperatorReply {
  wsGuardOperator: number;
  connections?: ConnectionInfo[];
  closed?: number;
  error?: string;
}

function has<K extends string>(message: unknown, key: K): message is Record<K, unknown> {
  return typeof message === 'object' && message !== null && key in message;
}

/**
 * Ends a process that could not start: one line on stderr, exit code 1. A worker hands its line to the
 * primary, which prints it once for the whole group.
 */
export function exitOnStartupFailure(message: string): void {
  if (cluster.isWorker && process.connected) {
    process.send!({ wsGuardStartup: message } satisfies StartupFailure, undefined, {}, () => process.exit(1));
    return;
  }
  process.stderr.write(`ws-guard: ${message}\n`);
  process.exit(1);
}

/** In a worker: answers the primary's metrics requests from this worker's registry. */
export function answerMetrics(registry: Registry): void {
  process.on('message', (message: unknown) => {
    if (!has(message, 'wsGuardMetrics') || typeof message.wsGuardMetrics !== 'number') return;
    const id = message.wsGuardMetrics;
    const reply = (answer: Omit<MetricsReply, 'wsGuardMetrics'>) => {
      // A primary that went away meanwhile reads no answer; that is no error of this worker's.
      if (process.connected) process.send!({ wsGuardMetrics: id, ...answer } satisfies MetricsReply, undefined, {}, () => {});
    };
    registry.getMetricsAsJSON().then(
      (metrics) => reply({ metrics }),
      (err: unknown) => reply({ error: err instanceof Error ? err.message : String(err) }),
    );
  });
}

/** In a worker: answers the primary's operator requests (admin /connections) from this worker's guard. */
export function answerOperator(operator: Operator): void {
  process.on('message', (message: unknown) => {
    if (!has(message, 'wsGuardOperator') || typeof message.wsGuardOperator !== 'number') return;
    const request = message as unknown as OperatorRequest;
    const reply = (answer: Omit<OperatorReply, 'wsGuardOperator'>) => {
      if (process.connected) process.send!({ wsGuardOperator: request.wsGuardOperator, ...answer } satisfies OperatorReply, undefined, {}, () => {});
    };
    const work = request.op === 'list'
      ? operator.connections().then((connections) => ({ connections }))
      : operator.close(request.selector, request.banMs).then(({ closed }) => ({ closed }));
    work.then(reply, (err: unknown) => reply({ error: err instanceof Error ? err.message : String(err) }));
  });
}

let lastOperatorRequest = 0;

/**
 * Sends `request` to a worker and resolves with its reply: the message whose `key` carries the request's
 * id. Rejects naming the worker when the reply holds an `error`, the worker cannot be reached, or it does
 * not answer within `timeoutMs`.
 */
function askWorker<K extends string, R extends { error?: string | undefined }>(
  worker: Worker, key: K, request: Record<K, number>, timeoutMs: number,
): Promise<R> {
  const pid = worker.process.pid;
  const id = request[key];
  return new Promise((resolve, reject) => {
    const done = () => {
      clearTimeout(timer);
      worker.off('message', onMessage);
    };
    const fail = (why: string) => {
      done();
      reject(new Error(`worker ${pid} ${why}`));
    };
    const timer = setTimeout(() => fail(`did not answer within ${timeoutMs} ms`), timeoutMs);
    const onMessage = (message: unknown) => {
      if (!has(message, key) || message[key] !== id) return;
      const reply = message as unknown as R;
      if (reply.error !== undefined) return fail(`failed: ${reply.error}`);
      done();
      resolve(reply);
    };
    worker.on('message', onMessage);
    worker.send(request, undefined, (err) => {
      if (err) fail(`unreachable: ${err.message}`);
    });
  });
}

/**
 * The kill switch of the group: a listing gathers every serving worker's connections, a close (and its
 * ban) goes to every one of them and counts what they closed. A worker that does not answer in time fails
 * the request (503 naming it); the others have acted meanwhile, so a retry is safe and closes the rest.
 */
function groupOperator(workers: () => Worker[]): Operator {
  const ask = async (request: OperatorOp) => {
    const serving = workers();
    if (serving.length === 0) throw new Error('no worker is serving');
    const wsGuardOperator = ++lastOperatorRequest;
    return Promise.all(serving.map((w) => askWorker<'wsGuardOperator', OperatorReply>(w, 'wsGuardOperator', { ...request, wsGuardOperator }, OPERATOR_TIMEOUT_MS)));
  };
  return {
    connections: async () => (await ask({ op: 'list' })).flatMap((r) => r.connections ?? []),
    close: async (selector, banMs) => ({ closed: (await ask({ op: 'close', selector, banMs })).reduce((n, r) => n + (r.closed ?? 0), 0) }),
  };
}

let lastMetricsRequest = 0;

/** One worker's metrics, or a rejection naming the worker when it fails or does not answer in time. */
async function workerMetrics(worker: Worker): Promise<object[]> {
  const request: MetricsRequest = { wsGuardMetrics: ++lastMetricsRequest };
  const reply = await askWorker<'wsGuardMetrics', MetricsReply>(worker, 'wsGuardMetrics', request, METRICS_TIMEOUT_MS);
  if (reply.metrics === undefined) throw new Error(`worker ${worker.process.pid} failed: no metrics`);
  return reply.metrics;
}

/**
 * The serving workers' metrics summed. All or nothing: a sum with a worker missing would show its
 * counters falling, which Prometheus reads as a reset; a failed scrape is honest and leaves rates intact.
 */
async function groupMetrics(workers: Worker[]): Promise<{ contentType: string; text: string }> {
  if (workers.length === 0) throw new Error('no worker is serving');
  const registry = AggregatorRegistry.aggregate(await Promise.all(workers.map(workerMetrics)));
  return { contentType: registry.contentType, text: await registry.metrics() };
}

export function workerCount(config: GuardConfig): number {
  return config.workers === 'auto' ? availableParallelism() : config.workers;
}

/**
 * The primary of `workers: N`: starts the admin listener, forks the workers (which share the listening
 * port through node:cluster), counts connection slots and handshakes for all of them, serves their
 * metrics summed, forwards SIGHUP, and on SIGTERM/SIGINT lets every worker drain, then exits 0.
 */
export async function runPrimary(config: GuardConfig, logger: Logger): Promise<void> {
  const store = new MemoryStore();
  const count = workerCount(config);
  const live = new Set<Worker>();
  const serving = new Set<Worker>();
  /** When replaced workers crashed, within the last RESTART_WINDOW_MS. */
  const restarts: number[] = [];
  let stopping = false;
  let exitCode = 0;

  // With store.redis the workers count in Redis themselves; the primary only sends operators' orders there.
  const channel = config.store && new OperatorChannel(config.store, channelName(), [], undefined, logger);
  // Up before any worker: a busy admin address ends the start here, with nothing forked.
  let admin: Admin | undefined;
  if (config.admin) {
    try {
      const group = groupOperator(() => [...serving]);
      admin = await startAdmin(config, {
        draining: () => stopping,
        metrics: () => groupMetrics([...serving]),
        operator: channel ? broadcastOperator(group, channel) : group,
        // The primary's own connection to Redis stands for its workers'.
        storeReady: config.store?.onError === 'closed' ? () => channel!.ready : undefined,
      }, logger);
    } catch (err) {
      if (!(err instanceof ListenError)) throw err;
      return exitOnStartupFailure(err.message);
    }
  }

  // The admin listener stays up until the last worker is gone, so /readyz answers 503 through the drain.
  const finish = () => {
    channel?.close();
    void (admin?.close() ?? Promise.resolve()).then(() => logger.flush(() => process.exit(exitCode)));
  };
  const stop = (code: number) => {
    exitCode = Math.max(exitCode, code);
    if (stopping) return;
    stopping = true;
    for (const worker of live) worker.process.kill('SIGTERM');
    if (live.size === 0) finish();
  };

  const exited = (worker: Worker, wasServing: boolean, failure: string | undefined, code: number | null, signal: string | null) => {
    live.delete(worker);
    if (stopping) {
      if (live.size === 0) finish();
      return;
    }
    const pid = worker.process.pid;
    if (!wasServing) {
      // It would fail the same way again: forking it anew is a loop, not a recovery.
      process.stderr.write(`ws-guard: ${failure ?? `worker ${pid} exited before it was listening (${signal ?? `exit code ${code}`})`}\n`);
      stop(1);
      return;
    }
    const now = Date.now();
    while (restarts.length > 0 && now - restarts[0]! > RESTART_WINDOW_MS) restarts.shift();
    if (restarts.length >= MAX_RESTARTS) {
      logger.error({ worker: pid, code, signal, restarts: restarts.length, windowMs: RESTART_WINDOW_MS }, 'workers keep crashing; giving up');
      stop(1);
      return;
    }
    restarts.push(now);
    // Its slots were given back when it exited.
    logger.error({ worker: pid, code, signal }, 'worker exited; starting another');
    fork();
  };

  const fork = () => {
    const worker = cluster.fork();
    live.add(worker);
    if (!config.store) serveLimits(worker, store);
    // A failed fork or IPC write is reported here; unheard, it would throw in the primary and end the group.
    worker.on('error', (err: Error) => logger.error({ err, worker: worker.process.pid }, 'worker error'));
    let failure: string | undefined;
    let replica: string | undefined;
    worker.on('message', (message: unknown) => {
      if (has(message, 'wsGuardStartup') && typeof message.wsGuardStartup === 'string') failure = message.wsGuardStartup;
      if (has(message, 'wsGuardReplica') && typeof message.wsGuardReplica === 'string') replica = message.wsGuardReplica;
    });
    worker.once('listening', () => serving.add(worker));
    worker.once('exit', (code: number | null, signal: string | null) => {
      const wasServing = serving.delete(worker);
      if (channel && replica !== undefined) {
        resignReplica(channel.publisher, config.store!.keyPrefix, replica).catch((err: unknown) => {
          logger.warn({ worker: worker.process.pid, err: err instanceof Error ? err.message : String(err) }, 'could not free the slots of an exited worker; its lease frees them');
        });
      }
      // The line a worker sends just before exiting can arrive after 'exit'; 'disconnect' comes after it.
      const settle = () => exited(worker, wasServing, failure, code, signal);
      if (worker.isConnected()) worker.once('disconnect', settle);
      else settle();
    });
  };
  for (let i = 0; i < count; i++) fork();
  logger.info({ workers: count }, 'ws-guard primary started');

  const onSignal = (signal: NodeJS.Signals | 'parent exited') => {
    logger.info({ signal }, 'stopping: every worker drains');
    stop(0);
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  if (startedThroughNpm()) watchParent(() => onSignal('parent exited'));
  process.on('SIGHUP', () => {
    for (const worker of live) worker.process.kill('SIGHUP');
  });
}
