import type { Rate } from '../config/units.js';
import { GuardError } from '../errors.js';
import type { LimitStore } from '../limits/store.js';
import type { Policy } from './policy.js';

/** Upgrades per client address on a route: a token bucket in the limit store (429 + Retry-After). */
export function handshakeRatePolicy(store: LimitStore, route: string, limit: { rate: Rate; burst: number }): Policy {
  return {
    name: 'handshake-rate',
    async onHandshake(ctx) {
      const waitMs = await store.takeHandshake(`${route}|${ctx.ip}`, limit.rate, limit.burst);
      if (waitMs > 0) throw new GuardError('HANDSHAKE_RATE', ctx.ip, { 'Retry-After': String(Math.ceil(waitMs / 1000)) });
    },
  };
}

/**
 * Plain requests per client address or per user on a route (429 + Retry-After). Without a verified user,
 * "per user" counts the address. CORS preflights take no token.
 */
export function requestRatePolicy(store: LimitStore, route: string, limit: { rate: Rate; burst: number; per: 'ip' | 'user' }): Policy {
  return {
    name: 'request-rate',
    async onRequest(ctx) {
      if (ctx.preflight) return;
      const who = limit.per === 'user' && ctx.user !== undefined ? `user:${ctx.user}` : `ip:${ctx.ip}`;
      const waitMs = await store.takeHandshake(`request|${route}|${who}`, limit.rate, limit.burst);
      if (waitMs > 0) throw new GuardError('REQUEST_RATE', who, { 'Retry-After': String(Math.ceil(waitMs / 1000)) });
    },
  };
}
