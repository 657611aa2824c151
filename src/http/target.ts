/**
 * One reading of a request target, shared by every check and by the logs, so the guard never judges one
 * path while the upstream routes another. Total: any string gives a Target or null, never an exception.
 */
export interface Target {
  /** The path as sent (still percent-encoded). */
  path: string;
  /** What follows the first `?`, without it; '' when there is none. */
  query: string;
}

/**
 * RFC 9112 §3.2.1 origin-form in visible ASCII (RFC 3986 has no other characters). A fragment is never
 * part of a request target: servers disagree on whether `#` ends the query, so it is refused too.
 */
const ORIGIN_FORM = /^\/[\x21-\x22\x24-\x7e]*$/;

/** The target split into path and query, or null when it is not a plain origin-form target. */
export function parseTarget(url: string | undefined): Target | null {
  if (url === undefined || !ORIGIN_FORM.test(url)) return null;
  const q = url.indexOf('?');
  return q === -1 ? { path: url, query: '' } : { path: url.slice(0, q), query: url.slice(q + 1) };
}

/**
 * The path routes are matched on, as the upstream will see it: percent-decoded, since servers such as
 * uvicorn decode before routing (else `/ws/%65cho` would slip past a route for `/ws/echo`). Paths that
 * servers read in different ways (encoded slashes, `//`, dot segments) are refused: null.
 */
export function routingPath(path: string): string | null {
  if (path.includes('//') || /%2f|%5c|\\/i.test(path)) return null;
  let decoded: string;
  try {
    decoded = decodeURIComponent(path);
  } catch {
    return null;
  }
  if (decoded.includes('//') || decoded.split('/').some((s) => s === '.' || s === '..')) return null;
  return decoded;
}

/** Every value of a query parameter, decoded the way servers decode it (`+` is a space, names too). */
export function queryValues(query: string, name: string): string[] {
  return query === '' ? [] : new URLSearchParams(query).getAll(name);
}

/** Longest target a log line repeats; the rest is cut (the head is at most 16 KiB anyway). */
const LOGGED_TARGET_CHARS = 2048;

/**
 * The target for a log line with the values of `secretParams` replaced. A target that is not
 * origin-form is logged cut to a bounded length without its query or fragment, since a token may hide in
 * either.
 */
export function redactTarget(url: string | undefined, secretParams: ReadonlySet<string>): string {
  if (url === undefined) return '/';
  const target = parseTarget(url);
  if (target === null) {
    const q = url.search(/[?#]/);
    const path = (q === -1 ? url : url.slice(0, q)).slice(0, LOGGED_TARGET_CHARS);
    return q === -1 ? path : `${path}${url[q]}[redacted]`;
  }
  if (target.query === '') return target.path.slice(0, LOGGED_TARGET_CHARS);
  const params = new URLSearchParams(target.query);
  let touched = false;
  for (const name of secretParams) {
    if (params.has(name)) {
      params.set(name, '[redacted]');
      touched = true;
    }
  }
  return `${target.path}?${touched ? params.toString() : target.query}`.slice(0, LOGGED_TARGET_CHARS);
}
