import { describe, expect, it } from 'vitest';
import { parseTarget, queryValues, redactTarget, routingPath } from './target.js';

describe('request target', () => {
  it('splits an origin-form target at the first ?', () => {
    expect(parseTarget('/ws/echo')).toEqual({ path: '/ws/echo', query: '' });
    expect(parseTarget('/ws?a=1?b=2')).toEqual({ path: '/ws', query: 'a=1?b=2' });
    expect(parseTarget('/?')).toEqual({ path: '/', query: '' });
  });

  it('refuses what is not origin-form visible ASCII, a fragment included', () => {
    for (const bad of [undefined, '', '*', 'http://x/', 'ws', '/a b', '/a\tb', '/caf\u00e9', '/x#frag', '/\u0000', '/\u00ff', '/ł']) {
      expect(parseTarget(bad)).toBeNull();
    }
  });

  it('decodes the routing path and refuses the ambiguous ones', () => {
    expect(routingPath('/ws/%65cho')).toBe('/ws/echo');
    for (const bad of ['//x', '/a/%2F/b', '/a%5cb', '/a\\b', '/a/../b', '/a/./b', '/%2e%2e/x', '/a/%', '/%E0%A4%A']) {
      expect(routingPath(bad)).toBeNull();
    }
  });

  it('reads every value of a query parameter, names decoded', () => {
    expect(queryValues('a=1&access_token=x&acc%65ss_token=y', 'access_token')).toEqual(['x', 'y']);
    expect(queryValues('', 'a')).toEqual([]);
    expect(queryValues('a=%ZZ&a=%', 'a')).toEqual(['%ZZ', '%']);
  });

  it('redacts secrets in any target, and never throws', () => {
    const secrets = new Set(['access_token']);
    expect(redactTarget('/ws?access_token=SECRET&a=1', secrets)).toBe('/ws?access_token=%5Bredacted%5D&a=1');
    expect(redactTarget('/ws?a=1', secrets)).toBe('/ws?a=1');
    expect(redactTarget('//[?access_token=SECRET', secrets)).toBe('//[?access_token=%5Bredacted%5D');
    expect(redactTarget('/a b?access_token=SECRET', secrets)).toBe('/a b?[redacted]');
    expect(redactTarget('/ws/echo#access_token=SECRET', secrets)).toBe('/ws/echo#[redacted]');
    expect(redactTarget(undefined, secrets)).toBe('/');
    expect(redactTarget(`/${'a'.repeat(10_000)}`, secrets).length).toBe(2048);
    for (let i = 0; i < 2000; i++) {
      const target = String.fromCharCode(...Array.from({ length: i % 40 }, (_, j) => (i * 31 + j * 17) % 256));
      expect(redactTarget(target, secrets)).not.toContain('SECRET');
    }
  });
});
