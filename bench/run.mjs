#!/usr/bin/env node
// ws-guard benchmark: direct vs ws-guard vs nginx, side by side, in one run.  `npm run bench`
//
// Every process runs on 127.0.0.1. The proxy under test (ws-guard, or nginx master+worker) is pinned to
// CPU 0 with taskset; the echo upstream (bench/upstream.mjs, `ws`, no compression) and the raw-socket
// load generator (bench/load.mjs) are pinned to CPU 1. CPU per message is utime+stime of the proxy
// process(es) from /proc/<pid>/stat across the measured window, divided by the messages echoed in it.
// Row g does the same for plain HTTP: keep-alive GETs to bench/http-upstream.mjs, CPU per request.
// Row h: short-lived WebSockets (upgrade, close), latency to the 101 and CPU per upgrade. The
// policies+redis setup runs Debian's redis-server as its limit store, pinned with the upstream. The
// node-floor setup (bench/node-floor.mjs) is Node's floor: a bare relay on raw handles, pinned like a proxy.
// See docs/performance.md for what each row means. `node bench/run.mjs --help` lists the flags.
import { spawn, execFileSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { alive, childrenOf, commOf } from './proc.mjs';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const BENCH = path.join(ROOT, 'bench');

const DEFAULTS = {
  setups: 'direct,ws-guard,policies,policies+redis,nginx',
  rate: 10000, // offered msg/s for rows a-c (20k already loads the upstream+load core to 85-99% on the 2-core VM)
  conns: 50, // connections for rows a-c
  duration: 2.5, // s, measured window of each load test
  warmup: 1, // s, load before each measured window (JIT, buffers)
  reps: 3, // repetitions of each load test, setups interleaved; the table shows the median
  'small-size': 64,
  'mid-size': 4096,
  'sat-conns': 50,
  'sat-depth': 32,
  'big-size': 65536,
  'big-conns': 8,
  'big-depth': 4,
  'idle-conns': 5000,
  'idle-settle': 2, // s to let the proxy settle before each RSS reading
  'idle-reps': 1, // repetitions of row f, setups interleaved (each opens a fresh proxy, so they are dear)
  'http-conns': 50, // keep-alive connections for row g, one request in flight on each
  'http-rate': 0, // offered req/s for row g; 0: saturation (each answer is followed at once by the next request)
  'hs-rate': 200, // offered upgrades/s for row h; 0: closed loop (--hs-conns connections at all times)
  'hs-conns': 200, // row h: connections alive at most (fixed rate) or at all times (closed loop)
  'storm-conns': 5000, // row i: clients that start their upgrade at the same moment
  'proxy-cpu': '0',
  'load-cpu': '1',
  guard: 'bin/ws-guard.js', // the ws-guard entry to run (another build can be compared with --guard)
  'guard-node': '', // node binary for ws-guard (default: the one running the bench)
  'guard-env': '', // extra environment for ws-guard, KEY=VALUE[,KEY=VALUE] (e.g. glibc MALLOC_* tunables)
  upstream: 'ws', // echo upstream for rows a-c and f: ws (bench/upstream.mjs) or raw (bench/raw-upstream.mjs)
  'sat-upstream': 'raw', // echo upstream for rows d-e (the ws one saturates the shared core first)
  nginx: '/usr/sbin/nginx',
  redis: '/usr/bin/redis-server', // the limit store of the policies+redis setup
  'redis-batch': 0, // store.batch of policies+redis; 0: ws-guard's default (auto: 100 ms of the rate)
  json: '', // also write the raw results to this file
  build: false, // run `npx tsc -p tsconfig.build.json` first
  tests: 'a,b,c,d,e,f,g,h,i', // subset of rows to run (c comes with a)
  quick: false,
  targets: false, // issue 13's preset (TARGETS) and its Targets table
};
const SETUPS = ['direct', 'ws-guard', 'policies', 'policies+redis', 'node-floor', 'nginx'];
const QUICK = { reps: 1, duration: 1.2, warmup: 0.5, 'idle-conns': 1000, 'idle-settle': 0.5, 'idle-reps': 1 };
/**
 * `npm run bench:targets`: the rows issue 13 sets targets on (its "g", the reconnect storm, is our row i),
 * with nginx beside them and direct as the load core's own ceiling. Five repetitions, because the policies
 * target (+5 %) is far inside one run's noise (±25 %); about 7 minutes on the 2-core VM. No --guard-env:
 * row b's target is for ws-guard as a user starts it.
 */
const TARGETS = { tests: 'a,b,e,f,i', setups: 'direct,ws-guard,policies,node-floor,nginx', reps: 5, 'idle-reps': 3 };

const flagList = (preset) => Object.entries(preset).map(([k, v]) => `--${k} ${v}`).join(', ');
const HELP = `Usage: node bench/run.mjs [--quick] [--targets] [--flag value ...]   (npm run bench -- --quick)

Compares client -> upstream (direct), client -> ws-guard -> upstream and client -> nginx -> upstream.
Flags (defaults in brackets):
  --quick               ~75 s smoke run (${flagList(QUICK)})
  --targets             issue 13's targets (npm run bench:targets): ${flagList(TARGETS)};
                        ends with a Targets table: each figure, its ratio to nginx (policies: to ws-guard), Node's
                        floor (node-floor) beside it, met or not
  --setups LIST         comma list of ${SETUPS.join(',')} [${DEFAULTS.setups}]
                        (policies: ws-guard with JWT-authenticated connections, message rate and size limits,
                        connection and handshake limits, idle timeout, all set high enough never to refuse;
                        policies+redis: the same with store.redis, a redis-server the bench starts, and
                        limits.messages per: user, so slots, handshake rates and message tokens are in Redis;
                        node-floor: bench/node-floor.mjs, a TCP relay on Node's raw handles with nothing of
                        ws-guard in it, the least Node costs per read and per connection)
  --rate N              offered msg/s for rows a-c [${DEFAULTS.rate}]
  --conns N             connections for rows a-c [${DEFAULTS.conns}]
  --duration S          measured seconds per load test [${DEFAULTS.duration}]
  --warmup S            unmeasured seconds of load before each window [${DEFAULTS.warmup}]
  --reps N              repetitions of each load test (median shown) [${DEFAULTS.reps}]
  --small-size B        message size for rows a, c, d [${DEFAULTS['small-size']}]
  --mid-size B          message size for row b [${DEFAULTS['mid-size']}]
  --sat-conns N         connections for row d [${DEFAULTS['sat-conns']}]
  --sat-depth N         messages in flight per connection for row d [${DEFAULTS['sat-depth']}]
  --big-size B          message size for row e [${DEFAULTS['big-size']}]
  --big-conns N         connections for row e [${DEFAULTS['big-conns']}]
  --big-depth N         messages in flight per connection for row e [${DEFAULTS['big-depth']}]
  --idle-conns N        idle connections for row f [${DEFAULTS['idle-conns']}]
  --idle-settle S       settle time before each RSS reading [${DEFAULTS['idle-settle']}]
  --idle-reps N         repetitions of row f, a fresh proxy each (median shown) [${DEFAULTS['idle-reps']}]
  --http-conns N        keep-alive connections for row g, one request in flight each [${DEFAULTS['http-conns']}]
  --http-rate N         offered req/s for row g; 0 = saturation [${DEFAULTS['http-rate']}]
  --hs-rate N           offered upgrades/s for row h; 0 = closed loop [${DEFAULTS['hs-rate']}]
  --hs-conns N          row h: connections alive at most (fixed rate) / at all times (closed loop) [${DEFAULTS['hs-conns']}]
  --storm-conns N       row i (reconnect storm): clients upgrading at the same moment [${DEFAULTS['storm-conns']}]
  --proxy-cpu LIST      taskset CPU list for the proxy [${DEFAULTS['proxy-cpu']}]
  --load-cpu LIST       taskset CPU list for upstream + redis-server + load generator [${DEFAULTS['load-cpu']}]
  --upstream ws|raw     echo upstream for rows a-c, f [${DEFAULTS.upstream}]
  --sat-upstream ws|raw echo upstream for rows d, e [${DEFAULTS['sat-upstream']}]
  --guard PATH          ws-guard entry point, relative to the repo or absolute [${DEFAULTS.guard}]
  --guard-node PATH     node binary that runs ws-guard [the bench's own]
  --guard-env LIST      extra environment for ws-guard, KEY=VALUE[,KEY=VALUE...] [none]
  --nginx PATH          nginx binary [${DEFAULTS.nginx}]
  --redis PATH          redis-server binary for policies+redis [${DEFAULTS.redis}]
  --redis-batch N       store.batch for policies+redis: message tokens per user a replica may use ahead of
                        Redis (half leased in advance, half on credit); 0 = ws-guard's default, auto
                        (100 ms of the rate, at most the burst) [${DEFAULTS['redis-batch']}]
  --tests LIST          rows to run, e.g. a,d,f or g (c is measured with a) [${DEFAULTS.tests}]
                        (g: plain HTTP GETs, 30 B answers, through each setup to bench/http-upstream.mjs;
                        req/s and proxy CPU µs per request;
                        h: WebSocket upgrades that close at once, at --hs-rate; latency from connect to
                        the 101, proxy CPU µs per upgrade, and for policies+redis Redis's own CPU)
  --json FILE           also write the raw results as JSON
  --build               run \`npx tsc -p tsconfig.build.json\` before starting
`;

function parseArgs(argv) {
  const opts = { ...DEFAULTS };
  const given = {};
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    if (arg === '--help' || arg === '-h') {
      process.stdout.write(HELP);
      process.exit(0);
    }
    if (!arg.startsWith('--')) throw new Error(`unexpected argument ${arg}`);
    arg = arg.slice(2);
    let value;
    const eq = arg.indexOf('=');
    if (eq >= 0) [arg, value] = [arg.slice(0, eq), arg.slice(eq + 1)];
    if (!(arg in DEFAULTS)) throw new Error(`unknown flag --${arg} (see --help)`);
    if (typeof DEFAULTS[arg] === 'boolean') value = value === undefined ? true : value !== 'false';
    else {
      value ??= argv[++i];
      if (value === undefined) throw new Error(`--${arg} needs a value`);
      if (typeof DEFAULTS[arg] === 'number') {
        value = Number(value);
        const zeroOk = ['http-rate', 'hs-rate', 'redis-batch'].includes(arg);
        if (!Number.isFinite(value) || value < 0 || (value === 0 && !zeroOk)) throw new Error(`--${arg} must be a positive number`);
      }
    }
    given[arg] = value;
  }
  // --quick shortens the targets preset too; flags given on the command line win over both.
  if (given.targets) Object.assign(opts, TARGETS);
  if (given.quick) Object.assign(opts, QUICK);
  Object.assign(opts, given);
  opts.setups = String(opts.setups).split(',').map((s) => s.trim()).filter(Boolean);
  for (const s of opts.setups) if (!SETUPS.includes(s)) throw new Error(`unknown setup ${s}`);
  for (const k of ['upstream', 'sat-upstream']) if (!['ws', 'raw'].includes(opts[k])) throw new Error(`--${k} must be ws or raw`);
  opts.tests = String(opts.tests).split(',').map((s) => s.trim()).filter(Boolean);
  for (const t of opts.tests) if (!['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i'].includes(t)) throw new Error(`unknown row ${t}`);
  return opts;
}

