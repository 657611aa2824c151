// Benchmark upstream: a minimal WebSocket echo server on the `ws` package, permessage-deflate off.
// Usage: node bench/upstream.mjs <port>
// Prints one line `ready <port>` on stdout once listening. Exits when stdin closes (the bench died or
// finished), on SIGTERM/SIGINT, or after a hard lifetime cap, so it can never outlive the bench.
import { exitWithBench } from './proc.mjs';
import http from 'node:http';
import { WebSocketServer } from 'ws';

const port = Number(process.argv[2] ?? 0);
const MAX_LIFETIME_MS = 15 * 60_000;

const server = http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/plain' });
  res.end('bench upstream\n');
});
const wss = new WebSocketServer({ server, perMessageDeflate: false, clientTracking: false, maxPayload: 16 * 1024 * 1024 });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => ws.terminate());
});

exitWithBench(MAX_LIFETIME_MS);

server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`ready ${server.address().port}\n`);
});
