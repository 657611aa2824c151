import { describe, expect, it } from 'vitest';
import { TrustedProxies, normalizeAddress, upstreamHeaders, withoutHopByHop } from './forwarded.js';

const trusted = new TrustedProxies([{ address: '10.0.0.0', prefix: 8, family: 'ipv4' }]);

describe('client address', () => {
  it('normalizes IPv4-mapped IPv6', () => {
    expect(normalizeAddress('::ffff:127.0.0.1')).toBe('127.0.0.1');
    expect(normalizeAddress('::1')).toBe('::1');
  });

  it('ignores X-Forwarded-For from an untrusted peer', () => {
    expect(trusted.clientAddress('192.0.2.1', '203.0.113.9')).toBe('192.0.2.1');
  });

  it('takes the right-most untrusted hop from a trusted peer', () => {
    expect(trusted.clientAddress('10.0.0.1', '198.51.100.7, 203.0.113.9, 10.1.1.1')).toBe('203.0.113.9');
    expect(trusted.clientAddress('10.0.0.1', ['198.51.100.7', '10.2.2.2'])).toBe('198.51.100.7');
    expect(trusted.clientAddress('10.0.0.1', '10.3.3.3')).toBe('10.3.3.3');
  });

  it('stops at a malformed hop instead of believing it', () => {
    expect(trusted.clientAddress('10.0.0.1', '203.0.113.9, not-an-ip')).toBe('10.0.0.1');
  });
});

describe('upstream headers', () => {
  const raw = [
    'Host', 'app.example', 'Connection', 'Upgrade, X-Secret-Hop', 'Upgrade', 'websocket', 'X-Secret-Hop', '1',
    'Keep-Alive', 'timeout=5', 'X-Forwarded-For', '198.51.100.7', 'X-Forwarded-Proto', 'https', 'Forwarded', 'for=1.2.3.4',
    'Cookie', 'a=b',
  ];

  it('drops hop-by-hop headers and those Connection names', () => {
    expect(withoutHopByHop(raw)).toEqual([
      'Host', 'app.example', 'X-Forwarded-For', '198.51.100.7', 'X-Forwarded-Proto', 'https', 'Forwarded', 'for=1.2.3.4', 'Cookie', 'a=b',
    ]);
  });

  it('replaces forwarding headers sent by an untrusted peer', () => {
    const out = upstreamHeaders(raw, { peer: '192.0.2.1', trusted: false, proto: 'http', host: 'app.example' });
    expect(out).toEqual([
      'Host', 'app.example', 'Cookie', 'a=b',
      'X-Forwarded-For', '192.0.2.1', 'X-Forwarded-Proto', 'http', 'X-Forwarded-Host', 'app.example',
    ]);
  });

  it('appends to the chain of a trusted proxy', () => {
    const out = upstreamHeaders(raw, { peer: '10.0.0.1', trusted: true, proto: 'http', host: 'app.example' });
    expect(out).toEqual([
      'Host', 'app.example', 'Forwarded', 'for=1.2.3.4', 'Cookie', 'a=b',
      'X-Forwarded-For', '198.51.100.7, 10.0.0.1', 'X-Forwarded-Proto', 'https', 'X-Forwarded-Host', 'app.example',
    ]);
  });
});

describe('claims about the client or its target', () => {
  it('are removed from an untrusted peer and kept from a trusted proxy', () => {
    const raw = ['Host', 'a', 'X-Real-IP', '6.6.6.6', 'X-Original-URL', '/admin', 'X-Rewrite-URL', '/admin', 'X-Forwarded-Prefix', '/x'];
    const untrusted = upstreamHeaders(raw, { peer: '192.0.2.1', trusted: false, proto: 'http', host: 'a' });
    expect(untrusted.filter((_, i) => i % 2 === 0)).toEqual(['Host', 'X-Forwarded-For', 'X-Forwarded-Proto', 'X-Forwarded-Host']);
    const fromProxy = upstreamHeaders(raw, { peer: '10.0.0.1', trusted: true, proto: 'http', host: 'a' });
    expect(fromProxy).toContain('X-Real-IP');
    expect(fromProxy).toContain('X-Original-URL');
  });
});

describe('headers in disguise', () => {
  it('removes underscore spellings of identity and forwarding headers, which WSGI servers read as the real ones', () => {
    const raw = ['Host', 'a', 'X_Auth_Sub', 'admin', 'x_forwarded_for', '6.6.6.6', 'X_Forwarded_Host', 'evil', 'X_Other', 'kept'];
    const out = upstreamHeaders(raw, { peer: '192.0.2.1', trusted: false, proto: 'http', host: 'a' }, new Set(['x-auth-sub']));
    expect(out).toEqual(['Host', 'a', 'X_Other', 'kept', 'X-Forwarded-For', '192.0.2.1', 'X-Forwarded-Proto', 'http', 'X-Forwarded-Host', 'a']);
  });
});