let opts;
try {
  opts = parseArgs(process.argv.slice(2));
} catch (err) {
  process.stderr.write(`bench: ${err.message}\n`);
  process.exit(2);
}
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const log = (msg) => process.stderr.write(`[bench] ${msg}\n`);

// ---------------------------------------------------------------------------------------------------
// Process bookkeeping: only PIDs this run started are ever signalled.

const started = new Set(); // { child, pid, name, knownChildren: number[] (nginx workers), ... }
const tmp = mkdtempSync(path.join(os.tmpdir(), 'ws-guard-bench-'));
let cleaned = false;

function cleanupSync() {
  if (cleaned) return;
  cleaned = true;
  for (const proc of started) {
    for (const pid of [proc.pid, ...proc.knownChildren]) {
      if (alive(pid)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
  }
  started.clear();
  rmSync(tmp, { recursive: true, force: true });
}
process.on('exit', cleanupSync);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    log(`${sig}: stopping`);
    cleanupSync();
    process.exit(130);
  });
}

/** The open-files limit every child gets: 65536, or the hard limit when it is lower and cannot be raised. */
const NOFILE = (() => {
  try {
    const hard = execFileSync('sh', ['-c', 'ulimit -Hn'], { encoding: 'utf8' }).trim();
    return hard === 'unlimited' ? 65536 : Math.min(65536, Number(hard));
  } catch {
    return 65536;
  }
})();

const shQuote = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;

/**
 * Spawns `argv` pinned to `cpus` with a raised open-files limit. `exec` keeps the PID, so the child's
 * PID is the pinned program's own (node or nginx), the one whose /proc figures are read.
 */
function spawnPinned(name, cpus, argv, { stdout = 'pipe', env } = {}) {
  const script = 'ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec taskset -c "$CPUS" "$@"';
  const child = spawn('sh', ['-c', script, 'sh', ...argv], {
    cwd: ROOT,
    stdio: ['pipe', stdout, 'pipe'],
    env: { ...process.env, ...env, CPUS: cpus },
  });
  const proc = { child, pid: child.pid, name, knownChildren: [], stderr: '', exited: false, code: null };
  child.stderr.on('data', (d) => {
    proc.stderr += d;
    if (proc.stderr.length > 20000) proc.stderr = proc.stderr.slice(-20000);
  });
  child.on('exit', (code, signal) => {
    proc.exited = true;
    proc.code = code ?? signal;
  });
  child.stdin.on('error', () => {});
  started.add(proc);
  return proc;
}

