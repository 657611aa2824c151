// Benchmark upstream for row g: a node:http server that answers every request with the same small body
// (200, Content-Length, keep-alive). Idle keep-alive connections are never timed out, so the proxies'
// upstream pools are not closed under them between tests.
// Usage: node bench/http-upstream.mjs <port>
// (The ws-guard and nginx configs the bench writes for row g keep their upstream connections alive too.)
// Prints one line `ready <port>` on stdout once listening. Exits when stdin closes (the bench died or
// finished), on SIGTERM/SIGINT, or after a hard lifetime cap, so it can never outlive the bench.
import http from 'node:http';
import { exitWithBench } from './proc.mjs';

const port = Number(process.argv[2] ?? 0);
const MAX_LIFETIME_MS = 15 * 60_000;
const BODY = Buffer.from('bench upstream: plain HTTP ok\n'); // 30 bytes

// GET /_stats answers "<connections accepted> <requests answered>" (itself included), so the load
// generator can tell whether a proxy reuses its upstream connections.
let connections = 0;
let requests = 0;

const server = http.createServer({ keepAliveTimeout: 0, requestTimeout: 0 }, (req, res) => {
  requests++;
  // A request body (none in the bench) is read and dropped so the connection stays usable.
  req.resume();
  if (req.url === '/_stats') {
    res.end(`${connections} ${requests}\n`);
    return;
  }
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': BODY.length });
  res.end(BODY);
});
server.on('connection', () => connections++);
server.keepAliveTimeout = 0; // 0: an idle keep-alive connection is never closed by the server
server.maxRequestsPerSocket = 0;

exitWithBench(MAX_LIFETIME_MS);

server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`ready ${server.address().port}\n`);
});
