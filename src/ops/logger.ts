import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger };

/**
 * Structured JSON logs on stdout. Credentials never belong in a log line; the redaction list is the
 * safety net for a header object logged by mistake.
 */
export function createLogger(level = process.env.WS_GUARD_LOG_LEVEL ?? 'info', destination?: DestinationStream): Logger {
  const options = {
    level,
    base: { service: 'ws-guard', pid: process.pid },
    redact: { paths: ['headers.authorization', 'headers.cookie', 'headers["sec-websocket-protocol"]'], censor: '[redacted]' },
  };
  return destination ? pino(options, destination) : pino(options);
}