async function stop(proc, signal = 'SIGTERM') {
  if (!proc) return;
  const pids = [proc.pid, ...proc.knownChildren];
  if (!proc.exited) {
    try {
      process.kill(proc.pid, signal);
    } catch {
      // gone
    }
    const until = Date.now() + 5000;
    while (!proc.exited && Date.now() < until) await sleep(20);
  }
  for (const pid of pids) {
    if (alive(pid)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  }
  const until = Date.now() + 2000;
  while (pids.some(alive) && Date.now() < until) await sleep(20);
  proc.child.stdin.destroy();
  started.delete(proc);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function waitForPort(port, proc, what) {
  const until = Date.now() + 15000;
  while (Date.now() < until) {
    if (proc.exited) throw new Error(`${what} exited (${proc.code}) before listening:\n${proc.stderr}`);
    const ok = await new Promise((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port });
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(50);
  }
  throw new Error(`${what} did not listen on ${port} within 15 s:\n${proc.stderr}`);
}

// ---------------------------------------------------------------------------------------------------
// The three processes.

async function startUpstream(kind = opts.upstream) {
  const port = await freePort();
  const script = { raw: 'raw-upstream.mjs', http: 'http-upstream.mjs', ws: 'upstream.mjs' }[kind];
  const proc = spawnPinned('upstream', opts['load-cpu'], [process.execPath, path.join(BENCH, script), String(port)]);
  await waitForPort(port, proc, 'upstream');
  return { proc, port, pids: [proc.pid] };
}

/** The secret of the `policies` setup; every load connection presents a token signed with it. */
const BENCH_SECRET = 'bench-secret-0123456789abcdef0123456789abcdef';
const POLICIES = [
  'auth:',
  '  jwt:',
  `    secret: ${BENCH_SECRET}`,
  '    algorithms: [HS256]',
  '    requiredClaims: [sub]',
  '    forwardClaims: { sub: X-Auth-Sub }',
  'limits:',
  '  connections: { total: 100000, perIp: 100000, perUser: 100000 }',
  '  handshakes: { rate: 100000/s, burst: 100000 }',
  '  messages: { rate: 100000000/s, burst: 100000000, onExceed: close }',
  '  messageSize: 1MiB',
  '  idleTimeout: 5m',
];

/**
 * Row g only (plain HTTP): every bench request comes from 127.0.0.1, and ws-guard admits 32 requests in
 * flight per address by default, so its configs for row g raise that (limits.requests, which builds before
 * the plain HTTP work do not know; rows a-f leave it out). policies also limits the request rate per user.
 */
const HTTP_LIMITS = ['limits:', '  requests: { concurrent: 100000 }'];
const HTTP_POLICIES = ['  requests: { rate: 100000000/s, burst: 100000000, per: user, concurrent: 100000 }'];

/**
 * policies+redis: the policies over store.redis. Slots and handshake rates then live in Redis as they are;
 * the message rate is counted per user so that it is shared through Redis too (per connection stays local).
 * Every load connection has the same token, so all messages spend one user's tokens: the worst case for
 * the leased batches (one key, every message on it). In row g the request rate (per: user) is in Redis too.
 */
const REDIS_POLICIES = POLICIES.map((line) => (line.startsWith('  messages:') ? line.replace('onExceed', 'per: user, onExceed') : line));
const redisStore = (port) => ['store:', `  redis: redis://127.0.0.1:${port}/0`, ...(opts['redis-batch'] ? [`  batch: ${opts['redis-batch']}`] : [])];

async function benchToken() {
  const { SignJWT } = await import('jose');
  return new SignJWT({ sub: 'bench' }).setProtectedHeader({ alg: 'HS256' }).setExpirationTime('2h').sign(new TextEncoder().encode(BENCH_SECRET));
}

async function startWsGuard(upstreamPort, { policies = false, redisPort, http = false }) {
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmp, 'ws-guard-'));
  const config = path.join(dir, 'guard.yaml');
  writeFileSync(
    config,
    [
      `listen: 127.0.0.1:${port}`,
      `upstream: http://127.0.0.1:${upstreamPort}`,
      'trustedProxies: [127.0.0.1/32]',
      'compression: passthrough',
      'timeouts:',
      '  handshake: 10s',
      '  upstreamConnect: 5s',
      '  upstreamResponse: 10s',
      '  close: 5s',
      '  drain: 2s',
      ...(policies ? [...(redisPort ? REDIS_POLICIES : POLICIES), ...(http ? HTTP_POLICIES : [])] : http ? HTTP_LIMITS : []),
      ...(redisPort ? redisStore(redisPort) : []),
      '',
    ].join('\n'),
  );
  const logFile = path.join(dir, 'ws-guard.log');
  const out = openSync(logFile, 'w');
  const proc = spawnPinned('ws-guard', opts['proxy-cpu'], [opts['guard-node'] || process.execPath, path.resolve(ROOT, opts.guard), '--config', config], {
    stdout: out,
    env: Object.fromEntries(
      String(opts['guard-env']).split(',').filter(Boolean).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
    ),
  });
  closeSync(out);
  await waitForPort(port, proc, 'ws-guard');
  return { proc, port, pids: [proc.pid], logFile };
}

/** bench/node-floor.mjs: a TCP relay on Node's raw handles, the floor of what Node costs per read and per connection. */
async function startFloor(upstreamPort) {
  const port = await freePort();
  const proc = spawnPinned('node-floor', opts['proxy-cpu'], [process.execPath, path.join(BENCH, 'node-floor.mjs'), String(port), String(upstreamPort)]);
  await waitForPort(port, proc, 'node-floor');
  return { proc, port, pids: [proc.pid] };
}

function startProxy(setup, upstreamPort, store, http = false) {
  if (setup === 'nginx') return startNginx(upstreamPort);
  if (setup === 'node-floor') return startFloor(upstreamPort);
  return startWsGuard(upstreamPort, { policies: setup.startsWith('policies'), redisPort: setup === 'policies+redis' ? store.port : undefined, http });
}

/**
 * The limit store of policies+redis: Debian's redis-server on a free port, nothing saved to disk, pinned
 * with the upstream and the load (its CPU is read apart from the proxy's). null when no setup needs it.
 */
async function startRedis() {
  if (!opts.setups.includes('policies+redis')) return null;
  const port = await freePort();
  const proc = spawnPinned('redis-server', opts['load-cpu'], [opts.redis, '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdout: 'ignore',
  });
  await waitForPort(port, proc, 'redis-server');
  return { proc, port, pids: [proc.pid] };
}

