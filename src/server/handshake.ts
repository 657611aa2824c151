import type { IncomingMessage } from 'node:http';
import { GuardError } from '../errors.js';
import { acceptFor, headerCount, headerList } from '../http/headers.js';

export { acceptFor, headerCount, headerList };

/** RFC 6455 §4.1: the key is 16 random bytes, base64-encoded. */
const KEY = /^[A-Za-z0-9+/]{22}==$/;
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;


export interface UpgradeRequest {
  key: string;
  /** Sec-WebSocket-Protocol entries offered by the client, in order. */
  protocols: string[];
}



/**
 * The RFC 6455 §4.2.1 checks of a client's opening handshake, in the order of design.md §1. Throws the
 * GuardError that answers the first failed check.
 */
export function checkUpgrade(req: IncomingMessage): UpgradeRequest {
  if (req.method !== 'GET') throw new GuardError('BAD_METHOD', req.method, { Allow: 'GET' });
  if (req.httpVersionMajor !== 1 || req.httpVersionMinor < 1) throw new GuardError('BAD_HTTP_VERSION', `HTTP/${req.httpVersion}`);
  const upgrade = req.headers.upgrade;
  if (upgrade === undefined || upgrade.trim().toLowerCase() !== 'websocket') {
    throw new GuardError('BAD_UPGRADE', upgrade ?? '(none)');
  }
  const key = req.headers['sec-websocket-key'];
  if (key === undefined || !KEY.test(key.trim())) throw new GuardError('BAD_KEY');
  const version = req.headers['sec-websocket-version'];
  if (version === undefined || version.trim() !== '13') {
    throw new GuardError('BAD_VERSION', version ?? '(none)', { 'Sec-WebSocket-Version': '13' });
  }
  // A GET upgrade has no body (RFC 6455 §4.1); bytes after the head are WebSocket frames, never a body.
  const length = req.headers['content-length'];
  if (req.headers['transfer-encoding'] !== undefined || (length !== undefined && length.trim() !== '0')) {
    throw new GuardError('HANDSHAKE_BODY');
  }
  // RFC 6455 §4.1 (item 4) and §4.2.1 (item 2): exactly one Host. Node keeps only the first of several in
  // req.headers while rawHeaders, which are forwarded, keep them all: the upstream could then pick another
  // host than the one the guard saw and sent as X-Forwarded-Host. So the lines are counted.
  const hosts = headerCount(req, 'host');
  if (hosts !== 1) throw new GuardError('BAD_REQUEST', hosts === 0 ? 'no Host header' : `${hosts} Host headers`);
  const protocols = headerList(req.headers['sec-websocket-protocol']);
  if (protocols.some((p) => !TOKEN.test(p))) throw new GuardError('BAD_SUBPROTOCOL');
  return { key: key.trim(), protocols };
}
