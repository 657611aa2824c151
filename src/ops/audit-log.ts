import { routeName, type GuardEvents } from '../events.js';
import type { Logger } from './logger.js';

/**
 * The log lines: one per refusal (code, status, why), one audit line per connection end (who, how long,
 * messages and bytes each way, close code and who closed), and the lifecycle. Events carry no tokens
 * (paths are redacted where they are made); pino's redaction is the second net.
 */
export function attachLogger(events: GuardEvents, logger: Logger): void {
  events.on('listening', (e) => logger.info({ listen: e.address, upstream: e.upstream }, 'ws-guard listening'));
  events.on('refused', (e) => {
    // A refusal before the route is known (a malformed request) names none.
    const route = e.route === undefined ? undefined : routeName(e.route);
    logger.info({ code: e.code, status: e.status, closeCode: e.closeCode, ip: e.ip, path: e.path, route, detail: e.detail }, 'upgrade refused');
  });
  events.on('upstreamRefused', (e) => logger.info({ status: e.status, ip: e.ip, path: e.path }, 'upstream refused the upgrade'));
  events.on('opened', (e) => logger.debug({ ...e, route: routeName(e.route) }, 'connection open'));
  events.on('closed', (e) => {
    logger.info(
      {
        session: e.id, ip: e.ip, user: e.user, route: routeName(e.route), path: e.path, durationMs: e.durationMs,
        messagesIn: e.messagesIn, messagesOut: e.messagesOut, bytesIn: e.bytesIn, bytesOut: e.bytesOut,
        closeCode: e.closeCode, closedBy: e.closedBy, reason: e.reason, detail: e.detail,
      },
      'connection closed',
    );
  });
  events.on('slotsWarning', (e) => logger.warn({ pool: e.pool || '(all)', usage: e.ratio, warnAt: e.warnAt }, 'connection slots nearly exhausted'));
  events.on('requestRefused', (e) => {
    const route = e.route === undefined ? undefined : routeName(e.route);
    const line = { code: e.code, status: e.status, method: e.method, ip: e.ip, path: e.path, route, detail: e.detail };
    // The guard's own refusals are the audit trail; an upstream that failed is an operator's warning.
    if (e.status >= 500) logger.warn(line, 'request failed');
    else logger.info(line, 'request refused');
  });
  events.on('requestDone', (e) => logger.debug({ ...e, route: e.route === undefined ? undefined : routeName(e.route) }, 'request done'));
  events.on('draining', (e) => logger.info(e, 'draining'));
  events.on('store', (e) => {
    if (e.state === 'down') logger.warn({ reason: e.reason, onError: e.onError }, `limit store unreachable: admission follows store.onError (${e.onError})`);
    else logger.info({ reason: e.reason }, 'limit store reachable: this replica\'s slot counts written back');
  });
  events.on('internalError', (e) => logger.error({ err: e.err, where: e.where }, 'internal error'));
}