/** What the load generator needs to know of a setup: where to connect, which PIDs to read, the token. */
async function target(setup, upstream, store, http = false) {
  if (setup === 'direct') return { port: upstream.port, pids: [] };
  const proxy = await startProxy(setup, upstream.port, store, http);
  return {
    port: proxy.port,
    pids: proxy.pids,
    logFile: proxy.logFile,
    authorization: setup.startsWith('policies') ? await benchToken() : undefined,
    ...(setup === 'policies+redis' ? { storePids: store.pids, storePort: store.port } : {}),
  };
}

/** Times the guard's limit store went down (it then admits on its own: the figures are not Redis's). */
function storeDowns(logFile) {
  if (!logFile) return 0;
  return readFileSync(logFile, 'utf8').split('\n').filter((line) => line.includes('limit store unreachable')).length;
}

async function startNginx(upstreamPort) {
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmp, 'nginx-'));
  const conf = path.join(dir, 'nginx.conf');
  const p = (name) => path.join(dir, name);
  writeFileSync(
    conf,
    `# written by bench/run.mjs
worker_processes 1;
daemon off;
master_process on;
pid ${p('nginx.pid')};
error_log ${p('error.log')} warn;
worker_rlimit_nofile ${NOFILE};

events {
    worker_connections ${Math.max(1024, NOFILE - 64)};
}

http {
    access_log off;
    client_body_temp_path ${p('client_body')};
    proxy_temp_path ${p('proxy')};
    fastcgi_temp_path ${p('fastcgi')};
    uwsgi_temp_path ${p('uwsgi')};
    scgi_temp_path ${p('scgi')};

    # Plain HTTP (row g) is kept alive on both legs: no request limit per client connection, and an
    # empty Connection header plus a keepalive pool towards the upstream. Upgrades get "upgrade".
    keepalive_requests 1000000;
    keepalive_timeout 600s;

    map $http_upgrade $connection_upgrade {
        default upgrade;
        ''      "";
    }

    upstream bench_upstream {
        server 127.0.0.1:${upstreamPort};
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 600s;
    }

    server {
        listen 127.0.0.1:${port};
        location / {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }
    }
}
`,
  );
  const proc = spawnPinned('nginx', opts['proxy-cpu'], [opts.nginx, '-p', dir, '-e', p('error.log'), '-c', conf]);
  await waitForPort(port, proc, 'nginx');
  let workers = [];
  const until = Date.now() + 5000;
  while (workers.length === 0 && Date.now() < until) {
    workers = childrenOf(proc.pid).filter((pid) => commOf(pid) === 'nginx');
    if (workers.length === 0) await sleep(20);
  }
  if (workers.length === 0) throw new Error('nginx worker process not found');
  proc.knownChildren = workers;
  return { proc, port, pids: [proc.pid, ...workers] };
}

// ---------------------------------------------------------------------------------------------------
// Load runs.

async function runLoad(params) {
  const proc = spawnPinned('load', opts['load-cpu'], [process.execPath, path.join(BENCH, 'load.mjs'), JSON.stringify(params)]);
  let out = '';
  proc.child.stdout.on('data', (d) => (out += d));
  const budget = ((params.warmupMs ?? 0) + (params.durationMs ?? 0)) + 120_000;
  const until = Date.now() + budget;
  while (!proc.exited && Date.now() < until) await sleep(50);
  if (!proc.exited) {
    await stop(proc, 'SIGKILL');
    throw new Error(`load generator (${params.mode}) did not finish within ${budget} ms`);
  }
  await sleep(20); // let stdout flush into `out`
  started.delete(proc);
  proc.child.stdin.destroy();
  const line = out.trim().split('\n').pop();
  if (proc.code !== 0 || !line) throw new Error(`load generator (${params.mode}) failed (${proc.code}):\n${proc.stderr}`);
  return JSON.parse(line);
}

/** The setups in the order of repetition `rep`: rotated by one each time, so none always goes first. */
const rotated = (setups, rep) => setups.map((_, i) => setups[(i + rep) % setups.length]);

/** Median of each numeric field over repeated runs (each field on its own); `runs` keeps the raw runs. */
function summarize(runs) {
  const out = { runs };
  for (const key of Object.keys(runs[0])) {
    const values = runs.map((r) => r[key]).filter((v) => typeof v === 'number' && Number.isFinite(v)).sort((x, y) => x - y);
    if (values.length === 0) {
      out[key] = runs[0][key];
      continue;
    }
    const mid = values.length >> 1;
    out[key] = values.length % 2 ? values[mid] : (values[mid - 1] + values[mid]) / 2;
    out[`${key}Min`] = values[0];
    out[`${key}Max`] = values[values.length - 1];
  }
  // Counts of things that went wrong are totals over the runs, not medians.
  for (const key of ['lost', 'notOk', 'reconnects', 'failed', 'slowCloses', 'stuck', 'storeDowns']) out[key] = runs.reduce((sum, r) => sum + (r[key] ?? 0), 0);
  return out;
}

/**
 * Load rows: one upstream, every proxy in front of it up at once (an idle proxy costs nothing), and each
 * test run `reps` times with the setups interleaved (the order rotates every repetition), so that drift
 * of the machine hits all setups alike. The table shows the median of the repetitions.
 */
async function benchLoad(results, tests, upstreamKind) {
  tests = tests.filter(([, rows]) => rows.some((row) => opts.tests.includes(row)));
  if (tests.length === 0) return;
  const upstream = await startUpstream(upstreamKind);
  try {
    const store = await startRedis();
    const targets = {};
    for (const setup of opts.setups) targets[setup] = await target(setup, upstream, store, upstreamKind === 'http');
    const base = {
      otherPids: upstream.pids,
      upstreamPort: upstream.port,
      warmupMs: opts.warmup * 1000,
      durationMs: opts.duration * 1000,
      proxyCpus: opts['proxy-cpu'],
      loadCpus: opts['load-cpu'],
    };
    for (const [key, , label, params] of tests) {
      const runs = Object.fromEntries(opts.setups.map((s) => [s, []]));
      for (let rep = 0; rep < opts.reps; rep++) {
        for (const setup of rotated(opts.setups, rep)) {
          log(`${label}, ${upstreamKind} upstream: ${setup} (${rep + 1}/${opts.reps})`);
          const { logFile, ...where } = targets[setup];
          const downsBefore = storeDowns(logFile);
          const run = await runLoad({ ...base, ...params, ...where });
          runs[setup].push({ ...run, storeDowns: storeDowns(logFile) - downsBefore });
        }
      }
      for (const setup of opts.setups) results[setup][key] = { ...summarize(runs[setup]), upstream: upstreamKind };
    }
  } finally {
    for (const proc of [...started]) await stop(proc);
  }
}

