import type { LimitsConfig } from '../config/schema.js';
import { MESSAGE_OK, MESSAGE_REFUSE } from '../frames/inspector.js';
import { TokenBucket } from '../limits/bucket.js';
import type { LimitStore, SharedBucket } from '../limits/store.js';

/** The per-message hooks of one session, and what its end gives back. */
export interface SessionLimits {
  /** Per data message: MESSAGE_OK, MESSAGE_REFUSE, or ms to wait (throttle). Null: no message rate. */
  onMessageStart: (() => number) | null;
  /** Per ping/pong from the client: whether it may pass. Null: no control-frame rate. */
  onControlFrame: (() => boolean) | null;
  release(): void;
}

/** The per-message rate check for one connection: a token per message, or how long to wait for one. */
function messageCheck(bucket: Pick<SharedBucket, 'take' | 'waitMs' | 'undecided'>, onExceed: 'close' | 'throttle'): () => number {
  return () => {
    const now = Date.now();
    if (bucket.take(now)) return MESSAGE_OK;
    if (onExceed === 'close' && bucket.undecided?.(now) !== true) return MESSAGE_REFUSE;
    return Math.max(1, bucket.waitMs(now));
  };
}

function noop(): void {}

/**
 * The message and control-frame rates of a route, built once; `open` gives a new session its hooks. A
 * message rate `per: user` or `per: ip` shares one bucket in the limit store between the connections of
 * that user or address (without a verified user, "per user" counts the address).
 */
export function messageLimits(store: LimitStore, route: string, limits: LimitsConfig): (ip: string, user: string | undefined) => SessionLimits {
  const rate = limits.messages;
  const control = limits.controlFrames;
  return (ip, user) => {
    let shared: SharedBucket | undefined;
    if (rate !== undefined && rate.per !== 'connection') {
      const who = rate.per === 'user' && user !== undefined ? `user:${user}` : `ip:${ip}`;
      shared = store.sharedBucket(`${route}|${who}`, rate.rate, rate.burst);
    }
    const bucket = rate === undefined ? undefined : shared ?? new TokenBucket(rate.rate, rate.burst, Date.now());
    const controlBucket = control === undefined ? undefined : new TokenBucket(control.rate, control.burst, Date.now());
    return {
      onMessageStart: bucket === undefined ? null : messageCheck(bucket, rate!.onExceed),
      onControlFrame: controlBucket === undefined ? null : () => controlBucket.take(Date.now()),
      release: shared === undefined ? noop : () => shared.release(),
    };
  };
}
