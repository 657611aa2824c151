import { describe, expect, it } from 'vitest';
import { parseDuration, parseRate, parseSize } from './units.js';

describe('units', () => {
  it('parses durations', () => {
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('5s')).toBe(5000);
    expect(parseDuration('2m')).toBe(120_000);
    expect(parseDuration('24h')).toBe(86_400_000);
    expect(parseDuration('1.5s')).toBe(1500);
    for (const bad of ['5', 's', '5 sec', '-1s', '']) expect(parseDuration(bad)).toBeUndefined();
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
    for (const bad of ['10', '0/s', '10/day', '/s']) expect(parseRate(bad)).toBeUndefined();
  });
});
