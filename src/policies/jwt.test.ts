import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { exportJWK, exportSPKI, generateKeyPair, SignJWT, UnsecuredJWT, type JWK, type JWTPayload } from 'jose';

type CryptoKeyLike = Awaited<ReturnType<typeof generateKeyPair>>['privateKey'];
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../config/load.js';
import { createJwtVerifier, type VerifyToken } from './jwt.js';

const SECRET = 'a-test-secret-that-is-long-enough-for-hs256!';
const now = () => Math.floor(Date.now() / 1000);

function jwtConfig(jwt: Record<string, unknown>) {
  return parseConfig({ listen: '127.0.0.1:0', upstream: 'http://127.0.0.1:1', auth: { jwt } }, {}).auth!.jwt;
}

async function code(verify: VerifyToken, token: string): Promise<string> {
  try {
    await verify(token);
    return 'ok';
  } catch (err) {
    return (err as { code: string }).code;
  }
}

function hs256(claims: JWTPayload, secret = SECRET, header: Record<string, unknown> = {}) {
  return new SignJWT(claims).setProtectedHeader({ alg: 'HS256', ...header }).sign(new TextEncoder().encode(secret));
}

describe('JWT with a shared secret', () => {
  const verify = createJwtVerifier(jwtConfig({
    secret: SECRET, algorithms: ['HS256'], issuer: 'https://auth.test', audience: 'chat', requiredClaims: ['sub'],
  }));
  const good = { iss: 'https://auth.test', aud: 'chat', sub: 'alice', exp: now() + 60 };

  it('accepts a valid token and reports when it expires', async () => {
    const identity = await verify(await hs256(good));
    expect(identity.claims.sub).toBe('alice');
    expect(identity.expiresAt).toBe(good.exp * 1000);
  });

  it('refuses expired, not-yet-valid, badly signed, wrong iss/aud, and exp-less tokens with 401 codes', async () => {
    expect(await code(verify, await hs256({ ...good, exp: now() - 10 }))).toBe('TOKEN_EXPIRED');
    expect(await code(verify, await hs256({ ...good, nbf: now() + 60 }))).toBe('TOKEN_INVALID');
    expect(await code(verify, await hs256(good, 'another-secret-that-is-long-enough-for-hs256'))).toBe('TOKEN_INVALID');
    expect(await code(verify, await hs256({ ...good, iss: 'https://evil.test' }))).toBe('TOKEN_INVALID');
    expect(await code(verify, await hs256({ ...good, aud: 'billing' }))).toBe('TOKEN_INVALID');
    const { exp: _exp, ...noExp } = good;
    expect(await code(verify, await hs256(noExp))).toBe('TOKEN_INVALID');
  });

  it('a valid token without a required claim is a 403', async () => {
    const { sub: _sub, ...noSub } = good;
    expect(await code(verify, await hs256(noSub))).toBe('CLAIMS_INSUFFICIENT');
  });

  it('refuses alg none, algorithms outside the allowlist, malformed and oversized tokens', async () => {
    expect(await code(verify, new UnsecuredJWT(good).encode())).toBe('TOKEN_INVALID');
    const hs512 = await new SignJWT(good).setProtectedHeader({ alg: 'HS512' }).sign(new TextEncoder().encode(SECRET.repeat(2)));
    expect(await code(verify, hs512)).toBe('TOKEN_INVALID');
    expect(await code(verify, 'not.a.jwt')).toBe('TOKEN_INVALID');
    expect(await code(verify, 'garbage')).toBe('TOKEN_INVALID');
    expect(await code(verify, await hs256({ ...good, pad: 'x'.repeat(9000) }))).toBe('TOKEN_INVALID');
  });
});

describe('JWT config checks at startup', () => {
  const problems = (jwt: Record<string, unknown>) => {
    try {
      jwtConfig(jwt);
      return [];
    } catch (err) {
      return (err as ConfigError).problems;
    }
  };

  it('refuses a secret shorter than the hash, a missing allowlist, and mismatched keys', () => {
    expect(problems({ secret: 'short', algorithms: ['HS256'] })).toEqual(['auth.jwt.secret: HS256 needs a secret of at least 32 bytes, got 5']);
    expect(problems({ secret: SECRET })).toEqual(['auth.jwt.algorithms: is required: list the algorithms tokens may use']);
    expect(problems({ secret: SECRET, algorithms: ['RS256'] })).toEqual(['auth.jwt.algorithms: a secret verifies only HS256, HS384 or HS512']);
    expect(problems({ algorithms: ['HS256'] })[0]).toMatch(/exactly one of secret, publicKey or jwksUrl/);
    expect(problems({ jwksUrl: 'http://auth.example.com/jwks', algorithms: ['RS256'] })[0]).toMatch(/^auth\.jwt\.jwksUrl: expected an https/);
    expect(problems({ publicKey: '/nonexistent.pem', algorithms: ['RS256'] })[0]).toMatch(/^auth\.jwt\.publicKey: expected a readable PEM/);
  });
});

