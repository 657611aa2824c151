import { GuardError } from '../errors.js';
import type { Bans } from '../limits/bans.js';
import type { Admission, Policy } from './policy.js';

/**
 * Refuses upgrades and plain requests from a user or client address an operator banned (403 BANNED +
 * Retry-After). Runs after the token policies, so the user is known; an address ban holds on routes
 * without auth too.
 */
export function banPolicy(bans: Bans): Policy {
  const check = (ctx: Admission) => {
    const ms = Math.max(bans.remaining('ip', ctx.ip), bans.remaining('user', ctx.user));
    if (ms > 0) throw new GuardError('BANNED', ctx.user !== undefined && bans.remaining('user', ctx.user) > 0 ? 'user' : 'address', { 'Retry-After': String(Math.ceil(ms / 1000)) });
  };
  return { name: 'ban', onHandshake: check, onRequest: check };
}