const HS_LOAD = opts['hs-rate'] ? `${opts['hs-rate']} upgrades/s offered, ${opts['hs-conns']} alive at most` : `closed loop, ${opts['hs-conns']} connections`;
const RATE_TESTS = [
  ['small', ['a', 'c'], `a/c fixed rate ${opts.rate} msg/s, ${opts['small-size']} B`, { mode: 'rate', size: opts['small-size'], rate: opts.rate, conns: opts.conns }],
  ['mid', ['b'], `b fixed rate ${opts.rate} msg/s, ${opts['mid-size']} B`, { mode: 'rate', size: opts['mid-size'], rate: opts.rate, conns: opts.conns }],
  ['hs', ['h'], `h upgrades, ${HS_LOAD}`, { mode: 'handshake', rate: opts['hs-rate'], conns: opts['hs-conns'] }],
  ['storm', ['i'], `i reconnect storm, ${opts['storm-conns']} clients at once`, { mode: 'storm', conns: opts['storm-conns'] }],
];
const HTTP_TESTS = [
  [
    'http',
    ['g'],
    `g plain HTTP ${opts['http-rate'] ? `${opts['http-rate']} req/s` : 'saturation'}, ${opts['http-conns']} keep-alive conns x 1 in flight`,
    { mode: 'http', conns: opts['http-conns'], rate: opts['http-rate'] },
  ],
];
const SATURATION_TESTS = [
  ['sat', ['d'], `d saturation ${opts['sat-conns']} conns x ${opts['sat-depth']} in flight, ${opts['small-size']} B`, { mode: 'pipe', size: opts['small-size'], conns: opts['sat-conns'], depth: opts['sat-depth'] }],
  ['big', ['e'], `e throughput ${opts['big-conns']} conns x ${opts['big-depth']} in flight, ${opts['big-size']} B`, { mode: 'pipe', size: opts['big-size'], conns: opts['big-conns'], depth: opts['big-depth'] }],
];

/**
 * Row f: a fresh proxy process per setup and repetition, so the "before" RSS is not inflated by the load
 * tests or by the previous repetition; setups interleaved as in benchLoad.
 */
async function benchIdle(results) {
  const setups = opts.setups.filter((setup) => setup !== 'direct');
  const runs = Object.fromEntries(setups.map((s) => [s, []]));
  for (let rep = 0; rep < opts['idle-reps']; rep++) {
    for (const setup of rotated(setups, rep)) {
      const upstream = await startUpstream();
      try {
        const store = setup === 'policies+redis' ? await startRedis() : null;
        const { logFile, storePids, storePort, ...where } = await target(setup, upstream, store);
        log(`f ${opts['idle-conns']} idle connections: ${setup} (${rep + 1}/${opts['idle-reps']})`);
        runs[setup].push(
          await runLoad({
            ...where,
            mode: 'idle',
            conns: opts['idle-conns'],
            concurrency: 100,
            settleMs: opts['idle-settle'] * 1000,
          }),
        );
      } finally {
        for (const proc of [...started]) await stop(proc);
      }
    }
  }
  for (const setup of setups) results[setup].idle = summarize(runs[setup]);
}

// ---------------------------------------------------------------------------------------------------
// Report.

const fmt = {
  us: (v) => (v == null || !Number.isFinite(v) ? '-' : v.toFixed(v < 10 ? 2 : 1)),
  ms: (v) => (v == null || !Number.isFinite(v) ? '-' : v < 1 ? `${(v * 1000).toFixed(0)} µs` : `${v.toFixed(2)} ms`),
  int: (v) => (v == null || !Number.isFinite(v) ? '-' : Math.round(v).toLocaleString('en-US')),
  mb: (v) => (v == null || !Number.isFinite(v) ? '-' : v.toFixed(0)),
  pct: (v) => (v == null || !Number.isFinite(v) ? '-' : `${(v * 100).toFixed(0)}%`),
  kib: (v) => (v == null || !Number.isFinite(v) ? '-' : v.toFixed(2)),
};

/** Redis's CPU per unit of work and the scripts ws-guard ran in it per `per` units, for setups with a store. */
function storeCell(v, per) {
  if (v?.storeUsPerMsg == null) return '-';
  const n = v.storeScriptsPerMsg * per;
  // Leased message tokens leave a script or so per window: whole numbers would show it as 0.
  const scripts = v.storeScriptsPerMsg == null ? '-' : n.toFixed(per === 1 || n < 10 ? 2 : 0);
  return `${fmt.us(v.storeUsPerMsg)} / ${scripts}`;
}

/** The share of the proxy's core and of the load core that processes outside the bench took (noise). */
function foreign(v) {
  return v?.foreignProxyCore == null ? '-' : `${fmt.pct(Math.max(0, v.foreignProxyCore))} / ${fmt.pct(Math.max(0, v.foreignLoadCore))}`;
}

