import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { StoreConfig } from '../config/schema.js';
import type { Rate } from '../config/units.js';
import { GuardError } from '../errors.js';
import type { StoreTransition } from '../events.js';
import { TokenBucket } from './bucket.js';
import { LeaseBucket, type Leased } from './lease-bucket.js';
import { MemoryStore } from './memory-store.js';
import { connectRedis, runScript, type RedisConnection } from './redis-client.js';
import { SlotLedger } from './slot-ledger.js';
import type { LimitStore, SharedBucket, SlotRequest, SlotVerdict } from './store.js';

export type StoreState = StoreTransition['state'];

const KINDS = ['total', 'perIp', 'perUser'] as const;
type Kind = (typeof KINDS)[number];

interface Counter {
  key: string;
  cap: number;
  kind: Kind;
  pool: string;
}

/** The slot keys of one replica (redis-scripts.ts describes them). */
function slotKeys(prefix: string, id: string) {
  return {
    replicas: `${prefix}{slots}:replicas`,
    mine: `${prefix}{slots}:r:${id}`,
    setPrefix: `${prefix}{slots}:r:`,
    counter: `${prefix}{slots}:c:`,
    rate: `${prefix}rate:`,
    messages: `${prefix}msg:`,
  };
}

/**
 * Frees at once every slot of a replica known to be gone: the primary of `workers: N` calls it when a
 * worker exits, instead of leaving its slots counted until its lease runs out.
 */
export function resignReplica(client: RedisConnection, prefix: string, id: string): Promise<unknown> {
  const keys = slotKeys(prefix, id);
  return runScript(client, 'wsgResign', [keys.replicas, keys.mine], [id]);
}

/** `store.batch: auto`: 100 ms of the rate, at least 1 and at most the burst (the bucket never holds more). */
export const AUTO_BATCH_MS = 100;
export function autoBatch(rate: Rate, burst: number): number {
  return Math.max(1, Math.min(burst, Math.ceil((rate.count * AUTO_BATCH_MS) / rate.periodMs)));
}

/** Forgets idle message buckets this often (their state lives in Redis). */
const SWEEP_MS = 60_000;

/** One line for a log: the reason, never a URL (it may carry a password). */
function describe(err: unknown): string {
  return err instanceof Error ? err.message.replace(/rediss?:\/\/\S*/g, 'redis://…') : String(err);
}

/**
 * The cluster-wide limit store (store.redis): connection slots exact across replicas, handshake and
 * request rates as GCRA buckets in Redis, per-message tokens leased in batches (LeaseBucket).
 *
 * Every slot this replica holds is also kept in its ledger. While Redis cannot answer (down, slower than
 * store.timeout, or it lost this replica's lease) admission follows onError: `local` checks the ledger
 * against the same caps, `open` admits, `closed` refuses with 503. A probe then waits for Redis, and once
 * no call is in flight the ledger is written back in one script (RECONCILE), replacing whatever Redis had
 * for this replica: counts match the live connections again, whatever was opened and closed meanwhile.
 */
export class RedisStore implements LimitStore {
  /** New for every process: a restarted replica never inherits, nor frees, the slots of its previous life. */
  readonly id = `${hostname()}/${process.pid}/${randomBytes(4).toString('hex')}`;
  private readonly client: RedisConnection;
  private readonly ledger = new SlotLedger();
  private readonly local = new MemoryStore();
  private readonly leased = new Map<string, LeaseBucket>();
  private readonly keys: ReturnType<typeof slotKeys>;
  private state: StoreState = 'down';
  /** Slot scripts sent and not answered: the ledger is written back only when none is. */
  private pending = 0;
  private probe: Promise<void> | undefined;
  /** The state logs and metrics last heard of: undefined until the first answer (or failure) at startup. */
  private announced: StoreState | undefined;
  private closed = false;
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly renewEvery: number;
  private lastRenew = 0;
  private lastError: string | undefined;

  constructor(
    private readonly config: StoreConfig,
    private readonly onTransition: (t: StoreTransition) => void = () => {},
    private readonly onInternalError: (err: unknown) => void = () => {},
  ) {
    this.keys = slotKeys(config.keyPrefix, this.id);
    this.client = connectRedis(config, 'limits');
    // ioredis reports every failed reconnect here; the store reports transitions, once each, with the last.
    this.client.on('error', (err: unknown) => {
      this.lastError = describe(err);
    });
    this.client.on('ready', () => {
      if (this.state === 'down') void this.recover();
    });
    // A new connection may reach a Redis that restarted empty, or a new master that never saw some writes:
    // whatever happened while no call was in flight, the next 'ready' writes the ledger back.
    this.client.on('close', () => {
      if (this.state === 'up') this.down('connection to Redis lost');
    });
    // Renewing three times per leaseTtl survives one lost renewal; probing a down Redis runs at least every second.
    this.renewEvery = Math.floor(config.leaseTtl / 3);
    this.timers.push(setInterval(() => this.tick(), Math.min(1000, this.renewEvery)));
    this.timers.push(setInterval(() => this.sweep(), SWEEP_MS));
    for (const t of this.timers) t.unref();
  }

