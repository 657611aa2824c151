import { hostname } from 'node:os';
import type { StoreConfig } from '../config/schema.js';
import { MAX_BAN_MS, MAX_BANS } from '../limits/bans.js';
import { connectRedis, type RedisConnection } from '../limits/redis-client.js';
import type { ConnectionSelector } from '../server/guard.js';
import type { Operator } from './admin.js';
import type { Logger } from './logger.js';

/** An operator's order as it travels between replicas. */
interface Order {
  from: string;
  selector: { user: string } | { ip: string };
  banMs: number | undefined;
}

/** What this process calls itself on the channel: one name per process, so it can skip its own orders. */
export function channelName(pid = process.pid): string {
  return `${hostname()}/${pid}`;
}

/** Redis is shared: an order read from it is outside input like any other, and is checked field by field. */
export function parseOrder(text: string): Order | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null) return undefined;
  const { from, selector, banMs } = value as Record<string, unknown>;
  if (typeof from !== 'string' || typeof selector !== 'object' || selector === null) return undefined;
  const keys = Object.keys(selector);
  const [key] = keys;
  const target = (selector as Record<string, unknown>)[key ?? ''];
  if (keys.length !== 1 || (key !== 'user' && key !== 'ip') || typeof target !== 'string' || target === '') return undefined;
  if (banMs !== undefined && (typeof banMs !== 'number' || !Number.isInteger(banMs) || banMs <= 0 || banMs > MAX_BAN_MS)) return undefined;
  return { from, selector: key === 'user' ? { user: target } : { ip: target }, banMs };
}

/**
 * The kill switch across replicas (store.redis): an order to close a user's or an address's connections
 * (and ban them) is published on `<prefix>operator`; every replica subscribed applies it to its own
 * connections. A ban is also kept in `<prefix>bans` until it ends, so a replica that starts later refuses
 * the same user. Orders by connection id stay on the replica that listed them: ids are per replica.
 */
export class OperatorChannel {
  /** Commands of this process's own (orders, bans; the primary frees a dead worker's slots with it). */
  readonly publisher: RedisConnection;
  private readonly subscriber: RedisConnection | undefined;
  private readonly channel: string;
  private readonly bansKey: string;
  /** Resolves once this process hears orders and has read the bans kept in Redis. */
  private readonly settled: Promise<unknown>;
  private bansRead: () => void = () => {};

  /**
   * @param ignore names whose orders this process has already applied (its own; a worker's primary's).
   * @param apply applies an order from another replica to this process's connections.
   */
  constructor(
    config: StoreConfig,
    private readonly self: string,
    private readonly ignore: readonly string[],
    private readonly apply: ((selector: ConnectionSelector, banMs: number | undefined) => void) | undefined,
    private readonly logger: Logger,
  ) {
    this.channel = `${config.keyPrefix}operator`;
    this.bansKey = `${config.keyPrefix}bans`;
    this.publisher = connectRedis(config, 'publisher');
    this.publisher.on('error', () => {});
    if (apply === undefined) {
      this.settled = Promise.resolve();
      return;
    }
    this.subscriber = connectRedis(config, 'subscriber');
    this.subscriber.on('error', () => {});
    this.subscriber.on('message', (_channel: string, text: string) => this.receive(text));
    // Every (re)connection of either: bans set while this replica was away (read through the publisher,
    // so whichever connection comes up second finds the other ready), then the orders from now on.
    this.subscriber.on('ready', () => void this.loadBans());
    this.publisher.on('ready', () => void this.loadBans());
    const read = new Promise<void>((resolve) => (this.bansRead = resolve));
    const subscribed = this.subscriber.subscribe(this.channel).catch((err: unknown) => this.logger.warn({ err: String(err) }, 'operator channel: subscribe failed'));
    this.settled = Promise.all([read, subscribed]);
  }

  /**
   * Resolves once this process hears orders and has applied the bans kept in Redis, or after `ms` (Redis
   * away: it serves meanwhile and applies them when Redis answers). A replica listening before that would
   * admit, for a moment, a user banned on every other replica.
   */
  async started(ms: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.settled, new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)))]);
    clearTimeout(timer);
  }

  /** True while orders can be sent (the publisher's connection is up). */
  get ready(): boolean {
    return this.publisher.status === 'ready';
  }

  private receive(text: string): void {
    const order = parseOrder(text);
    if (order === undefined) {
      this.logger.warn({ channel: this.channel }, 'operator channel: ignored a malformed order');
      return;
    }
    if (order.from === this.self || this.ignore.includes(order.from)) return;
    this.apply?.(order.selector, order.banMs);
    this.logger.warn({ ...order.selector, banMs: order.banMs, from: order.from }, 'connections closed by an operator on another replica');
  }

  private async loadBans(): Promise<void> {
    if (this.publisher.status !== 'ready' || this.subscriber?.status !== 'ready') return;
    try {
      const bans = await this.publisher.hgetall(this.bansKey);
      const now = Date.now();
      let loaded = 0;
      for (const [name, until] of Object.entries(bans)) {
        if (loaded >= MAX_BANS) break;
        const left = Number(until) - now;
        const at = name.indexOf(':');
        const kind = name.slice(0, at);
        const key = name.slice(at + 1);
        if (!(left > 0) || (kind !== 'user' && kind !== 'ip') || key === '') continue;
        this.apply?.(kind === 'user' ? { user: key } : { ip: key }, Math.min(left, MAX_BAN_MS) || undefined);
        loaded++;
      }
      this.bansRead();
    } catch (err) {
      this.logger.warn({ err: String(err) }, 'operator channel: could not load bans');
    }
  }

  /** Sends an order to every other replica; resolves with how many processes received it. */
  async publish(selector: { user: string } | { ip: string }, banMs: number | undefined): Promise<number> {
    if (banMs !== undefined) {
      const name = 'user' in selector ? `user:${selector.user}` : `ip:${selector.ip}`;
      const until = Date.now() + banMs;
      await this.publisher.hset(this.bansKey, name, String(until));
      // The hash lives as long as its longest ban could.
      await this.publisher.pexpire(this.bansKey, MAX_BAN_MS);
    }
    const order: Order = { from: this.self, selector, banMs };
    return Number(await this.publisher.publish(this.channel, JSON.stringify(order)));
  }

  close(): void {
    this.publisher.disconnect();
    this.subscriber?.disconnect();
  }
}

/**
 * This process's kill switch, with orders by user or address also sent to every other replica. A close
 * that could not be sent is a failure the operator sees (503): this replica has acted, so a retry is safe.
 */
export function broadcastOperator(local: Operator, channel: OperatorChannel): Operator {
  return {
    connections: () => local.connections(),
    async close(selector, banMs) {
      const outcome = await local.close(selector, banMs);
      if ('id' in selector) return outcome;
      let received: number;
      try {
        received = await channel.publish(selector, banMs);
      } catch (err) {
        throw new Error(`closed ${outcome.closed} here, but the order did not reach the other replicas: ${err instanceof Error ? err.message : String(err)}`);
      }
      // The subscribers that heard it include this process's own (or its workers').
      return { ...outcome, reached: received };
    },
  };
}
