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

const RATE = /^(\d+(?:\.\d+)?)\s*\/\s*(ms|s|second|m|minute|h|hour)$/;
const RATE_PERIOD_MS: Record<string, number> = {
  ms: 1, s: 1000, second: 1000, m: 60_000, minute: 60_000, h: 3_600_000, hour: 3_600_000,
};

export interface Rate {
  /** Events allowed per period. */
  count: number;
  periodMs: number;
}

/** `10/minute`, `20/s` → { count, periodMs }; undefined when the text is not a rate. */
export function parseRate(text: string): Rate | undefined {
  const m = RATE.exec(text.trim());
  if (!m) return undefined;
  return { count: Number(m[1]), periodMs: RATE_PERIOD_MS[m[2]!]! };
}
