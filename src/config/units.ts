/**
 * Parsers for the unit strings of the config (design.md §3): durations, sizes and rates. They only
 * convert; which values a key accepts (zero, `off`, a ceiling) is the schema's decision, per key.
 */

const DURATION = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)$/;
const DURATION_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** `500ms`, `5s`, `2m`, `24h` → milliseconds; undefined when the text is not a duration. */
export function parseDuration(text: string): number | undefined {
  const m = DURATION.exec(text.trim());
  if (!m) return undefined;
  return Math.round(Number(m[1]) * DURATION_MS[m[2]!]!);
}

/**
 * Milliseconds in the largest unit they fill, for messages: "at most 596h" reads better than 2147483647ms,
 * and rounding down never states a maximum above the real one.
 */
export function formatDuration(ms: number): string {
  const unit = (['h', 'm', 's'] as const).find((u) => ms >= DURATION_MS[u]!) ?? 'ms';
  return `${Math.floor(ms / DURATION_MS[unit]!)}${unit}`;
}

const SIZE = /^(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB)$/;
const SIZE_BYTES: Record<string, number> = {
  B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3, KB: 1000, MB: 1000 ** 2, GB: 1000 ** 3,
};

/** `512B`, `64KiB`, `1MiB` → bytes; undefined when the text is not a size. */
export function parseSize(text: string): number | undefined {
  const m = SIZE.exec(text.trim());
  if (!m) return undefined;
  return Math.floor(Number(m[1]) * SIZE_BYTES[m[2]!]!);
}

/** Bytes in the largest binary unit they fill, rounded down. */
export function formatSize(bytes: number): string {
  const unit = (['GiB', 'MiB', 'KiB'] as const).find((u) => bytes >= SIZE_BYTES[u]!) ?? 'B';
  return `${Math.floor(bytes / SIZE_BYTES[unit]!)}${unit}`;
}

/** `10/min`, `10 / minute`, `10 per minute`, `10 per minutes`: units in any case. */
const RATE = /^(\d+(?:\.\d+)?)(?:\s*\/\s*|\s+per\s+)([a-z]+)$/i;
const SECOND = 1000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const RATE_PERIOD_MS: Record<string, number> = {
  ms: 1,
  s: SECOND, sec: SECOND, secs: SECOND, second: SECOND, seconds: SECOND,
  m: MINUTE, min: MINUTE, mins: MINUTE, minute: MINUTE, minutes: MINUTE,
  h: HOUR, hr: HOUR, hrs: HOUR, hour: HOUR, hours: HOUR,
  d: DAY, day: DAY, days: DAY,
};

export interface Rate {
  /** Events allowed per period. */
  count: number;
  periodMs: number;
}

/** `10/minute`, `20/s`, `100 per hour`, `1000/day` → { count, periodMs }; undefined when the text is not a rate. */
export function parseRate(text: string): Rate | undefined {
  const m = RATE.exec(text.trim());
  const periodMs = m && Object.hasOwn(RATE_PERIOD_MS, m[2]!.toLowerCase()) ? RATE_PERIOD_MS[m[2]!.toLowerCase()] : undefined;
  if (!m || periodMs === undefined) return undefined;
  return { count: Number(m[1]), periodMs };
}
