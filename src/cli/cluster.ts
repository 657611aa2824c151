import cluster, { type Worker } from 'node:cluster';
import { availableParallelism } from 'node:os';
import { AggregatorRegistry } from 'prom-client';
import type { GuardConfig } from '../config/schema.js';
import { serveLimits } from '../limits/ipc-store.js';
import { MemoryStore } from '../limits/memory-store.js';
import { startAdmin } from '../ops/admin.js';
import type { Logger } from '../ops/logger.js';

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

  const aggregator = new AggregatorRegistry();
  const admin = config.admin
    ? await startAdmin(config, {
        draining: () => stopping,
        metrics: async () => ({ contentType: aggregator.contentType, text: await aggregator.clusterMetrics() }),
      })
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
