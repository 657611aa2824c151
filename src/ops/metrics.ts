import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { GuardConfig } from '../config/schema.js';
import { routeName, type GuardEvents } from '../events.js';
import type { Guard } from '../server/guard.js';

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

  events.on('opened', (e) => {
    activeByRoute.set(e.route, (activeByRoute.get(e.route) ?? 0) + 1);
    opened.inc({ route: routeName(e.route) });
    handshake.observe({ outcome: 'accepted' }, e.durationMs / 1000);
  });
  events.on('refused', (e) => {
    rejections.inc({ reason: e.code, status: String(e.status) });
    handshake.observe({ outcome: 'refused' }, e.durationMs / 1000);
  });
  events.on('upstreamRefused', (e) => rejections.inc({ reason: 'UPSTREAM_REFUSED', status: String(e.status) }));
  events.on('closed', (e) => {
    activeByRoute.set(e.route, (activeByRoute.get(e.route) ?? 1) - 1);
    closes.inc({ code: String(e.closeCode), closed_by: e.closedBy });
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