function table(results) {
  const by = Object.fromEntries(results.map((r) => [r.setup, r]));
  const hsLoad = opts['hs-rate'] ? `${fmt.int(opts['hs-rate'])}/s` : `closed loop x${opts['hs-conns']}`;
  const cols = SETUPS.filter((c) => by[c]);
  const cell = (setup, f) => (by[setup] ? f(by[setup]) : 'n/a');
  const s = opts['small-size'];
  const rows = [
    [`a. proxy CPU µs/msg, ${s} B @ ${fmt.int(opts.rate)} msg/s`, (r) => fmt.us(r.small?.proxyUsPerMsg)],
    [`b. proxy CPU µs/msg, ${opts['mid-size']} B @ ${fmt.int(opts.rate)} msg/s`, (r) => fmt.us(r.mid?.proxyUsPerMsg)],
    [`c. RTT p50 / p99, ${s} B @ ${fmt.int(opts.rate)} msg/s`, (r) => `${fmt.ms(r.small?.p50Ms)} / ${fmt.ms(r.small?.p99Ms)}`],
    [`d. saturation msg/s, ${s} B, ${opts['sat-conns']}x${opts['sat-depth']} in flight`, (r) => fmt.int(r.sat?.msgPerS)],
    [`e. MB/s echoed, ${opts['big-size'] / 1024} KiB msgs, ${opts['big-conns']}x${opts['big-depth']}`, (r) => fmt.mb(r.big?.mbPerS)],
    [`f. RSS KiB per idle conn (${fmt.int(opts['idle-conns'])} conns)`, (r) => fmt.kib(r.idle?.kibPerConn)],
    [
      `g. plain HTTP req/s / proxy CPU µs/req, ${opts['http-rate'] ? `${fmt.int(opts['http-rate'])} req/s offered` : 'saturation'}, ${opts['http-conns']}x1`,
      (r) => `${fmt.int(r.http?.reqPerS)} / ${fmt.us(r.http?.proxyUsPerMsg)}`,
    ],
    [`h. upgrade latency p50 / p99, ${hsLoad}`, (r) => `${fmt.ms(r.hs?.p50Ms)} / ${fmt.ms(r.hs?.p99Ms)}`],
    [`h. proxy CPU µs per upgrade, ${hsLoad}`, (r) => fmt.us(r.hs?.proxyUsPerMsg)],
    [`i. reconnect storm, ${fmt.int(opts['storm-conns'])} at once: upgrades/s, failures`, (r) => (r.storm ? `${fmt.int(r.storm.upgradesPerS)}, ${fmt.int(r.storm.failed)}` : '-')],
    ['i. proxy CPU µs per upgrade in the storm', (r) => fmt.us(r.storm?.proxyUsPerMsg)],
  ];
  const extra = [
    [`   a / b range over ${opts.reps} reps`, (r) => `${range(mm(r.small, 'proxyUsPerMsg'), fmt.us)} / ${range(mm(r.mid, 'proxyUsPerMsg'), fmt.us)}`],
    ['   a / b achieved msg/s', (r) => `${fmt.int(r.small?.achievedRate)} / ${fmt.int(r.mid?.achievedRate)}`],
    ['   a / b proxy core busy', (r) => `${fmt.pct(r.small?.proxyBusy)} / ${fmt.pct(r.mid?.proxyBusy)}`],
    ['   a / b upstream+load core busy', (r) => `${fmt.pct(r.small?.core1Busy)} / ${fmt.pct(r.mid?.core1Busy)}`],
    ['   a proxy CPU in kernel (stime share)', (r) => fmt.pct(r.small?.proxySysShare)],
    ['   a Redis CPU µs/msg, Redis scripts per 1,000 msgs', (r) => storeCell(r.small, 1000)],
    ['   a CPU other processes took: proxy core / load core', (r) => foreign(r.small)],
    ['   c p99 range, RTT p99.9', (r) => `${range(mm(r.small, 'p99Ms'), fmt.ms)}, ${fmt.ms(r.small?.p999Ms)}`],
    [`   d range over ${opts.reps} reps`, (r) => range(mm(r.sat, 'msgPerS'), fmt.int)],
    ['   d / e proxy core busy', (r) => `${fmt.pct(r.sat?.proxyBusy)} / ${fmt.pct(r.big?.proxyBusy)}`],
    ['   d / e upstream+load core busy', (r) => `${fmt.pct(r.sat?.core1Busy)} / ${fmt.pct(r.big?.core1Busy)}`],
    ['   d / e proxy CPU µs/msg', (r) => `${fmt.us(r.sat?.proxyUsPerMsg)} / ${fmt.us(r.big?.proxyUsPerMsg)}`],
    ['   e proxy CPU in kernel, page faults/msg', (r) => (r.big?.proxySysShare == null ? '-' : `${fmt.pct(r.big.proxySysShare)}, ${r.big.proxyFaultsPerMsg.toFixed(2)}`)],
    ['   f RSS KiB before -> after', (r) => (r.idle ? `${fmt.int(r.idle.rssBeforeKiB)} -> ${fmt.int(r.idle.rssAfterKiB)}` : '-')],
    [`   f range over ${opts['idle-reps']} reps`, (r) => range(mm(r.idle, 'kibPerConn'), fmt.kib)],
    [`   g req/s / µs/req range over ${opts.reps} reps`, (r) => `${range(mm(r.http, 'reqPerS'), fmt.int)} / ${range(mm(r.http, 'proxyUsPerMsg'), fmt.us)}`],
    ['   g proxy core / upstream+load core busy', (r) => `${fmt.pct(r.http?.proxyBusy)} / ${fmt.pct(r.http?.core1Busy)}`],
    ['   g upstream conns opened per 1,000 req', (r) => (r.http?.upstreamConnsPerReq == null ? '-' : (r.http.upstreamConnsPerReq * 1000).toFixed(1))],
    ['   g proxy CPU in kernel, latency p50 / p99', (r) => (r.http ? `${fmt.pct(r.http.proxySysShare)}, ${fmt.ms(r.http.p50Ms)} / ${fmt.ms(r.http.p99Ms)}` : '-')],
    ['   g Redis CPU µs/req, Redis scripts per 1,000 req', (r) => storeCell(r.http, 1000)],
    [`   h CPU µs/upgrade / p99 range over ${opts.reps} reps`, (r) => `${range(mm(r.hs, 'proxyUsPerMsg'), fmt.us)} / ${range(mm(r.hs, 'p99Ms'), fmt.ms)}`],
    ['   h achieved upgrades/s, proxy core busy', (r) => (r.hs ? `${fmt.int(r.hs.upgradesPerS)}, ${fmt.pct(r.hs.proxyBusy)}` : '-')],
    ['   h upstream+load core busy', (r) => fmt.pct(r.hs?.core1Busy)],
    ['   h Redis CPU µs / Redis scripts per upgrade', (r) => storeCell(r.hs, 1)],
    ['   h CPU other processes took: proxy core / load core', (r) => foreign(r.hs)],
    ['   i latency p50 / p99 / max, seconds to the last answer', (r) => (r.storm ? `${fmt.ms(r.storm.p50Ms)} / ${fmt.ms(r.storm.p99Ms)} / ${fmt.ms(r.storm.maxMs)}, ${r.storm.seconds.toFixed(2)}` : '-')],
    ['   i failures by reason (first rep)', (r) => (r.storm?.runs?.[0]?.failures ? Object.entries(r.storm.runs[0].failures).map(([k, v]) => `${k} ×${v}`).join('; ') || 'none' : '-')],
  ];
  // Only the rows this run measured (c comes with a); a label names its rows first: "a.", "a / b ...".
  const ran = new Set([...opts.tests, ...(opts.tests.includes('a') ? ['c'] : [])]);
  const letters = (label) => {
    const out = [];
    for (const w of label.trim().split(' ')) {
      if (/^[a-i]\.?$/.test(w)) out.push(w[0]);
      else if (w !== '/') break;
    }
    return out;
  };
  const data = [...rows, ...extra].filter(([label]) => letters(label).some((l) => ran.has(l))).map(([label, f]) => [label, ...cols.map((c) => cell(c, f))]);
  return grid(['', ...cols], data);
}

/** A markdown table: the first column left-aligned, the others right-aligned unless `left` names them. */
function grid(header, data, left = [0]) {
  const widths = header.map((h, i) => Math.max(h.length, ...data.map((row) => row[i].length)));
  const line = (row) => `| ${row.map((v, i) => (left.includes(i) ? v.padEnd(widths[i]) : v.padStart(widths[i]))).join(' | ')} |`;
  const sep = `|${widths.map((w, i) => (left.includes(i) ? '-'.repeat(w + 2) : `${'-'.repeat(w + 1)}:`)).join('|')}|`;
  return [line(header), sep, ...data.map(line)].join('\n');
}

