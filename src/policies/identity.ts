import type { JWTPayload } from 'jose';
import { GuardError } from '../errors.js';

/** Control characters would let a claim value smuggle a header line (CR/LF) or confuse the app. */
const CONTROL = /[\u0000-\u001f\u007f]/;

/**
 * The headers `forwardClaims` sets on the upstream handshake, from verified claims only. A claim that is
 * absent sets no header; objects and arrays are sent as JSON. A value with a control character refuses
 * the connection: it cannot be forwarded faithfully.
 */
export function claimHeaders(claims: JWTPayload, forwardClaims: Readonly<Record<string, string>>): string[] {
  const out: string[] = [];
  for (const [claim, header] of Object.entries(forwardClaims)) {
    const value = claims[claim];
    if (value === undefined || value === null) continue;
    const text = typeof value === 'string' ? value : JSON.stringify(value);
    if (CONTROL.test(text)) throw new GuardError('CLAIMS_INSUFFICIENT', `claim ${claim} has control characters`);
    out.push(header, text);
  }
  return out;
}
