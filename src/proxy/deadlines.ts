import type { ClientRequest } from 'node:http';

/**
 * Arms the two upstream deadlines of a request: the TCP connect, then the answer, counted from when the
 * request (with its body) has been sent. Returns the function that disarms them.
 */
export function armUpstreamDeadlines(
  req: ClientRequest,
  connectMs: number,
  responseMs: number,
  onTimeout: (what: 'connect' | 'response') => void,
): () => void {
  let timer: NodeJS.Timeout | undefined;
  let done = false;
  const arm = (ms: number, what: 'connect' | 'response') => {
    clearTimeout(timer);
    if (!done) timer = setTimeout(() => onTimeout(what), ms);
  };
  req.once('socket', (socket) => {
    if (socket.connecting) {
      arm(connectMs, 'connect');
      socket.once('connect', () => clearTimeout(timer));
    }
  });
  req.once('finish', () => arm(responseMs, 'response'));
  return () => {
    done = true;
    clearTimeout(timer);
  };
}
