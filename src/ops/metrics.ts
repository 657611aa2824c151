import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { GuardConfig } from '../config/schema.js';
import { ERRORS, type ErrorCode } from '../errors.js';
import { routeName, type GuardEvents } from '../events.js';
import type { Guard } from '../server/guard.js';

/*
 * Every label value comes from a fixed set: the functions below map what the wire, a peer or the upstream
 * chose onto it, so a client cannot make a new series (issue: 1,000 closes with 5000+i made 1,002 series).
 * `route` and `pool` are configured route prefixes (Route.path), never the request path; nothing is
 * taken from a header or a claim. docs/operations.md lists the sets.
 */

/**
 * Close codes kept as they are: those of RFC 6455 §7.4.1 and the IANA registry that may appear in a close
 * frame (1000–1003, 1007–1014), 1005 and 1006 as the guard reports a close without a code or without a
 * close frame, and the guard's own codes (the catalogue's 4001 and 4003). 1004 and 1015 must never be
 * sent, so a peer sending them is `other`.
 */
const KEPT_CLOSE_CODES: ReadonlySet<number> = new Set([
  1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
  ...Object.values(ERRORS).flatMap((e) => ('close' in e ? [e.close] : [])),
]);

/** Every value `ws_guard_closes_total{code}` can take. */
export const CLOSE_CODE_LABELS: readonly string[] = [...[...KEPT_CLOSE_CODES].sort((a, b) => a - b).map(String), '3xxx', '4xxx', 'other'];

/** The `code` label of a close code: a kept code itself, `3xxx` (registered), `4xxx` (private use), or `other`. */
export function closeCodeLabel(code: number): string {
  if (KEPT_CLOSE_CODES.has(code)) return String(code);
  if (Number.isInteger(code) && code >= 3000 && code <= 3999) return '3xxx';
  if (Number.isInteger(code) && code >= 4000 && code <= 4999) return '4xxx';
  return 'other';
}

export const CLOSED_BY_LABELS = ['client', 'upstream', 'guard'] as const;

/** The `closed_by` label; the session only reports the three, anything else would be `other`. */
export function closedByLabel(side: string): string {
  return (CLOSED_BY_LABELS as readonly string[]).includes(side) ? side : 'other';
}

/** Every value `ws_guard_rejections_total{reason}` can take: the error catalogue, the relayed upstream refusal, `other` (never made). */
export const REASON_LABELS: readonly string[] = [...Object.keys(ERRORS), 'UPSTREAM_REFUSED', 'other'];

/** The statuses the guard itself answers refusals with (the catalogue's). */
const GUARD_STATUSES: ReadonlySet<number> = new Set(Object.values(ERRORS).map((e) => e.status));
const STATUS_CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx'] as const;

/** Every value `ws_guard_rejections_total{status}` can take. */
export const STATUS_LABELS: readonly string[] = [...[...GUARD_STATUSES].sort((a, b) => a - b).map(String), ...STATUS_CLASSES, 'other'];

/** The class of an HTTP status chosen by the upstream: `1xx`…`5xx`, or `other` outside 100–599. */
export function statusClassLabel(status: number): string {
  return Number.isInteger(status) && status >= 100 && status <= 599 ? STATUS_CLASSES[Math.floor(status / 100) - 1]! : 'other';
}

/** The labels of a refusal the guard made: its catalogue code and the catalogue's status for it. */
export function refusalLabels(code: ErrorCode, status: number): { reason: string; status: string } {
  if (!Object.hasOwn(ERRORS, code)) return { reason: 'other', status: statusClassLabel(status) };
  return { reason: code, status: GUARD_STATUSES.has(status) ? String(status) : statusClassLabel(status) };
}

/** The labels of a non-101 the upstream answered (relayed to the client): its status class only. */
export function upstreamRefusalLabels(status: number): { reason: string; status: string } {
  return { reason: 'UPSTREAM_REFUSED', status: statusClassLabel(status) };
}

/**
 * Prometheus metrics, built from the guard's events and, at scrape time, from the open sessions: nothing
 * is counted per message on the hot path. Message and byte totals are those of closed connections plus
 * what the open ones have moved so far.
 */
