import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { GuardConfig } from '../config/schema.js';
import { GuardError } from '../errors.js';
import type { GuardEvents } from '../events.js';
import { armUpstreamDeadlines } from '../proxy/deadlines.js';
import { pathRedactor } from './redact.js';
import { upstreamHeaders, withoutHopByHop, type ForwardContext } from './forwarded.js';

/**
 * Plain HTTP requests go to the upstream and back as streams: neither body is buffered, and a slow
 * reader on one side slows the other through `pipe`.
 */
export function createHttpPassThrough(config: GuardConfig, events: GuardEvents, identityHeaders: ReadonlySet<string>) {
  const logPath = pathRedactor(config);
  const agent = new http.Agent({ keepAlive: true, maxFreeSockets: 64 });

  return function passThrough(req: IncomingMessage, res: ServerResponse, ctx: ForwardContext): void {
    const upstreamReq = http.request({
      host: config.upstream.host,
      port: config.upstream.port,
      method: req.method,
      path: req.url,
      headers: upstreamHeaders(req.rawHeaders, ctx, identityHeaders),
      agent,
    });
    const refuse = (err: GuardError) => {
      disarm();
      upstreamReq.destroy();
      events.emit('httpError', { code: err.code, status: err.status, method: req.method ?? '', path: logPath(req.url), ip: ctx.peer, detail: err.message });
      if (res.headersSent) {
        res.destroy();
        return;
      }
      res.writeHead(err.status, { 'Content-Type': 'text/plain; charset=utf-8', Connection: 'close', 'X-WS-Guard-Error': err.code });
      res.end(`${err.message}\n`);
    };
    const { upstreamConnect, upstreamResponse } = config.timeouts;
    const disarm = armUpstreamDeadlines(upstreamReq, upstreamConnect, upstreamResponse, (what) => {
      refuse(new GuardError('UPSTREAM_TIMEOUT', what));
    });

    upstreamReq.on('error', (err: NodeJS.ErrnoException) => {
      refuse(new GuardError('UPSTREAM_UNREACHABLE', err.code ?? err.message));
    });
    upstreamReq.on('response', (upstreamRes) => {
      disarm();
      res.writeHead(upstreamRes.statusCode ?? 502, upstreamRes.statusMessage, withoutHopByHop(upstreamRes.rawHeaders));
      upstreamRes.pipe(res);
      upstreamRes.on('error', () => res.destroy());
    });
    // A client that leaves mid-request must not leave the upstream request hanging.
    res.on('close', () => {
      disarm();
      if (!res.writableFinished) upstreamReq.destroy();
    });
    req.pipe(upstreamReq);
  };
}
