import { describe, expect, it } from 'vitest';
import { ctx, jwt, onHandshake, onRequest, token } from '../../test/helpers/policies.js';
import { authPolicy, identityPolicy } from './auth.js';
import { createJwtVerifier } from './jwt.js';

describe('auth and identity policies', () => {
  const config = jwt();
  const verify = createJwtVerifier(config);
  it('auth verifies one token; identity sets the user and the claim headers; no token → 401', async () => {
    const auth = authPolicy({ jwt: config, verify, onRequests: true });
    const identity = identityPolicy({ jwt: config, needsUser: false, onRequests: true });
    const c = ctx({ Authorization: `Bearer ${await token({ sub: 'alice' })}`, 'X-Auth-Sub': 'admin' });
    expect(await onRequest(auth, c)).toBe('ok');
    expect(await onRequest(identity, c)).toBe('ok');
    expect(c.user).toBe('alice');
    expect(c.claimHeaders).toEqual(['X-Auth-Sub', 'alice']);
    expect(await onRequest(auth, ctx())).toBe('TOKEN_MISSING');
    expect(await onHandshake(auth, ctx({}, { protocolTokens: [await token({ sub: 'bob' })] }))).toBe('ok');
    const two = ctx({ Authorization: `Bearer ${await token({ sub: 'a' })}`, Cookie: `access_token=${await token({ sub: 'b' })}` });
    expect(await onRequest(auth, two)).toBe('TOKEN_INVALID');
  });

  it('http: pass has no request hook; a token naming no one is refused where a user is needed', async () => {
    expect(authPolicy({ jwt: config, verify, onRequests: false }).onRequest).toBeUndefined();
    const c = ctx({ Authorization: `Bearer ${await token({})}` });
    expect(await onHandshake(authPolicy({ jwt: config, verify, onRequests: true }), c)).toBe('ok');
    const identity = identityPolicy({ jwt: { ...config, forwardClaims: {} }, needsUser: true, onRequests: true });
    expect(await onHandshake(identity, c)).toBe('CLAIMS_INSUFFICIENT');
  });
});
