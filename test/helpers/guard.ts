import { afterAll, beforeAll } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { MemoryStore } from '../../src/limits/memory-store.js';
import { GuardEvents } from '../../src/events.js';
import { attachLogger } from '../../src/ops/audit-log.js';
import { localOperator, startAdmin } from '../../src/ops/admin.js';
import { createLogger } from '../../src/ops/logger.js';
import { createMetrics, metricsSource } from '../../src/ops/metrics.js';
import { startGuard, type Guard } from '../../src/server/guard.js';

export interface TestGuard {
  guard: Guard;
  /** The guard's connection counts and rates. */
  store: MemoryStore;
  port: number;
  /** ws://127.0.0.1:port */
  wsUrl: string;
  /** http://127.0.0.1:port */
  httpUrl: string;
  /** http://127.0.0.1:port of the admin listener, when the config has `admin`. */
  adminUrl: string | undefined;
  /** Every log line the guard wrote, parsed. */
  logs: Record<string, unknown>[];
  close(): Promise<void>;
}

/**
 * One guard for the tests of a describe block: started before them with the config `config()` gives then
 * (values such as an upstream's URL are known only once the file's own setup has run), closed after them.
 */
export function guardPerSuite(config: () => Record<string, unknown>): () => TestGuard {
  let guard: TestGuard | undefined;
  beforeAll(async () => {
    guard = await startTestGuard(config());
  });
  afterAll(async () => {
    await guard?.close();
  });
  return () => guard!;
}

/** Starts a guard in this process on 127.0.0.1 with a port of its own, logging at debug into `logs`. */
export async function startTestGuard(config: Record<string, unknown>): Promise<TestGuard> {
  const logs: Record<string, unknown>[] = [];
  const logger = createLogger('debug', { write: (line: string) => void logs.push(JSON.parse(line)) });
  const store = new MemoryStore();
  const events = new GuardEvents();
  attachLogger(events, logger);
  const parsed = parseConfig({ listen: '127.0.0.1:0', ...config }, {});
  let started: Guard | undefined;
  const metrics = parsed.admin && createMetrics(parsed, events, () => started);
  const guard = await startGuard(parsed, { events, store });
  started = guard;
  const admin = metrics && (await startAdmin(parsed, { draining: () => guard.draining, metrics: metricsSource(metrics), operator: localOperator(guard) }));
  return {
    guard,
    store,
    port: guard.port,
    wsUrl: `ws://127.0.0.1:${guard.port}`,
    httpUrl: `http://127.0.0.1:${guard.port}`,
    logs,
    adminUrl: admin && `http://127.0.0.1:${admin.port}`,
    close: async () => {
      await guard.close();
      await admin?.close();
      store.close();
    },
  };
}

/** Resolves once `check` holds, polling; rejects after `ms`. */
export async function until(check: () => boolean | Promise<boolean>, ms = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
