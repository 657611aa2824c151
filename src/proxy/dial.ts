import http, { type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { GuardError } from '../errors.js';
import { acceptFor, headerList } from '../http/headers.js';
import { isFinalStatus, upstreamFailure } from './answer.js';
import { armUpstreamDeadlines } from './deadlines.js';

/**
 * The extension offers the upstream may see: only permessage-deflate, since the inspector must understand
 * every RSV bit in use (RFC 6455 §5.2), and none at all with `compression: off`.
 */
export function deflateOffers(offered: string | string[] | undefined, compression: 'passthrough' | 'off'): string[] {
  if (compression === 'off') return [];
  return headerList(offered).filter((e) => /^permessage-deflate\s*(;|$)/i.test(e));
}

export interface DialOptions {
  host: string;
  port: number;
  path: string;
  /** Flat raw header list for the upstream handshake. */
  headers: string[];
  key: string;
  /** What the upstream may pick from: the protocols and extensions the guard forwarded. */
  offeredProtocols: readonly string[];
  offeredDeflate: boolean;
  connectTimeoutMs: number;
  responseTimeoutMs: number;
  /** Aborts the dial, e.g. when the client went away meanwhile. */
  signal: AbortSignal;
}

export type DialResult =
  | {
    kind: 'upgraded';
    response: IncomingMessage;
    socket: Socket;
    head: Buffer;
    /** permessage-deflate was negotiated; with client_no_context_takeover, each client message stands alone. */
    compressed: boolean;
    clientNoContextTakeover: boolean;
  }
  | { kind: 'refused'; response: IncomingMessage };

/**
 * Sends the client's handshake to the upstream and checks its answer. A 101 is accepted only when it is
 * a valid answer to what the client offered (RFC 6455 §4.1, client steps 1–6); anything else that is an
 * HTTP response is handed back to be relayed, never turned into a tunnel.
 */
export function dialUpstream(options: DialOptions): Promise<DialResult> {
  return new Promise((resolve, reject) => {
    const fail = (err: GuardError) => {
      disarm();
      req.destroy();
      reject(err);
    };
    const req = http.request({
      host: options.host,
      port: options.port,
      path: options.path,
      method: 'GET',
      headers: options.headers,
      agent: false,
      signal: options.signal,
    });
    const disarm = armUpstreamDeadlines(req, options.connectTimeoutMs, options.responseTimeoutMs, (what) => {
      fail(new GuardError('UPSTREAM_TIMEOUT', what === 'connect' ? 'connect' : 'handshake'));
    });
    req.on('error', (err: NodeJS.ErrnoException) => {
      fail(upstreamFailure(err));
    });
    req.on('response', (response) => {
      // Node emits a 101 as a plain response when it lacks `Upgrade` or `Connection: Upgrade`. RFC 6455 §4.1
      // (client steps 2 and 3) fails such a 101; relayed as a refusal it would tell the client a protocol
      // switch happened on a connection the guard is about to close.
      if (response.statusCode === 101) {
        fail(new GuardError('UPSTREAM_BAD_HANDSHAKE', '101 without Upgrade: websocket and Connection: Upgrade'));
        return;
      }
      // The answer is relayed to the client: a status outside 200–599 cannot be (design.md §1, totality).
      if (!isFinalStatus(response.statusCode)) {
        fail(new GuardError('UPSTREAM_BAD_RESPONSE', `status ${response.statusCode}`));
        return;
      }
      disarm();
      resolve({ kind: 'refused', response });
    });
    req.on('upgrade', (response, socket, head) => {
      disarm();
      const problem = checkAnswer(response, options);
      if (problem !== null) {
        socket.destroy();
        reject(new GuardError('UPSTREAM_BAD_HANDSHAKE', problem));
        return;
      }
      const extensions = headerList(response.headers['sec-websocket-extensions']);
      const params = extensions[0]?.split(';').map((p) => p.trim().toLowerCase()) ?? [];
      resolve({
        kind: 'upgraded', response, socket, head,
        compressed: extensions.length > 0,
        clientNoContextTakeover: params.includes('client_no_context_takeover'),
      });
    });
    req.end();
  });
}

/** Why a 101 is not a valid answer to the forwarded handshake, or null when it is. */
function checkAnswer(response: IncomingMessage, options: DialOptions): string | null {
  if (response.statusCode !== 101) return `status ${response.statusCode} with Upgrade`;
  if (response.headers.upgrade?.toLowerCase() !== 'websocket') return 'Upgrade is not websocket';
  if (response.headers['sec-websocket-accept'] !== acceptFor(options.key)) return 'wrong Sec-WebSocket-Accept';
  const protocol = response.headers['sec-websocket-protocol'];
  if (protocol !== undefined && !options.offeredProtocols.includes(protocol)) {
    return `subprotocol "${protocol}" was not offered`;
  }
  const extensions = headerList(response.headers['sec-websocket-extensions']);
  const names = extensions.map((e) => e.split(';')[0]!.trim().toLowerCase());
  if (names.some((name) => name !== 'permessage-deflate') || names.length > 1) {
    return `extension "${extensions.join(', ')}" was not offered`;
  }
  if (names.length === 1 && !options.offeredDeflate) return 'permessage-deflate was not offered';
  return null;
}
