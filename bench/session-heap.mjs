// Heap bytes per Session, by what they are: N sessions over connected loopback sockets, a V8 heap snapshot
// before and after building them, and the difference per constructor divided by N. Deterministic where RSS
// (row f) is not: it counts the session's own objects only, not socket buffers or the allocator. With a
// build that takes sockets apart (handle-leg.ts), the sockets' own objects are freed, and show as negative.
//
//   node --expose-gc bench/session-heap.mjs [dist] [sessions]      (dist: ./dist, sessions: 1000)
import { once } from 'node:events';
import net from 'node:net';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import v8 from 'node:v8';

const dist = path.resolve(process.argv[2] ?? 'dist');
const N = Number(process.argv[3] ?? 1000);
if (typeof globalThis.gc !== 'function') throw new Error('run with node --expose-gc');
const { Session } = await import(pathToFileURL(`${dist}/proxy/session.js`).href);
const { HoldBudget } = await import(pathToFileURL(`${dist}/limits/hold-budget.js`).href);
// A build with handle legs takes the sockets apart as upgrade.ts does (their objects then show as freed);
// an older one runs its sessions on the sockets.
const { takeLeg } = await import(pathToFileURL(`${dist}/proxy/handle-leg.js`).href).catch(() => ({}));
function legOf(index) {
  const socket = ours[index];
  if (!takeLeg) return socket;
  ours[index] = null;
  return takeLeg(socket);
}

const server = net.createServer();
server.listen(0, '127.0.0.1');
await once(server, 'listening');
const accepted = [];
server.on('connection', (socket) => accepted.push(socket));
const ours = [];
for (let i = 0; i < 2 * N; i++) {
  const socket = net.connect(server.address().port, '127.0.0.1');
  await once(socket, 'connect');
  ours.push(socket);
}
while (accepted.length < 2 * N) await new Promise((resolve) => setTimeout(resolve, 10));

/** Self size and count per node type and name, after a full collection. */
async function census() {
  for (let i = 0; i < 3; i++) {
    globalThis.gc();
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const chunks = [];
  for await (const chunk of v8.getHeapSnapshot()) chunks.push(chunk);
  const snap = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  const fields = snap.snapshot.meta.node_fields;
  const types = snap.snapshot.meta.node_types[0];
  const [type, name, size] = ['type', 'name', 'self_size'].map((f) => fields.indexOf(f));
  const totals = new Map();
  for (let i = 0; i < snap.nodes.length; i += fields.length) {
    const key = `${types[snap.nodes[i + type]]} ${snap.strings[snap.nodes[i + name]].slice(0, 40)}`;
    const entry = totals.get(key) ?? { count: 0, bytes: 0 };
    entry.count++;
    entry.bytes += snap.nodes[i + size];
    totals.set(key, entry);
  }
  return totals;
}

// The options of the bench's policies setup, as far as a session sees them: limits on, a token that expires.
const budget = new HoldBudget(1 << 20);
const limits = { maxMessageBytes: 1 << 20, maxFragments: Infinity, onMessageStart: () => 0, onControlFrame: () => true };
const before = await census();
const sessions = [];
for (let i = 0; i < N; i++) {
  sessions.push(new Session({
    id: i, client: legOf(2 * i), upstream: legOf(2 * i + 1), clientHead: Buffer.alloc(0), upstreamHead: Buffer.alloc(0),
    compressed: false, closeTimeoutMs: 5000, expiresAt: Date.now() + 3_600_000, messageLimits: limits,
    clientNoContextTakeover: false, idleTimeoutMs: 300_000, maxLifetimeMs: 86_400_000, holdBudget: budget,
  }));
}
const after = await census();

// What comes with every session (half an object per session or more); the rest is compiled code and
// internal tables that grew meanwhile, reported apart.
let total = 0;
let other = 0;
const rows = [];
for (const [key, entry] of after) {
  const bytes = (entry.bytes - (before.get(key)?.bytes ?? 0)) / N;
  const count = (entry.count - (before.get(key)?.count ?? 0)) / N;
  if (Math.abs(count) < 0.5) {
    other += bytes;
    continue;
  }
  total += bytes;
  rows.push([key, count, bytes]);
}
rows.sort((a, b) => b[2] - a[2]);
console.log(`${dist}: ${total.toFixed(0)} heap bytes per session (${N} sessions; code and internal tables apart: ${other.toFixed(0)} B)`);
for (const [key, count, bytes] of rows) console.log(`  ${key.padEnd(48)} ${count.toFixed(2).padStart(6)} × ${(bytes / count).toFixed(0).padStart(5)} B = ${bytes.toFixed(0).padStart(5)} B`);
process.exit(0);
