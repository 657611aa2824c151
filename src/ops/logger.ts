import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger };

/**
 * Structured JSON logs on stdout. Credentials never belong in a log line; the redaction list is the
 * safety net for a header object logged by mistake. Lines are written synchronously: pino's default
 * stream buffers, and its flush does not wait for a write in progress, so the audit lines of a drain
 * could be lost at exit.
 */
export function createLogger(level = process.env.WS_GUARD_LOG_LEVEL ?? 'info', destination?: DestinationStream): Logger {
  const options = {
    level,
    base: { service: 'ws-guard', pid: process.pid },
    redact: { paths: ['headers.authorization', 'headers.cookie', 'headers["sec-websocket-protocol"]'], censor: '[redacted]' },
  };
  return pino(options, destination ?? pino.destination({ dest: 1, sync: true }));
}
