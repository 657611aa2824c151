import { describe, expect, it } from 'vitest';
import { formatDuration, formatSize, parseDuration, parseRate, parseSize } from './units.js';

describe('units', () => {
  it('parses durations', () => {
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('5s')).toBe(5000);
    expect(parseDuration('2m')).toBe(120_000);
    expect(parseDuration('24h')).toBe(86_400_000);
    expect(parseDuration('1.5s')).toBe(1500);
    for (const bad of ['5', 's', '5 sec', '-1s', '', 'off']) expect(parseDuration(bad)).toBeUndefined();
  });

  // The parsers only convert; the schema refuses these values, per key (load.test.ts).
  it('converts what the schema must refuse: sub-unit values to 0, endless digits to Infinity', () => {
    expect(parseDuration('0.4ms')).toBe(0);
    expect(parseDuration('0.5ms')).toBe(1);
    expect(parseSize('0.9B')).toBe(0);
    expect(parseDuration(`${'9'.repeat(400)}ms`)).toBe(Infinity);
    expect(parseSize(`${'9'.repeat(400)}B`)).toBe(Infinity);
    expect(parseRate('0/s')).toEqual({ count: 0, periodMs: 1000 });
  });

  it('formats bounds for messages, rounding down', () => {
    expect(formatDuration(2 ** 31 - 1)).toBe('596h');
    expect(formatDuration(90_000)).toBe('1m');
    expect(formatDuration(1500)).toBe('1s');
    expect(formatDuration(1)).toBe('1ms');
    expect(formatDuration(0)).toBe('0ms');
    expect(formatSize(Number.MAX_SAFE_INTEGER)).toBe('8388607GiB');
    expect(formatSize(65_536)).toBe('64KiB');
    expect(formatSize(1)).toBe('1B');
  });

  it('parses sizes', () => {
    expect(parseSize('512B')).toBe(512);
    expect(parseSize('64KiB')).toBe(65_536);
    expect(parseSize('1MiB')).toBe(1_048_576);
    expect(parseSize('1MB')).toBe(1_000_000);
    for (const bad of ['64', '64k', 'KiB', '1 TiB']) expect(parseSize(bad)).toBeUndefined();
  });

  it('parses rates', () => {
    expect(parseRate('10/minute')).toEqual({ count: 10, periodMs: 60_000 });
    expect(parseRate('20/s')).toEqual({ count: 20, periodMs: 1000 });
    for (const bad of ['10', '10/day', '/s', '-1/s']) expect(parseRate(bad)).toBeUndefined();
  });
});
