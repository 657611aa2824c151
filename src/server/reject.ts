import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import type { GuardError } from '../errors.js';

/**
 * The one place that answers a refused upgrade: a complete HTTP response with `Connection: close`, then
 * the socket is destroyed once it is written. Nothing the client sent goes anywhere.
 */
export function writeRefusal(socket: Duplex, err: GuardError): void {
  if (socket.destroyed || !socket.writable) {
    socket.destroy();
    return;
  }
  const body = `${err.message}\n`;
  let head = `HTTP/1.1 ${err.status} ${STATUS_CODES[err.status] ?? ''}\r\n`;
  head += 'Connection: close\r\nContent-Type: text/plain; charset=utf-8\r\n';
  head += `Content-Length: ${Buffer.byteLength(body)}\r\nX-WS-Guard-Error: ${err.code}\r\n`;
  for (const [name, value] of Object.entries(err.headers)) head += `${name}: ${value}\r\n`;
  socket.once('finish', () => socket.destroy());
  socket.end(`${head}\r\n${body}`);
}
