import { describe, expect, it } from 'vitest';
import { GuardError } from '../errors.js';
import { Bans, MAX_BAN_MS } from '../limits/bans.js';
import { ctx, onHandshake, onRequest } from '../../test/helpers/policies.js';
import { banPolicy } from './ban.js';

describe('banPolicy', () => {
  it('refuses a banned address and a banned user, on upgrades and requests, with Retry-After', async () => {
    const bans = new Bans();
    const policy = banPolicy(bans);
    bans.add('ip', '10.0.0.9', 10_000);
    bans.add('user', 'mallory', 90_000);
    expect(await onHandshake(policy, ctx({}, { ip: '10.0.0.9' }))).toBe('BANNED');
    expect(await onRequest(policy, ctx({}, { ip: '10.0.0.9' }))).toBe('BANNED');
    const user = { ...ctx({}, { ip: '10.0.0.1' }), user: 'mallory' };
    expect(await onHandshake(policy, user)).toBe('BANNED');
    try {
      policy.onHandshake!(user);
    } catch (err) {
      expect((err as GuardError).status).toBe(403);
      expect((err as GuardError).headers['Retry-After']).toBe('90');
    }
    expect(await onHandshake(policy, { ...ctx({}, { ip: '10.0.0.1' }), user: 'alice' })).toBe('ok');
    expect(await onHandshake(policy, ctx({}, { ip: '10.0.0.1' }))).toBe('ok');
  });

  it('bans expire', async () => {
    let now = 1_000;
    const bans = new Bans(10, () => now);
    const policy = banPolicy(bans);
    bans.add('ip', '10.0.0.9', 5_000);
    expect(await onHandshake(policy, ctx({}, { ip: '10.0.0.9' }))).toBe('BANNED');
    now += 5_000;
    expect(await onHandshake(policy, ctx({}, { ip: '10.0.0.9' }))).toBe('ok');
    expect(bans.size).toBe(0);
  });
});

describe('Bans', () => {
  it('keeps at most its cap, forgetting the ban that ends soonest', () => {
    let now = 0;
    const bans = new Bans(2, () => now);
    bans.add('ip', 'a', 1_000);
    bans.add('ip', 'b', 3_000);
    bans.add('ip', 'c', 2_000);
    expect(bans.size).toBe(2);
    expect(bans.remaining('ip', 'a')).toBe(0);
    expect(bans.remaining('ip', 'b')).toBe(3_000);
    now = 500;
    expect(bans.remaining('ip', 'c')).toBe(1_500);
  });

  it('caps a ban at 24 h and keeps a longer one in place', () => {
    const bans = new Bans(10, () => 0);
    bans.add('user', 'u', 10 * MAX_BAN_MS);
    expect(bans.remaining('user', 'u')).toBe(MAX_BAN_MS);
    bans.add('user', 'u', 1_000);
    expect(bans.remaining('user', 'u')).toBe(MAX_BAN_MS);
  });
});
