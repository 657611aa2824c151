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
    for (const bad of ['10', '/s', '-1/s', '10/week', '10/mon', '10 per', '10per minute', '10 / per minute', '10/constructor']) {
      expect(parseRate(bad), bad).toBeUndefined();
    }
  });

  it('parses the common spellings of a rate, units in any case', () => {
    const spellings: Record<number, string[]> = {
      1000: ['10/s', '10/sec', '10/second', '10 per second', '10 per seconds', '10/SEC', '10 / s', '10 PER Second'],
      60_000: ['10/m', '10/min', '10/minute', '10 per minute', '10 per minutes', '10/Min', '10/mins'],
      3_600_000: ['10/h', '10/hr', '10/hour', '10 per hour', '10 per hours', '10/HOUR'],
      86_400_000: ['10/d', '10/day', '10 per day', '10 per days', '10/Day'],
      1: ['10/ms'],
    };
    for (const [periodMs, texts] of Object.entries(spellings)) {
      for (const text of texts) expect(parseRate(text), text).toEqual({ count: 10, periodMs: Number(periodMs) });
    }
    expect(parseRate('2.5 per minute')).toEqual({ count: 2.5, periodMs: 60_000 });
  });
});
