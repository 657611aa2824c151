import { describe, expect, it } from 'vitest';
import { MAX_BAN_MS } from '../limits/bans.js';
import { parseOrder } from './operator-channel.js';

describe('parseOrder: an order read from Redis is outside input', () => {
  it('reads a close by user or by address, with or without a ban', () => {
    expect(parseOrder('{"from":"h/1","selector":{"user":"alice"}}')).toEqual({ from: 'h/1', selector: { user: 'alice' }, banMs: undefined });
    expect(parseOrder('{"from":"h/1","selector":{"ip":"10.0.0.1"},"banMs":60000}')).toEqual({ from: 'h/1', selector: { ip: '10.0.0.1' }, banMs: 60000 });
  });

  it.each([
    ['not JSON', '{'],
    ['not an object', '"x"'],
    ['null', 'null'],
    ['no sender', '{"selector":{"user":"a"}}'],
    ['an id (ids are per replica)', '{"from":"h","selector":{"id":1}}'],
    ['two selectors', '{"from":"h","selector":{"user":"a","ip":"b"}}'],
    ['an empty user', '{"from":"h","selector":{"user":""}}'],
    ['a user that is not text', '{"from":"h","selector":{"user":["a"]}}'],
    ['a negative ban', '{"from":"h","selector":{"user":"a"},"banMs":-1}'],
    ['a fractional ban', '{"from":"h","selector":{"user":"a"},"banMs":1.5}'],
    ['a ban over the maximum', `{"from":"h","selector":{"user":"a"},"banMs":${MAX_BAN_MS + 1}}`],
    ['a prototype key', '{"from":"h","selector":{"__proto__":{"user":"a"}}}'],
  ])('ignores %s', (_what, text) => {
    expect(parseOrder(text)).toBeUndefined();
  });
});
