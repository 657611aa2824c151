import type { IncomingMessage } from 'node:http';
import { describe, expect, it } from 'vitest';
import { GuardError } from '../errors.js';
import { ctx, onHandshake, onRequest } from '../../test/helpers/policies.js';
import { checkOrigin, originPolicy, parseOriginPattern, type OriginPattern } from './origin.js';

function request(...origins: string[]): IncomingMessage {
  const rawHeaders = origins.flatMap((o) => ['Origin', o]);
  return { rawHeaders, headers: origins.length ? { origin: origins.join(', ') } : {} } as unknown as IncomingMessage;
}

const allow = (...entries: string[]) => entries.map((e) => parseOriginPattern(e)!) as OriginPattern[];

function verdict(req: IncomingMessage, origins: OriginPattern[] | undefined, allowNoOrigin = false): string {
  try {
    checkOrigin(req, { origins, allowNoOrigin });
    return 'allowed';
  } catch (err) {
    return (err as GuardError).code;
  }
}

describe('origin allowlist', () => {
  const list = allow('https://app.example.com', 'https://*.example.org', 'http://127.0.0.1:3000');

  it('parses entries and refuses what is not an origin', () => {
    expect(parseOriginPattern('https://App.Example.com:443')).toEqual({ scheme: 'https', host: 'app.example.com', port: '', wildcard: false });
    expect(parseOriginPattern('https://*.example.org')).toMatchObject({ host: 'example.org', wildcard: true });
    for (const bad of ['app.example.com', 'https://app.example.com/path', 'https://a.*.example.org', '*', 'https://u:p@x.com']) {
      expect(parseOriginPattern(bad), bad).toBeUndefined();
    }
  });

  it('allows exact scheme, host and port matches', () => {
    expect(verdict(request('https://app.example.com'), list)).toBe('allowed');
    expect(verdict(request('https://app.example.com:443'), list)).toBe('allowed');
    expect(verdict(request('http://127.0.0.1:3000'), list)).toBe('allowed');
    expect(verdict(request('http://app.example.com'), list)).toBe('ORIGIN_DENIED');
    expect(verdict(request('https://app.example.com:8443'), list)).toBe('ORIGIN_DENIED');
    expect(verdict(request('http://127.0.0.1:3001'), list)).toBe('ORIGIN_DENIED');
  });

  it('a wildcard covers subdomains only', () => {
    expect(verdict(request('https://a.example.org'), list)).toBe('allowed');
    expect(verdict(request('https://a.b.example.org'), list)).toBe('allowed');
    expect(verdict(request('https://example.org'), list)).toBe('ORIGIN_DENIED');
    expect(verdict(request('https://example.org.evil.com'), list)).toBe('ORIGIN_DENIED');
    expect(verdict(request('https://evilexample.org'), list)).toBe('ORIGIN_DENIED');
    expect(verdict(request('http://a.example.org'), list)).toBe('ORIGIN_DENIED');
  });

  it('refuses null, duplicate and malformed Origin headers', () => {
    expect(verdict(request('null'), list)).toBe('ORIGIN_DENIED');
    expect(verdict(request('https://app.example.com', 'https://app.example.com'), list)).toBe('ORIGIN_DENIED');
    expect(verdict(request('https://app.example.com/'), list)).toBe('ORIGIN_DENIED');
    expect(verdict(request('not a url'), list)).toBe('ORIGIN_DENIED');
  });

  it('names the refused origin once', () => {
    const reason = (req: IncomingMessage) => {
      try {
        checkOrigin(req, { origins: list, allowNoOrigin: false });
      } catch (err) {
        return (err as GuardError).message;
      }
      return 'allowed';
    };
    expect(reason(request('https://evil.example'))).toBe('origin not allowed: https://evil.example');
    expect(reason(request('https://EVIL.example:443'))).toBe('origin not allowed: https://evil.example');
    expect(reason(request())).toBe('origin not allowed: no Origin header');
  });

  it('a missing Origin is refused unless allowNoOrigin; no list allows anything', () => {
    expect(verdict(request(), list)).toBe('ORIGIN_DENIED');
    expect(verdict(request(), list, true)).toBe('allowed');
    expect(verdict(request('https://anything.test'), undefined)).toBe('allowed');
  });
});

describe('origin policy', () => {
  const policy = originPolicy({ origins: [parseOriginPattern('https://app.example.com')!], allowNoOrigin: false });
  it('refuses a foreign or missing Origin on both paths, but lets a CORS preflight through', async () => {
    expect(await onHandshake(policy, ctx({ Origin: 'https://evil.example' }))).toBe('ORIGIN_DENIED');
    expect(await onRequest(policy, ctx({}))).toBe('ORIGIN_DENIED');
    expect(await onRequest(policy, ctx({ Origin: 'https://app.example.com' }))).toBe('ok');
    expect(await onRequest(policy, ctx({ Origin: 'https://evil.example' }, { preflight: true }))).toBe('ok');
  });
});
