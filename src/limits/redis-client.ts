import { Cluster, Redis, type RedisOptions } from 'ioredis';
import type { StoreConfig } from '../config/schema.js';
import { ACQUIRE, LEASE, RECONCILE, RELEASE, RENEW, RESIGN, TAKE_ONE } from './redis-scripts.js';

const SCRIPTS = { wsgAcquire: ACQUIRE, wsgRelease: RELEASE, wsgRenew: RENEW, wsgReconcile: RECONCILE, wsgResign: RESIGN, wsgTakeOne: TAKE_ONE, wsgLease: LEASE };
export type ScriptName = keyof typeof SCRIPTS;

export type RedisConnection = Redis | Cluster;

/** Reconnect attempts back off to this; the store probes on its own schedule meanwhile. */
const MAX_RECONNECT_DELAY_MS = 1000;

/**
 * A connection to the configured Redis (one URL, Sentinel or Cluster). Commands fail at once while it is
 * disconnected and after `timeout`, and are never resent after a reconnect: the store decides what a failed
 * call means (onError), and a resent slot request could take a slot nobody holds.
 */
export function connectRedis(config: StoreConfig, purpose: 'limits' | 'subscriber' | 'publisher'): RedisConnection {
  const { redis } = config;
  const common: RedisOptions = {
    connectionName: `ws-guard-${purpose}`,
    connectTimeout: Math.max(config.timeout, 1000),
    // A subscriber waits for its connection; every other call is answered now, by Redis or by onError.
    enableOfflineQueue: purpose === 'subscriber',
    autoResendUnfulfilledCommands: false,
    maxRetriesPerRequest: 0,
    retryStrategy: (attempt) => Math.min(attempt * 100, MAX_RECONNECT_DELAY_MS),
    ...(purpose === 'subscriber' ? {} : { commandTimeout: config.timeout }),
  };
  let client: RedisConnection;
  if (redis instanceof URL) {
    client = new Redis(redis.href, { ...common, ...(redis.protocol === 'rediss:' ? { tls: {} } : {}) });
  } else if ('cluster' in redis) {
    const { cluster, username, password, tls } = redis;
    client = new Cluster(cluster, {
      enableOfflineQueue: common.enableOfflineQueue,
      clusterRetryStrategy: (attempt) => Math.min(attempt * 100, MAX_RECONNECT_DELAY_MS),
      redisOptions: { ...common, username, password, ...(tls ? { tls: {} } : {}) },
    });
  } else {
    const { sentinels, name, db, username, password, sentinelPassword, tls } = redis;
    client = new Redis({
      ...common, sentinels, name, db, username, password, sentinelPassword,
      ...(tls ? { tls: {}, enableTLSForSentinelMode: true, sentinelTLS: {} } : {}),
    });
  }
  for (const [name, lua] of Object.entries(SCRIPTS)) client.defineCommand(name, { lua });
  return client;
}

/** Runs one of the store's scripts (EVALSHA, loading it on NOSCRIPT). */
export function runScript(client: RedisConnection, name: ScriptName, keys: readonly string[], args: readonly (string | number)[]): Promise<unknown> {
  const command = (client as unknown as Record<ScriptName, (...a: unknown[]) => Promise<unknown>>)[name];
  return command.call(client, keys.length, ...keys, ...args);
}
