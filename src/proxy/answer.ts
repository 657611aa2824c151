import { STATUS_CODES } from 'node:http';
import { GuardError } from '../errors.js';
import { withoutHopByHop } from '../http/headers.js';

/**
 * What an upstream's answer may carry on to the client. The upstream is outside input too (design.md §1):
 * its status line and headers are checked before they are written, since Node's `writeHead` throws on
 * what its own client parser lets through (a status below 100, a control character in the reason).
 */

/** A final status the client can be given: RFC 9110 §15 defines 1xx–5xx, and 1xx is never final here. */
export function isFinalStatus(status: number | undefined): status is number {
  return status !== undefined && Number.isInteger(status) && status >= 200 && status <= 599;
}

/** RFC 9112 §4: reason-phrase = *( HTAB / SP / VCHAR / obs-text ); anything else gets the standard text. */
const REASON = /^[\t\x20-\x7e\x80-\xff]*$/;

export function reasonPhrase(status: number, text: string | undefined): string {
  return text !== undefined && REASON.test(text) ? text : STATUS_CODES[status] ?? '';
}

/** RFC 9110 §5.5 field values; Node's writeHead refuses the rest. */
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;

/**
 * The upstream's response headers for the client: no hop-by-hop ones, none with a value Node would refuse
 * to write, and no Content-Length on a 204 (RFC 9110 §8.6), which has no body whatever it claims.
 */
export function relayableHeaders(rawHeaders: string[], status: number): string[] {
  const kept = withoutHopByHop(rawHeaders);
  const out: string[] = [];
  for (let i = 0; i < kept.length; i += 2) {
    const name = kept[i]!;
    const value = kept[i + 1]!;
    if (!FIELD_VALUE.test(value)) continue;
    if (status === 204 && name.toLowerCase() === 'content-length') continue;
    out.push(name, value);
  }
  return out;
}

/** Why an upstream request failed: an answer Node's parser refused (HPE_*) is the upstream's fault, not a network one. */
export function upstreamFailure(err: NodeJS.ErrnoException): GuardError {
  const code = err.code ?? err.message;
  return new GuardError(code.startsWith('HPE_') ? 'UPSTREAM_BAD_RESPONSE' : 'UPSTREAM_UNREACHABLE', code);
}
