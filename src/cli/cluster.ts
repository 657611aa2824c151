import cluster, { type Worker } from 'node:cluster';
import { availableParallelism } from 'node:os';
import { AggregatorRegistry, type Registry } from 'prom-client';
import type { GuardConfig } from '../config/schema.js';
import { serveLimits } from '../limits/ipc-store.js';
import { MemoryStore } from '../limits/memory-store.js';
import { startAdmin } from '../ops/admin.js';
import type { Logger } from '../ops/logger.js';

/** How long a scrape waits for each worker: well inside Prometheus' default scrape timeout (10 s). */
const METRICS_TIMEOUT_MS = 2000;

/** Primary → worker: send your metrics; worker → primary: here they are (prom-client's JSON form). */
interface MetricsRequest {
  wsGuardMetrics: number;
}
interface MetricsReply {
  wsGuardMetrics: number;
  metrics?: object[];
  error?: string;
}

function has<K extends string>(message: unknown, key: K): message is Record<K, unknown> {
  return typeof message === 'object' && message !== null && key in message;
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

let lastMetricsRequest = 0;

/** One worker's metrics, or a rejection naming the worker when it fails or does not answer in time. */
function workerMetrics(worker: Worker): Promise<object[]> {
  const id = ++lastMetricsRequest;
  const pid = worker.process.pid;
  return new Promise((resolve, reject) => {
    const done = () => {
      clearTimeout(timer);
      worker.off('message', onMessage);
    };
    const fail = (why: string) => {
      done();
      reject(new Error(`worker ${pid} ${why}`));
    };
    const timer = setTimeout(() => fail(`did not answer within ${METRICS_TIMEOUT_MS} ms`), METRICS_TIMEOUT_MS);
    const onMessage = (message: unknown) => {
      if (!has(message, 'wsGuardMetrics') || message.wsGuardMetrics !== id) return;
      const reply = message as unknown as MetricsReply;
      if (reply.metrics === undefined) return fail(`failed: ${reply.error ?? 'no metrics'}`);
      done();
      resolve(reply.metrics);
    };
    worker.on('message', onMessage);
    worker.send({ wsGuardMetrics: id } satisfies MetricsRequest, undefined, (err) => {
      if (err) fail(`unreachable: ${err.message}`);
    });
  });
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
 * The primary of `workers: N`: forks the workers (which share the listening port through node:cluster),
 * counts connection slots and handshakes for all of them, serves the admin listener with their metrics
 * summed, forwards SIGHUP, and on SIGTERM/SIGINT lets every worker drain, then exits 0.
 */
export async function runPrimary(config: GuardConfig, logger: Logger): Promise<void> {
  const store = new MemoryStore();
  const count = workerCount(config);
  let stopping = false;
  cluster.on('fork', (worker: Worker) => serveLimits(worker, store));
  cluster.on('exit', (worker, code, signal) => {
    if (stopping) {
      if (Object.keys(cluster.workers ?? {}).length === 0) process.exit(0);
      return;
    }
    // A worker that dies is replaced; its slots were given back when it exited.
    logger.error({ worker: worker.process.pid, code, signal }, 'worker exited; starting another');
    cluster.fork();
  });
  for (let i = 0; i < count; i++) cluster.fork();
  logger.info({ workers: count }, 'ws-guard primary started');

  const admin = config.admin
    ? await startAdmin(config, {
        draining: () => stopping,
        metrics: () => groupMetrics(Object.values(cluster.workers ?? {}).filter((worker) => worker !== undefined)),
      }, logger)
    : undefined;

  const stop = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'stopping: every worker drains');
    for (const worker of Object.values(cluster.workers ?? {})) worker?.process.kill('SIGTERM');
    void admin?.close();
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  process.on('SIGHUP', () => {
    for (const worker of Object.values(cluster.workers ?? {})) worker?.process.kill('SIGHUP');
  });
}
