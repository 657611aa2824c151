import type { IncomingMessage } from 'node:http';
import { SignJWT } from 'jose';
import { parseConfig } from '../../src/config/load.js';
import type { GuardError } from '../../src/errors.js';
import { parseTarget } from '../../src/http/target.js';
import { admission, type Admission, type Policy } from '../../src/policies/policy.js';

// For the unit tests beside each policy (src/policies/*.test.ts): a policy is built once from its config,
// then run on an admission context, as the server runs them (src/server/upgrade.ts, http-proxy.ts). A
// refusal is a thrown GuardError; these helpers turn it into its code.

export const SECRET = 'policy-unit-secret-long-enough-for-hs256-0123456789';

export function ctx(headers: Record<string, string> = {}, options: { url?: string; ip?: string; preflight?: boolean; protocolTokens?: string[] } = {}): Admission {
  const rawHeaders = Object.entries(headers).flat();
  const lower = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
  const req = { rawHeaders, headers: lower, url: options.url ?? '/' } as unknown as IncomingMessage;
  return admission(req, parseTarget(options.url ?? '/')!, options.ip ?? '10.0.0.1', options.protocolTokens ?? [], options.preflight ?? false);
}

async function verdict(run: (() => void | Promise<void>) | undefined): Promise<string> {
  try {
    await run?.();
    return 'ok';
  } catch (err) {
    return (err as GuardError).code;
  }
}
export const onHandshake = (p: Policy, c: Admission) => verdict(p.onHandshake && (() => p.onHandshake!(c)));
export const onRequest = (p: Policy, c: Admission) => verdict(p.onRequest && (() => p.onRequest!(c)));

export const jwt = () => parseConfig({ listen: '127.0.0.1:0', upstream: 'http://127.0.0.1:1', auth: { jwt: { secret: SECRET, algorithms: ['HS256'], forwardClaims: { sub: 'X-Auth-Sub' } } } }, {}).auth!.jwt;
export const token = (claims: Record<string, unknown>) =>
  new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).setExpirationTime('1m').sign(new TextEncoder().encode(SECRET));
