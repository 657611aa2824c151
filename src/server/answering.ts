import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

/**
 * The answer Node's server is still writing on this client connection, if any: Node keeps it on the socket
 * until it has finished, then detaches it. Pipelined requests make this matter, since nothing may be
 * written on the connection before that answer is complete.
 */
export function answering(socket: Socket): ServerResponse | undefined {
  return (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage ?? undefined;
}
