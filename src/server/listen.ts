import type { Server } from 'node:net';

/** The failures an operator meets most, in words; any other is named by its code. */
const REASONS: Readonly<Record<string, string>> = {
  EADDRINUSE: 'address already in use',
  EACCES: 'permission denied',
  EADDRNOTAVAIL: 'address not available',
};

/** `host:port`, with an IPv6 host in brackets. */
export function formatAddress(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * A listener that could not start. Its message is the whole story in one line (which listener, which
 * address, why), because at startup a stack trace says less than that.
 */
export class ListenError extends Error {
  readonly code: string | undefined;

  constructor(listener: string, address: string, cause: NodeJS.ErrnoException) {
    const why = (cause.code !== undefined ? REASONS[cause.code] ?? cause.code : undefined) ?? cause.message;
    super(`cannot listen on ${address} (${listener}): ${why}`, { cause });
    this.name = 'ListenError';
    this.code = cause.code;
  }
}

/** Listens on host:port, or rejects with a ListenError naming `listener` (the config key). */
export function listen(server: Server, host: string, port: number, listener: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const fail = (err: NodeJS.ErrnoException) => reject(new ListenError(listener, formatAddress(host, port), err));
    server.once('error', fail);
    server.listen(port, host, () => {
      server.off('error', fail);
      resolve();
    });
  });
}
