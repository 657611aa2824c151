import { describe, expect, it } from 'vitest';
import { claimHeaders, headerValue, userKey } from './identity.js';

describe('forwarded claims', () => {
  it('keeps printable ASCII without % as it is', () => {
    expect(headerValue('alice')).toBe('alice');
    expect(headerValue('Alice Smith <a@example.com>')).toBe('Alice Smith <a@example.com>');
  });

  it('percent-encodes UTF-8 outside printable ASCII, %, control characters and edge spaces', () => {
    expect(headerValue('Łukasz')).toBe('%C5%81ukasz');
    expect(headerValue('100%')).toBe('100%25');
    expect(headerValue('admin\r\nX-Injected: 1')).toBe('admin%0D%0AX-Injected: 1');
    expect(headerValue(' alice ')).toBe('%20alice%20');
    expect(headerValue('\ud800')).toBe('%EF%BF%BD');
  });

  it('is reversible: decodeURIComponent gives the claim back', () => {
    for (const text of ['Łukasz', '100%', '%41', 'a\u0000b', ' x ', '日本語', '\u{1F600}', 'plain']) {
      expect(decodeURIComponent(headerValue(text))).toBe(text);
    }
  });

  it('sets one header per present claim, JSON for non-strings', () => {
    const headers = claimHeaders({ sub: 'Łukasz', role: ['a', 'ü'], n: 5, gone: null }, { sub: 'X-Auth-Sub', role: 'X-Auth-Role', n: 'X-N', gone: 'X-Gone', none: 'X-None' });
    expect(headers).toEqual(['X-Auth-Sub', '%C5%81ukasz', 'X-Auth-Role', '["a","%C3%BC"]', 'X-N', '5']);
  });

  it('refuses to forward a sub that names no one', () => {
    for (const sub of [{ id: 1 }, ['a'], null]) {
      expect(() => claimHeaders({ sub } as never, { sub: 'X-Auth-Sub' })).toThrow(expect.objectContaining({ code: 'CLAIMS_INSUFFICIENT' }));
    }
  });
});

describe('user key', () => {
  it('is a canonical string of any scalar sub', () => {
    expect(userKey({ sub: 'alice' })).toBe('alice');
    expect(userKey({ sub: 12345 } as never)).toBe('12345');
    expect(userKey({ sub: true } as never)).toBe('true');
    expect(userKey({})).toBeUndefined();
  });

  it('is null for a number JSON could not carry exactly, which would name another user', () => {
    expect(userKey({ sub: 9007199254740993 } as never)).toBeNull();
    expect(userKey({ sub: Infinity } as never)).toBeNull();
    expect(userKey({ sub: 1.5 } as never)).toBeNull();
    expect(() => claimHeaders({ sub: 9007199254740993 } as never, { sub: 'X-Auth-Sub' })).toThrow(expect.objectContaining({ code: 'CLAIMS_INSUFFICIENT' }));
    expect(() => claimHeaders({ role: [1, 123456789012345678901] } as never, { role: 'X-Role' })).toThrow(expect.objectContaining({ code: 'CLAIMS_INSUFFICIENT' }));
    expect(claimHeaders({ ratio: 0.25 } as never, { ratio: 'X-Ratio' })).toEqual(['X-Ratio', '0.25']);
  });

  it('is null for a sub that is not a scalar', () => {
    expect(userKey({ sub: { id: 1 } } as never)).toBeNull();
    expect(userKey({ sub: [1] } as never)).toBeNull();
    expect(userKey({ sub: null } as never)).toBeNull();
  });
});
