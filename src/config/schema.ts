import net from 'node:net';
import { z } from 'zod';
import { parseDuration } from './units.js';

/**
 * The config schema (design.md §3). Every object is strict, so a misspelt key is an error instead of a
 * silently ignored setting. Unit strings are turned into numbers here, once, so nothing downstream
 * parses them again.
 */

function unit<T>(parse: (text: string) => T | undefined, expected: string) {
  return z.string({ error: `expected ${expected}` }).transform((text, ctx) => {
    const value = parse(text);
    if (value === undefined) {
      ctx.addIssue({ code: 'custom', message: `expected ${expected}, got "${text}"` });
      return z.NEVER;
    }
    return value;
  });
}

const duration = unit(parseDuration, 'a duration like 500ms, 5s, 2m or 24h');

const HOST_PORT = /^(?<host>\[[0-9a-fA-F:.]+\]|[^:\s]+):(?<port>\d{1,5})$/;

function parseHostPort(text: string): { host: string; port: number } | undefined {
  const m = HOST_PORT.exec(text.trim());
  const port = Number(m?.groups?.port);
  if (!m || port > 65535) return undefined;
  return { host: m.groups!.host!.replace(/^\[|\]$/g, ''), port };
}

const port = z.number({ error: 'expected a port number' }).int().min(0).max(65535);

const listen = z.union(
  [
    unit(parseHostPort, 'host:port'),
    z.strictObject({ host: z.string().default('0.0.0.0'), port }),
  ],
  { error: 'expected host:port or { host, port }' },
);

function parseUpstream(text: string): { host: string; port: number; origin: string } | undefined {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return undefined;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'ws:') return undefined;
  if ((url.pathname !== '/' && url.pathname !== '') || url.search || url.username) return undefined;
  const host = url.hostname.replace(/^\[|\]$/g, '');
  return { host, port: url.port ? Number(url.port) : 80, origin: `http://${url.host}` };
}

const upstream = unit(parseUpstream, 'an http:// URL with host and port, like http://127.0.0.1:8000');

function parseCidr(text: string): { address: string; prefix: number; family: 'ipv4' | 'ipv6' } | undefined {
  const [address = '', prefixText, ...extra] = text.trim().split('/');
  const version = net.isIP(address);
  if (version === 0 || extra.length > 0) return undefined;
  const max = version === 4 ? 32 : 128;
  const prefix = prefixText === undefined ? max : Number(prefixText);
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > max || prefixText === '') return undefined;
  return { address, prefix, family: version === 4 ? 'ipv4' : 'ipv6' };
}

const cidr = unit(parseCidr, 'an IP address or CIDR like 10.0.0.0/8');

const timeouts = z
  .strictObject({
    handshake: duration.default(10_000),
    upstreamConnect: duration.default(5_000),
    upstreamResponse: duration.default(10_000),
    close: duration.default(5_000),
    drain: duration.default(30_000),
  })
  .prefault({});

export const configSchema = z.strictObject({
  listen,
  upstream,
  trustedProxies: z.array(cidr).default([]),
  compression: z.enum(['passthrough', 'off'], { error: 'expected passthrough or off' }).default('passthrough'),
  timeouts,
});

export type GuardConfig = z.output<typeof configSchema>;
export type ConfigInput = z.input<typeof configSchema>;
