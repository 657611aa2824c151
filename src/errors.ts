/**
 * The one catalogue of refusals. Every refusal the guard makes carries a stable code; the code decides
 * the HTTP status (before the upgrade) or the close code (after it). Tests and logs use the codes.
 */
/** RFC 6750 §3: a 401 names the scheme and why the token was not accepted. */
const BEARER_CHALLENGE = { 'WWW-Authenticate': 'Bearer error="invalid_token"' };

export const ERRORS = {
  BAD_METHOD: { status: 405, message: 'WebSocket upgrade must use GET' },
  BAD_HTTP_VERSION: { status: 400, message: 'WebSocket upgrade needs HTTP/1.1' },
  BAD_UPGRADE: { status: 400, message: 'Upgrade header must be exactly "websocket"' },
  BAD_KEY: { status: 400, message: 'missing or invalid Sec-WebSocket-Key' },
  BAD_SUBPROTOCOL: { status: 400, message: 'invalid Sec-WebSocket-Protocol' },
  BAD_VERSION: { status: 426, message: 'unsupported Sec-WebSocket-Version' },
  HANDSHAKE_BODY: { status: 400, message: 'a WebSocket upgrade must not carry a body' },
  BAD_REQUEST: { status: 400, message: 'malformed HTTP request' },
  TRANSFER_CODING: { status: 501, message: 'only the chunked transfer coding is supported' },
  HEADERS_TOO_LARGE: { status: 431, message: 'request headers too large' },
  HANDSHAKE_TIMEOUT: { status: 408, message: 'handshake not completed in time' },
  ORIGIN_DENIED: { status: 403, message: 'origin not allowed' },
  TOKEN_MISSING: { status: 401, close: 4001, message: 'no access token', headers: BEARER_CHALLENGE },
  TOKEN_INVALID: { status: 401, close: 4001, message: 'invalid access token', headers: BEARER_CHALLENGE },
  TOKEN_EXPIRED: { status: 401, close: 4001, message: 'access token expired', headers: BEARER_CHALLENGE },
  CLAIMS_INSUFFICIENT: { status: 403, close: 4003, message: 'access token does not grant this' },
  /** An operator closed the connection (admin POST /connections/close); the status is never sent. */
  CLOSED_BY_OPERATOR: { status: 403, close: 4003, message: 'closed by an operator' },
  /** An operator banned this user or address for a while (admin POST /connections/close with ban=). */
  BANNED: { status: 403, message: 'banned by an operator' },
  HANDSHAKE_RATE: { status: 429, message: 'too many handshakes from this address' },
  CONNECTIONS_FULL: { status: 503, message: 'connection limit reached' },
  CONNECTIONS_PER_IP: { status: 429, message: 'too many connections from this address' },
  CONNECTIONS_PER_USER: { status: 429, message: 'too many connections for this user' },
  /** store.onError: closed, and the shared limit store (Redis) cannot answer. */
  STORE_UNAVAILABLE: { status: 503, message: 'limit store unavailable' },
  HTTP_DENIED: { status: 404, message: 'not found' },
  REQUEST_RATE: { status: 429, message: 'too many requests' },
  REQUESTS_IN_FLIGHT: { status: 429, message: 'too many requests in flight from this address' },
  BODY_TOO_LARGE: { status: 413, message: 'request body too large' },
  REQUEST_TIMEOUT: { status: 408, message: 'request body not received in time' },
  UPSTREAM_UNREACHABLE: { status: 502, message: 'upstream unreachable' },
  UPSTREAM_BAD_HANDSHAKE: { status: 502, message: 'upstream answered with an invalid handshake' },
  UPSTREAM_BAD_RESPONSE: { status: 502, message: 'upstream answered with an invalid response' },
  UPSTREAM_TIMEOUT: { status: 504, message: 'upstream did not answer in time' },
  PROTOCOL_VIOLATION: { status: 400, close: 1002, message: 'WebSocket protocol violation' },
  MESSAGE_TOO_BIG: { status: 400, close: 1009, message: 'message too big' },
  INVALID_COMPRESSED: { status: 400, close: 1007, message: 'compressed message does not inflate' },
  TOO_MANY_FRAGMENTS: { status: 400, close: 1009, message: 'message has too many fragments' },
  MESSAGE_RATE: { status: 429, close: 1008, message: 'message rate limit exceeded' },
  CONTROL_FRAME_RATE: { status: 429, close: 1008, message: 'control frame rate limit exceeded' },
  IDLE_TIMEOUT: { status: 408, close: 1001, message: 'idle timeout' },
  MAX_LIFETIME: { status: 408, close: 1001, message: 'connection lifetime reached' },
  SHUTTING_DOWN: { status: 503, close: 1001, message: 'ws-guard is shutting down' },
  UPSTREAM_GONE: { status: 502, close: 1014, message: 'upstream connection lost' },
  INTERNAL_ERROR: { status: 500, close: 1011, message: 'internal error in ws-guard' },
} as const satisfies Record<string, ErrorEntry>;

interface ErrorEntry {
  status: number;
  close?: number;
  message: string;
  headers?: Readonly<Record<string, string>>;
}

export type ErrorCode = keyof typeof ERRORS;

/** The codes that can end an open connection, each with its RFC 6455 §7.4 close code. */
export type CloseReason = { [K in ErrorCode]: (typeof ERRORS)[K] extends { close: number } ? K : never }[ErrorCode];

export class GuardError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly closeCode: number | undefined;
  /** Extra response headers that belong to this refusal (Allow, Sec-WebSocket-Version, ...). */
  readonly headers: Readonly<Record<string, string>>;

  constructor(code: ErrorCode, detail?: string, headers: Record<string, string> = {}) {
    const entry: ErrorEntry = ERRORS[code];
    super(detail ? `${entry.message}: ${detail}` : entry.message);
    this.name = 'GuardError';
    this.code = code;
    this.status = entry.status;
    this.closeCode = entry.close;
    this.headers = { ...entry.headers, ...headers };
  }
}