describe('JWT with a PEM public key', () => {
  let pemFile: string;
  let privateKey: CryptoKeyLike;
  let verify: VerifyToken;

  beforeAll(async () => {
    const pair = await generateKeyPair('RS256', { extractable: true });
    privateKey = pair.privateKey;
    pemFile = join(mkdtempSync(join(tmpdir(), 'ws-guard-jwt-')), 'public.pem');
    writeFileSync(pemFile, await exportSPKI(pair.publicKey));
    verify = createJwtVerifier(jwtConfig({ publicKey: pemFile, algorithms: ['RS256'] }));
  });
  afterAll(() => rmSync(dirname(pemFile), { recursive: true, force: true }));

  it('accepts RS256 tokens signed by the private key', async () => {
    const token = await new SignJWT({ sub: 'bob', exp: now() + 60 }).setProtectedHeader({ alg: 'RS256' }).sign(privateKey);
    expect((await verify(token)).claims.sub).toBe('bob');
  });

  it('refuses the public key used as an HS256 secret (algorithm confusion)', async () => {
    const pem = (await import('node:fs')).readFileSync(pemFile, 'utf8');
    const header = Buffer.from(JSON.stringify({ alg: 'HS256', typ: 'JWT' })).toString('base64url');
    const body = Buffer.from(JSON.stringify({ sub: 'mallory', exp: now() + 60 })).toString('base64url');
    const signature = createHmac('sha256', pem).update(`${header}.${body}`).digest('base64url');
    expect(await code(verify, `${header}.${body}.${signature}`)).toBe('TOKEN_INVALID');
  });

  it('refuses at startup an algorithm the key cannot verify', () => {
    expect(() => jwtConfig({ publicKey: pemFile, algorithms: ['ES256'] })).toThrow(/a rsa key cannot verify ES256/);
  });
});

describe('JWT with a JWKS URL', () => {
  let server: http.Server;
  let keys: JWK[] = [];
  let up = true;
  let fetches = 0;
  let trapHits = 0;
  let base: string;
  const signers = new Map<string, CryptoKeyLike>();

  async function addKey(kid: string) {
    const pair = await generateKeyPair('ES256', { extractable: true });
    signers.set(kid, pair.privateKey);
    keys.push({ ...(await exportJWK(pair.publicKey)), kid, alg: 'ES256', use: 'sig' });
  }

  const sign = (kid: string, extra: Record<string, unknown> = {}) =>
    new SignJWT({ sub: kid, exp: now() + 60 }).setProtectedHeader({ alg: 'ES256', kid, ...extra }).sign(signers.get(kid)!);

  beforeAll(async () => {
    await addKey('k1');
    server = http.createServer((req, res) => {
      if (req.url === '/trap') {
        trapHits++;
        res.end('{}');
        return;
      }
      fetches++;
      if (!up) {
        res.writeHead(503).end();
        return;
      }
      res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify({ keys }));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise((resolve) => server.close(resolve)));

  it('verifies with fetched keys, refetches on an unknown kid, and never fetches a URL named in a token', async () => {
    const verify = createJwtVerifier(jwtConfig({ jwksUrl: `${base}/jwks`, algorithms: ['ES256'], jwksCooldown: '1ms' }));
    expect((await verify(await sign('k1'))).claims.sub).toBe('k1');
    await addKey('k2');
    expect((await verify(await sign('k2'))).claims.sub).toBe('k2');
    expect(fetches).toBe(2);
    expect(await code(verify, await sign('k1', { jku: `${base}/trap`, kid: 'unknown' }))).toBe('TOKEN_INVALID');
    expect(trapHits).toBe(0);
  });

  it('keeps serving cached keys while the endpoint is down, and refuses an unknown kid then', async () => {
    const verify = createJwtVerifier(jwtConfig({ jwksUrl: `${base}/jwks`, algorithms: ['ES256'], jwksCooldown: '1ms', jwksCacheMaxAge: '1ms' }));
    expect((await verify(await sign('k1'))).claims.sub).toBe('k1');
    up = false;
    try {
      expect((await verify(await sign('k1'))).claims.sub).toBe('k1');
      await addKey('k3');
      expect(await code(verify, await sign('k3'))).toBe('TOKEN_INVALID');
    } finally {
      up = true;
    }
  });

  it('fails closed when the endpoint was never reachable', async () => {
    up = false;
    try {
      const verify = createJwtVerifier(jwtConfig({ jwksUrl: `${base}/jwks`, algorithms: ['ES256'] }));
      expect(await code(verify, await sign('k1'))).toBe('TOKEN_INVALID');
    } finally {
      up = true;
    }
  });
});