const range = (r, f) => (r ? `${f(r.min)}–${f(r.max)}` : '-');
const mm = (v, key) => (v ? { min: v[`${key}Min`], max: v[`${key}Max`] } : null);

/**
 * Issue 13's targets, read from this run alone: each figure's median and range, the same for what it is
 * held against (nginx; for the policies column, bare ws-guard on rows a and b), their ratio, and the verdict.
 * `bound` is on the ratio, or with `absolute` on the figure itself; without a bound the figure is reported.
 */
function targets(results) {
  const by = Object.fromEntries(results.map((r) => [r.setup, r]));
  const a = `${opts['small-size']} B @ ${fmt.int(opts.rate)} msg/s`;
  const b = `${opts['mid-size']} B @ ${fmt.int(opts.rate)} msg/s`;
  const env = opts['guard-env'] ? ` (--guard-env ${opts['guard-env']}: not the no-env figure)` : ', no env set';
  const spec = [
    { row: `a. proxy CPU µs/msg, ${a}`, setup: 'ws-guard', key: 'small', field: 'proxyUsPerMsg', f: fmt.us, target: '≤ 1.2× nginx', bound: 1.2 },
    { row: `b. proxy CPU µs/msg, ${b}${env}`, setup: 'ws-guard', key: 'mid', field: 'proxyUsPerMsg', f: fmt.us, target: '≤ 1.0× nginx', bound: 1 },
    { row: `e. MB/s echoed, ${opts['big-size'] / 1024} KiB msgs`, setup: 'ws-guard', key: 'big', field: 'mbPerS', f: fmt.mb, target: '≥ 1.0× nginx', bound: 1, atLeast: true },
    { row: `f. RSS KiB per idle conn (${fmt.int(opts['idle-conns'])} conns)`, setup: 'ws-guard', key: 'idle', field: 'kibPerConn', f: fmt.kib, target: '≤ 6 KiB', bound: 6, absolute: true },
    { row: `i. (issue's g) storm of ${fmt.int(opts['storm-conns'])}: JWT (HS256) upgrades/s`, setup: 'policies', key: 'storm', field: 'upgradesPerS', f: fmt.int, target: 'report vs nginx plain' },
    { row: `i. (issue's g) storm: upgrades without a 101, all ${opts.reps} reps`, setup: 'policies', key: 'storm', field: 'failed', f: fmt.int, target: '0', bound: 0, absolute: true, total: true },
    ...[['a', 'small', a], ['b', 'mid', b]].map(([l, key, what]) => ({
      row: `policies column, row ${l}: proxy CPU µs/msg, ${what}`,
      setup: 'policies',
      key,
      field: 'proxyUsPerMsg',
      f: fmt.us,
      against: 'ws-guard',
      target: '≤ +5 % over ws-guard',
      bound: 1.05,
    })),
  ];
  const meets = (t, judged) => (judged == null ? null : t.atLeast ? judged >= t.bound : judged <= t.bound);
  return spec.map((t) => {
    const against = t.against ?? 'nginx';
    const figure = (setup) => {
      const v = by[setup]?.[t.key];
      if (v?.[t.field] == null) return { cell: '-' };
      return { value: v[t.field], cell: t.total ? fmt.int(v[t.field]) : `${t.f(v[t.field])} (${range(mm(v, t.field), t.f)})` };
    };
    const mine = figure(t.setup);
    const theirs = figure(against);
    const ratio = mine.value != null && theirs.value ? mine.value / theirs.value : null;
    const judged = t.absolute ? mine.value : ratio;
    // Node's floor on the rows held against nginx: what a relay with nothing of ws-guard in it reaches.
    const floor = t.setup === 'ws-guard' && !t.against ? figure('node-floor') : { cell: '-' };
    const floorRatio = floor.value != null && theirs.value ? floor.value / theirs.value : null;
    const floorMeets = t.bound === undefined ? null : meets(t, t.absolute ? floor.value : floorRatio);
    let verdict = 'reported';
    if (t.bound !== undefined) {
      const met = meets(t, judged);
      verdict = met == null ? 'n/a' : met ? 'met' : floorMeets === false ? "not met; nor by Node's floor" : 'not met';
    }
    const shown = ratio == null ? '-' : t.against ? `${ratio >= 1 ? '+' : '−'}${Math.abs((ratio - 1) * 100).toFixed(1)} % vs ${against}` : `${ratio.toFixed(2)}× ${against}`;
    const floorCell = floor.value == null ? '-' : `${t.f(floor.value)}${floorRatio == null || t.absolute ? '' : ` (${floorRatio.toFixed(2)}×)`}`;
    return { row: t.row, setup: t.setup, value: mine.value, figure: mine.cell, against, reference: `${against} ${theirs.cell}`, ratio, shown, floor: floorCell, target: t.target, verdict };
  });
}

function targetsTable(rows) {
  const header = ['issue 13 target', 'setup', 'median (range)', 'held against: median (range)', 'ratio', "Node's floor", 'target', 'verdict'];
  return grid(header, rows.map((t) => [t.row, t.setup, t.figure, t.reference, t.shown, t.floor, t.target, t.verdict]), [0, 1, 6, 7]);
}

function warnings(results) {
  const out = [];
  for (const r of results) {
    for (const [k, v] of Object.entries(r)) {
      if (v && typeof v === 'object') {
        if (v.lost > 0) out.push(`${r.setup} ${k}: ${v.lost} message(s) never echoed`);
        if (v.achievedRate && v.achievedRate < v.offeredRate * 0.97) {
          out.push(`${r.setup} ${k}: achieved ${Math.round(v.achievedRate)} ${v.unit ?? 'msg/s'} < offered ${v.offeredRate}`);
        }
        if (v.failed > 0) out.push(`${r.setup} ${k}: ${v.failed} upgrade(s) without a 101 (first: ${v.runs?.find((x) => x.firstFailure)?.firstFailure})`);
        if (v.slowCloses > 0) out.push(`${r.setup} ${k}: ${v.slowCloses} connection(s) not ended by the server 5 s after the close frame`);
        if (v.stuck > 0) out.push(`${r.setup} ${k}: ${v.stuck} connection(s) still open 10 s after the window`);
        if (v.storeDowns > 0) out.push(`${r.setup} ${k}: the limit store went down ${v.storeDowns} time(s) during the runs (ws-guard log): figures partly without Redis`);
        if (v.notOk > 0) out.push(`${r.setup} ${k}: ${v.notOk} answer(s) not 200 (first: ${v.runs?.find((x) => x.firstNotOk)?.firstNotOk})`);
        if (v.upstreamConnsPerReq > 0.01) out.push(`${r.setup} ${k}: ${(v.upstreamConnsPerReq * 1000).toFixed(0)} new upstream connections per 1,000 requests (not kept alive)`);
        if (v.reconnects > 0) out.push(`${r.setup} ${k}: ${v.reconnects} keep-alive connection(s) closed and reopened`);
        if (v.stillEchoingMin !== undefined && v.stillEchoingMin !== v.conns) {
          out.push(`${r.setup} ${k}: only ${v.stillEchoingMin}/${v.conns} idle connections still echoed (worst repetition)`);
        }
      }
    }
  }
  return out;
}