  /** Waits (at most the connect timeout) for Redis and registers this replica; down is an answer too. */
  async start(): Promise<StoreState> {
    const deadline = Math.max(this.config.timeout, 1000);
    await new Promise<void>((resolve) => {
      if (this.client.status === 'ready') return resolve();
      const done = () => {
        clearTimeout(timer);
        this.client.off('ready', done);
        resolve();
      };
      const timer = setTimeout(done, deadline);
      this.client.once('ready', done);
    });
    await this.recover();
    if (this.state === 'down') this.down(`not reachable at startup: ${this.lastError ?? 'no answer'}`);
    return this.state;
  }

  /** Redis has answered this replica's write-back: one still on its way is no answer (readiness). */
  get up(): boolean {
    return this.state === 'up' && this.announced === 'up';
  }

  private counters(requests: readonly SlotRequest[], ip: string, user: string | undefined): Counter[] {
    const out: Counter[] = [];
    for (const { pool, limits } of requests) {
      const name = `${pool.length}:${pool}`;
      if (limits.total !== undefined) out.push({ key: `${this.keys.counter}t:${name}`, cap: limits.total, kind: 'total', pool });
      if (limits.perIp !== undefined) out.push({ key: `${this.keys.counter}i:${name}:${ip}`, cap: limits.perIp, kind: 'perIp', pool });
      if (limits.perUser !== undefined && user !== undefined) {
        out.push({ key: `${this.keys.counter}u:${name}:${user}`, cap: limits.perUser, kind: 'perUser', pool });
      }
    }
    return out;
  }

  async acquireSlots(requests: readonly SlotRequest[], ip: string, user: string | undefined): Promise<SlotVerdict> {
    const counters = this.counters(requests, ip, user);
    const keys = counters.map((c) => c.key);
    if (this.state === 'up' && counters.length > 0) {
      this.pending++;
      let reply: number[] | undefined;
      try {
        reply = (await runScript(this.client, 'wsgAcquire', [this.keys.replicas, this.keys.mine, ...keys], [this.id, ...counters.map((c) => c.cap)])) as number[];
      } catch (err) {
        this.down(describe(err));
      } finally {
        this.pending--;
      }
      if (reply?.[0] === 1) {
        this.ledger.add(keys);
        const usage = counters.flatMap((c, i) => (c.kind === 'total' ? [{ pool: c.pool, ratio: Number(reply[i + 1]) / c.cap }] : []));
        return { ok: true, usage, lease: this.lease(keys) };
      }
      if (reply?.[0] === 0) return { ok: false, refused: counters[Number(reply[1]) - 1]?.kind ?? 'total' };
      if (reply !== undefined) this.down('this replica lost its lease (Redis restarted, or this process paused longer than leaseTtl)');
    }
    return this.fallbackSlots(counters, requests);
  }

  private fallbackSlots(counters: Counter[], requests: readonly SlotRequest[]): SlotVerdict {
    const keys = counters.map((c) => c.key);
    if (this.config.onError === 'closed' && counters.length > 0) throw new GuardError('STORE_UNAVAILABLE', undefined, { 'Retry-After': '5' });
    if (this.config.onError === 'local') {
      const full = this.ledger.full(counters);
      if (full >= 0) return { ok: false, refused: counters[full]!.kind };
    }
    this.ledger.add(keys);
    const usage = requests.flatMap(({ pool, limits }) =>
      limits.total === undefined ? [] : [{ pool, ratio: this.ledger.count(`${this.keys.counter}t:${pool.length}:${pool}`) / limits.total }],
    );
    return { ok: true, usage, lease: this.lease(keys) };
  }

