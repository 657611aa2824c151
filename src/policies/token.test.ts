import type { IncomingMessage } from 'node:http';
import { describe, expect, it } from 'vitest';
import type { JwtConfig } from '../config/schema.js';
import { parseTarget } from '../http/target.js';
import { findToken, takeProtocolTokens } from './token.js';

const jwt = {
  tokenSources: ['header', 'protocol', 'query', 'cookie'],
  queryParam: 'access_token',
  cookie: 'session',
} as unknown as JwtConfig;

function request(url: string, raw: string[] = []): IncomingMessage {
  const headers: Record<string, string> = {};
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    headers[name] = name === 'cookie' && headers[name] !== undefined ? `${headers[name]}; ${raw[i + 1]}` : headers[name] ?? raw[i + 1]!;
  }
  return { url, rawHeaders: raw, headers } as unknown as IncomingMessage;
}

function find(url: string, raw: string[] = [], protocolTokens: string[] = [], config = jwt) {
  return findToken(request(url, raw), config, parseTarget(url)!, protocolTokens);
}

const refused = expect.objectContaining({ code: 'TOKEN_INVALID' });

describe('token sources', () => {
  it('takes every bearer marker and the entry after each out of the offered protocols', () => {
    const offered = ['chat', 'bearer', 'tok.en.x', 'v2'];
    expect(takeProtocolTokens(offered)).toEqual(['tok.en.x']);
    expect(offered).toEqual(['chat', 'v2']);
    const none = ['chat'];
    expect(takeProtocolTokens(none)).toEqual([]);
    expect(none).toEqual(['chat']);
    expect(takeProtocolTokens(['bearer'])).toEqual(['']);
    const two = ['bearer', 'a', 'chat', 'bearer', 'b', 'bearer'];
    expect(takeProtocolTokens(two)).toEqual(['a', 'b', '']);
    expect(two).toEqual(['chat']);
  });

  it('reads each source', () => {
    expect(find('/', ['Authorization', 'Bearer h.t.x'])).toEqual({ token: 'h.t.x', source: 'header' });
    expect(find('/', [], ['p.t.x'])).toEqual({ token: 'p.t.x', source: 'protocol' });
    expect(find('/ws?a=1&access_token=q.t.x')).toEqual({ token: 'q.t.x', source: 'query' });
    expect(find('/ws?a=1&acc%65ss_token=q.t.x')).toEqual({ token: 'q.t.x', source: 'query' });
    expect(find('/', ['Cookie', 'a=b; session=c.t.x'])).toEqual({ token: 'c.t.x', source: 'cookie' });
    expect(find('/ws?access_token=')).toBeUndefined();
  });

  it('accepts a single token only from a configured source', () => {
    expect(find('/ws?access_token=q', [], [], { ...jwt, tokenSources: ['cookie'] })).toBeUndefined();
    expect(find('/ws?access_token=q', [], [], { ...jwt, tokenSources: ['query'] })?.source).toBe('query');
  });

  it('refuses a request carrying more than one token, from the same source or not, configured or not', () => {
    expect(() => find('/', ['Authorization', 'Bearer a', 'Authorization', 'Bearer b'])).toThrow(refused);
    expect(() => find('/ws?access_token=GOOD&access_token=FORGED')).toThrow(refused);
    expect(() => find('/ws?access_token=SAME&access_token=SAME')).toThrow(refused);
    expect(() => find('/', ['Cookie', 'session=a; session=b'])).toThrow(refused);
    expect(() => find('/', ['Cookie', 'session=a', 'Cookie', 'session=b'])).toThrow(refused);
    expect(() => find('/', [], ['a', 'b'])).toThrow(refused);
    expect(() => find('/ws?access_token=q', ['Authorization', 'Bearer h'])).toThrow(refused);
    expect(() => find('/ws?access_token=q', ['Authorization', 'Bearer h'], [], { ...jwt, tokenSources: ['header'] })).toThrow(refused);
  });

  it('counts any Authorization header as a credential, and reads only "Bearer <token>" as a token', () => {
    for (const value of ['Bearer a b', 'JWT a', 'Token a', 'Basic dXNlcjpwdw==']) {
      expect(() => find('/ws?access_token=q', ['Authorization', value]), value).toThrow(refused);
      expect(() => find('/', ['Authorization', value]), value).toThrow(refused);
    }
    expect(find('/', ['Authorization', 'Basic dXNlcjpwdw=='], [], { ...jwt, tokenSources: ['query'] })).toBeUndefined();
  });

  it('reads cookie names the way any server might strip them (Python strips U+0085, trim() does not)', () => {
    expect(() => find('/', ['Authorization', 'Bearer h', 'Cookie', '\u0085session=c'])).toThrow(refused);
    expect(() => find('/', ['Authorization', 'Bearer h', 'Cookie', '\u00a0session\t=c'])).toThrow(refused);
    expect(find('/', ['Cookie', '\u0085session=c\u0085'])).toEqual({ token: 'c', source: 'cookie' });
  });
});
