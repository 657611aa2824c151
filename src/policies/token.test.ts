import type { IncomingMessage } from 'node:http';
import { describe, expect, it } from 'vitest';
import type { JwtConfig } from '../config/schema.js';
import { findToken, takeProtocolToken } from './token.js';

const jwt = {
  tokenSources: ['header', 'protocol', 'query', 'cookie'],
  queryParam: 'access_token',
  cookie: 'session',
} as unknown as JwtConfig;

function request(url: string, raw: string[] = []): IncomingMessage {
  const headers: Record<string, string> = {};
  for (let i = 0; i < raw.length; i += 2) headers[raw[i]!.toLowerCase()] ??= raw[i + 1]!;
  return { url, rawHeaders: raw, headers } as unknown as IncomingMessage;
}

describe('token sources', () => {
  it('takes the bearer marker and the token after it out of the offered protocols', () => {
    const offered = ['chat', 'bearer', 'tok.en.x', 'v2'];
    expect(takeProtocolToken(offered)).toBe('tok.en.x');
    expect(offered).toEqual(['chat', 'v2']);
    const none = ['chat'];
    expect(takeProtocolToken(none)).toBeUndefined();
    expect(none).toEqual(['chat']);
    expect(takeProtocolToken(['bearer'])).toBe('');
  });

  it('reads each source', () => {
    expect(findToken(request('/', ['Authorization', 'Bearer h.t.x']), jwt, undefined)).toEqual({ token: 'h.t.x', source: 'header' });
    expect(findToken(request('/'), jwt, 'p.t.x')).toEqual({ token: 'p.t.x', source: 'protocol' });
    expect(findToken(request('/ws?a=1&access_token=q.t.x'), jwt, undefined)).toEqual({ token: 'q.t.x', source: 'query' });
    expect(findToken(request('/', ['Cookie', 'a=b; session=c.t.x']), jwt, undefined)).toEqual({ token: 'c.t.x', source: 'cookie' });
    expect(findToken(request('/', ['Authorization', 'Basic dXNlcjpwdw==']), jwt, undefined)).toBeUndefined();
  });

  it('follows the configured order and skips sources that are off', () => {
    const both = request('/ws?access_token=q', ['Authorization', 'Bearer h']);
    expect(findToken(both, jwt, undefined)?.source).toBe('header');
    expect(findToken(both, { ...jwt, tokenSources: ['query', 'header'] }, undefined)?.source).toBe('query');
    expect(findToken(both, { ...jwt, tokenSources: ['cookie'] }, undefined)).toBeUndefined();
  });

  it('refuses two Authorization headers instead of guessing', () => {
    const req = request('/', ['Authorization', 'Bearer a', 'Authorization', 'Bearer b']);
    expect(() => findToken(req, jwt, undefined)).toThrow(expect.objectContaining({ code: 'TOKEN_INVALID' }));
  });
});