  private lease(keys: string[]): { release(): void } {
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.ledger.remove(keys);
        // While down, the ledger alone changes: reconciliation writes it back.
        if (this.state !== 'up' || keys.length === 0) return;
        runScript(this.client, 'wsgRelease', [this.keys.mine, ...keys], [this.id]).catch((err: unknown) => this.down(describe(err)));
      },
    };
  }

  async takeHandshake(key: string, rate: Rate, burst: number): Promise<number> {
    if (this.state === 'up') {
      try {
        const waitMs = Number(await runScript(this.client, 'wsgTakeOne', [this.keys.rate + key], [rate.periodMs / rate.count, burst]));
        // Redis is outside input too: an answer that is not a number is a failure, never an admission.
        if (Number.isFinite(waitMs) && waitMs >= 0) return waitMs;
        this.down(`unexpected answer from Redis: ${String(waitMs)}`);
      } catch (err) {
        this.down(describe(err));
      }
    }
    if (this.config.onError === 'closed') throw new GuardError('STORE_UNAVAILABLE', undefined, { 'Retry-After': '5' });
    return this.config.onError === 'open' ? 0 : this.local.takeHandshake(key, rate, burst);
  }

  sharedBucket(key: string, rate: Rate, burst: number): SharedBucket {
    let bucket = this.leased.get(key);
    if (bucket === undefined) {
      const perMs = rate.count / rate.periodMs;
      bucket = new LeaseBucket({
        batch: this.config.batch === 'auto' ? autoBatch(rate, burst) : this.config.batch,
        remote: () => this.state === 'up',
        fallback: new TokenBucket(rate, burst, Date.now()),
        lease: (spent, want) => this.leaseTokens(this.keys.messages + key, spent, want, perMs, burst),
        failed: (err) => this.down(describe(err)),
      });
      this.leased.set(key, bucket);
    }
    bucket.users++;
    const shared = bucket;
    let released = false;
    return {
      take: (now) => shared.take(now),
      waitMs: (now) => shared.waitMs(now),
      undecided: (now) => shared.undecided(now),
      release: () => {
        if (released) return;
        released = true;
        shared.release();
      },
    };
  }

  private async leaseTokens(key: string, spent: number, want: number, perMs: number, burst: number): Promise<Leased> {
    const reply = await runScript(this.client, 'wsgLease', [key], [spent, want, perMs, burst]);
    const [granted, tokens, waitMs] = Array.isArray(reply) ? reply.map(Number) : [];
    if (!(Number.isInteger(granted) && granted! >= 0 && granted! <= want) || !Number.isFinite(tokens) || !Number.isFinite(waitMs)) {
      throw new Error('unexpected answer from Redis to a token lease');
    }
    return { granted: granted!, tokens: tokens!, waitMs: waitMs! };
  }

  /** The next tick (at most a second away) or Redis's next 'ready' tries to come back up. */
  private down(reason: string): void {
    if (this.closed) return;
    this.state = 'down';
    this.lastError = reason;
    if (this.announced === 'down') return;
    this.announced = 'down';
    this.report({ state: 'down', reason, onError: this.config.onError });
  }

  /** Called from timers and promise handlers: a listener that throws must not escape from them. */
  private report(transition: StoreTransition): void {
    try {
      this.onTransition(transition);
    } catch (err) {
      this.onInternalError(err);
    }
  }

  /** Renews the lease while up; probes and writes the ledger back while down. */
  private tick(): void {
    if (this.closed) return;
    if (this.state === 'down') {
      void this.recover();
      return;
    }
    if (Date.now() - this.lastRenew < this.renewEvery) return;
    this.lastRenew = Date.now();
    runScript(this.client, 'wsgRenew', [this.keys.replicas], [this.keys.setPrefix, this.id, this.config.leaseTtl]).then(
      (renewed) => {
        if (Number(renewed) !== 1) this.down('this replica lost its lease (Redis restarted, or this process paused longer than leaseTtl)');
      },
      (err: unknown) => this.down(describe(err)),
    );
  }

  /**
   * Writes the ledger back and goes up, if Redis answers and no slot script is in flight (one sent before
   * the trouble could land before the write-back and be erased by it). Calls made after the write-back
   * is sent go to Redis at once: on the one connection they run after it, so they count on top of the
   * ledger it wrote; if it fails, they fail too (or find the lease missing) and the store goes down again.
   */
  private recover(): Promise<void> {
    if (this.closed || this.state === 'up' || this.pending > 0 || this.client.status !== 'ready') return this.probe ?? Promise.resolve();
    this.state = 'up';
    this.probe = runScript(this.client, 'wsgReconcile', [this.keys.replicas, this.keys.mine], [this.keys.setPrefix, this.id, this.config.leaseTtl, ...this.ledger.flatten()]).then(
      () => {
        this.probe = undefined;
        this.lastRenew = Date.now();
        if (this.state === 'up' && this.announced !== 'up') {
          this.announced = 'up';
          this.report({ state: 'up', reason: `${this.ledger.size} slot counters written back`, onError: this.config.onError });
        }
      },
      (err: unknown) => {
        this.probe = undefined;
        this.lastError = describe(err);
        // Still down (never announced up): the next tick tries again.
        this.state = 'down';
      },
    );
    return this.probe;
  }

  private sweep(): void {
    try {
      for (const [key, bucket] of this.leased) if (bucket.idle()) this.leased.delete(key);
    } catch (err) {
      this.onInternalError(err);
    }
  }

  /** Gives back this replica's slots at once (a replica leaving on purpose) and disconnects. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const t of this.timers) clearInterval(t);
    this.local.close();
    if (this.state === 'up') {
      await resignReplica(this.client, this.config.keyPrefix, this.id).catch(() => {});
    }
    this.client.disconnect();
  }
}