export function createMetrics(config: GuardConfig, events: GuardEvents, guard: () => Guard | undefined): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'ws_guard_' });
  const activeByRoute = new Map<string, number>();
  const closedTotals = { messagesIn: 0, messagesOut: 0, bytesIn: 0, bytesOut: 0 };

  new Gauge({
    name: 'ws_guard_connections_active', help: 'Open proxied WebSocket connections', labelNames: ['route'], registers: [registry],
    collect() {
      this.reset();
      for (const [route, n] of activeByRoute) this.set({ route: routeName(route) }, n);
    },
  });
  const opened = new Counter({ name: 'ws_guard_connections_opened_total', help: 'Connections proxied', labelNames: ['route'], registers: [registry] });
  const rejections = new Counter({
    name: 'ws_guard_rejections_total', help: 'Upgrades refused, by reason (the error code)', labelNames: ['reason', 'status'], registers: [registry],
  });
  const closes = new Counter({
    name: 'ws_guard_closes_total', help: 'Connections ended, by close code and who closed', labelNames: ['code', 'closed_by'], registers: [registry],
  });
  const handshake = new Histogram({
    name: 'ws_guard_handshake_duration_seconds', help: 'From the upgrade request to the 101 or the refusal',
    labelNames: ['outcome'], buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], registers: [registry],
  });
  const live = () => {
    const totals = { ...closedTotals };
    for (const session of guard()?.sessions ?? []) {
      const c = session.counts;
      totals.messagesIn += c.messagesIn;
      totals.messagesOut += c.messagesOut;
      totals.bytesIn += c.bytesIn;
      totals.bytesOut += c.bytesOut;
    }
    return totals;
  };
  const perDirection = (name: string, help: string, inbound: keyof typeof closedTotals, outbound: keyof typeof closedTotals) =>
    new Counter({
      name, help, labelNames: ['direction'], registers: [registry],
      collect() {
        const t = live();
        this.reset();
        this.inc({ direction: 'client_to_upstream' }, t[inbound]);
        this.inc({ direction: 'upstream_to_client' }, t[outbound]);
      },
    });
  perDirection('ws_guard_messages_total', 'WebSocket data messages, by direction', 'messagesIn', 'messagesOut');
  perDirection('ws_guard_bytes_total', 'WebSocket bytes on the wire (frames), by direction', 'bytesIn', 'bytesOut');
  new Gauge({
    name: 'ws_guard_slot_usage_ratio', help: 'Connection slots in use over the total cap, by pool', labelNames: ['pool'], registers: [registry],
    collect() {
      this.reset();
      const all = [...activeByRoute.values()].reduce((a, b) => a + b, 0);
      if (config.limits.connections?.total) this.set({ pool: '(all)' }, all / config.limits.connections.total);
      for (const route of config.routes) {
        const total = route.ownConnectionPool ? route.limits.connections?.total : undefined;
        if (total) this.set({ pool: route.path }, (activeByRoute.get(route.path) ?? 0) / total);
      }
    },
  });

  if (config.store) {
    // With workers the primary reports the lowest: 0 when any worker cannot reach the store.
    const up = new Gauge({
      name: 'ws_guard_store_up', help: 'Whether the shared limit store (Redis) answers: 1 yes, 0 no (store.onError applies)', registers: [registry], aggregator: 'min',
    });
    const transitions = new Counter({
      name: 'ws_guard_store_transitions_total', help: 'Times the shared limit store went down or came back up', labelNames: ['state'], registers: [registry],
    });
    events.on('store', (e) => {
      up.set(e.state === 'up' ? 1 : 0);
      transitions.inc({ state: e.state });
    });
  }
  events.on('opened', (e) => {
    activeByRoute.set(e.route, (activeByRoute.get(e.route) ?? 0) + 1);
    opened.inc({ route: routeName(e.route) });
    handshake.observe({ outcome: 'accepted' }, e.durationMs / 1000);
  });
  events.on('refused', (e) => {
    rejections.inc(refusalLabels(e.code, e.status));
    handshake.observe({ outcome: 'refused' }, e.durationMs / 1000);
  });
  events.on('upstreamRefused', (e) => rejections.inc(upstreamRefusalLabels(e.status)));
  const requests = new Counter({
    name: 'ws_guard_http_requests_total', help: 'Plain HTTP requests, by route and status class (none: the client left before any answer)',
    labelNames: ['route', 'status'], registers: [registry],
  });
  const requestRefusals = new Counter({
    name: 'ws_guard_http_refusals_total', help: 'Plain HTTP requests the guard answered itself, by reason (the error code)',
    labelNames: ['reason', 'status'], registers: [registry],
  });
  events.on('requestDone', (e) => {
    requests.inc({ route: e.route === undefined ? '(none)' : routeName(e.route), status: e.status === undefined ? 'none' : statusClassLabel(e.status) });
  });
  events.on('requestRefused', (e) => requestRefusals.inc(refusalLabels(e.code, e.status)));
  events.on('closed', (e) => {
    activeByRoute.set(e.route, (activeByRoute.get(e.route) ?? 1) - 1);
    closes.inc({ code: closeCodeLabel(e.closeCode), closed_by: closedByLabel(e.closedBy) });
    closedTotals.messagesIn += e.messagesIn;
    closedTotals.messagesOut += e.messagesOut;
    closedTotals.bytesIn += e.bytesIn;
    closedTotals.bytesOut += e.bytesOut;
  });
  return registry;
}

/** What the admin listener serves from one registry. */
export function metricsSource(registry: Registry) {
  return async () => ({ contentType: registry.contentType, text: await registry.metrics() });
}