function machine() {
  let nginx = '';
  try {
    nginx = execFileSync(opts.nginx, ['-v'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  } catch (err) {
    nginx = String(err.stderr ?? '').trim();
  }
  try {
    nginx ||= execFileSync('sh', ['-c', `${shQuote(opts.nginx)} -v 2>&1`], { encoding: 'utf8' }).trim();
  } catch {
    // not installed
  }
  let redis = '';
  try {
    redis = /v=(\S+)/.exec(execFileSync(opts.redis, ['--version'], { encoding: 'utf8' }))?.[1] ?? '?';
  } catch {
    // not installed: startRedis says so if a setup needs it
  }
  const cpus = os.cpus();
  return {
    node: process.version,
    nginx: nginx.replace(/^nginx version: (nginx\/)?/, ''),
    redis,
    cpus: `${cpus.length} x ${cpus[0]?.model ?? '?'}`,
    kernel: os.release(),
    ws: JSON.parse(readFileSync(path.join(ROOT, 'node_modules', 'ws', 'package.json'), 'utf8')).version,
  };
}

function distStale() {
  const dist = path.join(ROOT, 'dist', 'cli', 'main.js');
  if (!existsSync(dist)) return 'dist/cli/main.js is missing';
  const built = statSync(dist).mtimeMs;
  const walk = (dir) =>
    readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
      e.isDirectory() ? walk(path.join(dir, e.name)) : e.name.endsWith('.ts') && !e.name.endsWith('.test.ts') ? [path.join(dir, e.name)] : [],
    );
  const newer = walk(path.join(ROOT, 'src')).filter((f) => statSync(f).mtimeMs > built);
  return newer.length > 0 ? `src is newer than dist (${path.relative(ROOT, newer[0])}...)` : null;
}

// ---------------------------------------------------------------------------------------------------

async function main() {
  const deadline = setTimeout(() => {
    log('overall time cap reached: stopping everything');
    cleanupSync();
    process.exit(1);
  }, 20 * 60_000);
  deadline.unref();

  if (opts.build) {
    log('building: npx tsc -p tsconfig.build.json');
    execFileSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: ROOT, stdio: 'inherit' });
  }
  if (opts.setups.some((s) => s === 'ws-guard' || s.startsWith('policies'))) {
    const stale = distStale();
    if (stale) log(`WARNING: ${stale}; run with --build (or npx tsc -p tsconfig.build.json) to measure the current code`);
  }
  if (opts.setups.includes('policies+redis') && !existsSync(opts.redis)) {
    throw new Error(`policies+redis needs ${opts.redis} (Debian: apt-get install redis-server; or --redis PATH), or leave it out of --setups`);
  }
  if (os.cpus().length < 2) log('WARNING: fewer than 2 CPUs: the proxy and the load share a core; figures are not comparable');
  // Row f: the proxy holds two sockets per idle connection. Children raise their soft limit to the hard one.
  if (opts.tests.includes('f') && opts.setups.some((s) => s !== 'direct') && NOFILE < opts['idle-conns'] * 2 + 200) {
    throw new Error(
      `the hard open-files limit (${NOFILE}) is below ${opts['idle-conns'] * 2 + 200}, needed for --idle-conns ${opts['idle-conns']}: ` +
        'run from a shell whose hard limit is higher (e.g. as root: ulimit -Hn 65536) or lower --idle-conns',
    );
  }

  const info = machine();
  log(`node ${info.node}, nginx ${info.nginx}, redis ${info.redis || '-'}, ${info.cpus}; proxy on CPU ${opts['proxy-cpu']}, upstream+redis+load on CPU ${opts['load-cpu']}`);
  const t0 = Date.now();
  const bySetup = Object.fromEntries(opts.setups.map((setup) => [setup, { setup }]));
  await benchLoad(bySetup, RATE_TESTS, opts.upstream);
  await benchLoad(bySetup, SATURATION_TESTS, opts['sat-upstream']);
  await benchLoad(bySetup, HTTP_TESTS, 'http');
  if (opts.tests.includes('f')) await benchIdle(bySetup);
  const results = Object.values(bySetup);
  const seconds = (Date.now() - t0) / 1000;

  const settings =
    `rate ${opts.rate} msg/s over ${opts.conns} conns; ${opts.warmup} s warm-up + ${opts.duration} s measured per test, ` +
    `median of ${opts.reps} interleaved rep(s); ` +
    `proxy pinned to CPU ${opts['proxy-cpu']}, echo upstream${opts.setups.includes('policies+redis') ? ` + redis-server ${info.redis}` : ''} + raw load generator to CPU ${opts['load-cpu']}; ` +
    `upstream: ${opts.upstream === 'ws' ? `ws ${info.ws}` : 'raw'} for rows a-c/f/h, ${opts['sat-upstream'] === 'ws' ? `ws ${info.ws}` : 'raw'} for d/e, ` +
    'node:http (30 B answers, keep-alive) for g' +
    (opts.setups.includes('policies+redis') ? `; policies+redis store.batch ${opts['redis-batch'] || 'auto (default)'}` : '') +
    (opts.tests.includes('h') ? `; row h: ${HS_LOAD}` : '');
  const host = `node ${info.node}, nginx ${info.nginx}, ${info.cpus}, Linux ${info.kernel}`;
  process.stdout.write(`\nws-guard bench — ${host}\n${settings}\n\n${table(results)}\n`);
  const warn = warnings(results);
  if (warn.length) process.stdout.write(`\nwarnings:\n${warn.map((w) => `  - ${w}`).join('\n')}\n`);
  process.stdout.write(`\n(${seconds.toFixed(0)} s)\n`);
  const goals = opts.targets ? targets(results) : undefined;
  if (goals) {
    process.stdout.write(
      `\nTargets (issue 13) — ${host}; ws-guard ${opts.guard}${opts['guard-env'] ? ` with ${opts['guard-env']}` : ', no environment added'}\n` +
        `medians of ${opts.reps} interleaved rep(s) (row f: ${opts['idle-reps']}), range min–max; ratios of the medians, all from this run\n\n` +
        `${targetsTable(goals)}\n`,
    );
  }
  if (opts.json) writeFileSync(opts.json, `${JSON.stringify({ machine: info, opts, results, targets: goals }, null, 2)}\n`);
}

main()
  .then(() => {
    cleanupSync();
    process.exit(0);
  })
  .catch((err) => {
    log(`failed: ${err.stack ?? err}`);
    cleanupSync();
    process.exit(1);
  });
