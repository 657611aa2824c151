import cluster from 'node:cluster';
import { randomBytes } from 'node:crypto';
import { readFileSync, watchFile } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, Option } from 'commander';
import { stringify } from 'yaml';
import { ConfigError, loadConfigFile, parseConfig, readConfigTree } from '../config/load.js';
import type { GuardConfig } from '../config/schema.js';
import { GuardEvents } from '../events.js';
import { attachLogger } from '../ops/audit-log.js';
import { createLogger } from '../ops/logger.js';
import { startGuard, type Guard } from '../server/guard.js';
import { ListenError, formatAddress } from '../server/listen.js';
import { localOperator, startAdmin, type Admin, type Operator } from '../ops/admin.js';
import { Bans } from '../limits/bans.js';
import { createMetrics, metricsSource } from '../ops/metrics.js';
import { IpcStore } from '../limits/ipc-store.js';
import { RedisStore } from '../limits/redis-store.js';
import { broadcastOperator, channelName, OperatorChannel } from '../ops/operator-channel.js';
import { answerMetrics, answerOperator, exitOnStartupFailure, runPrimary, WORKER_ID_RANGE, workerCount } from './cluster.js';
import { startedThroughNpm, watchParent } from './parent.js';
import { parseDuration } from '../config/units.js';
import { startEchoUpstream } from './echo-upstream.js';
import { mintToken, printable } from './token.js';

const root = new URL('../../', import.meta.url);
const pkg = JSON.parse(readFileSync(new URL('package.json', root), 'utf8')) as { version: string };
const EXAMPLE_CONFIG = fileURLToPath(new URL('config/guard.example.yaml', root));

/** Builds a config or ends the process with every problem listed, before anything listens. */
function configOrExit(build: () => GuardConfig): GuardConfig {
  try {
    return build();
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`ws-guard: ${err.message}\n`);
    process.exit(1);
  }
}

/**
 * The config file of `check` and `token`: the argument, or -c/--config (after the command or before it).
 * Two that name different files are refused rather than one of them picked.
 */
function configFileOf(command: Command, positional: string | undefined): string {
  const given = [positional, (command.opts() as { config?: string }).config, (program.opts() as { config?: string }).config];
  const files = given.filter((f): f is string => f !== undefined);
  const [file] = files;
  const usage = `ws-guard ${command.name()} <file>, or ws-guard ${command.name()} --config <file>`;
  if (file === undefined) {
    process.stderr.write(`ws-guard: ${command.name()} needs a config file: ${usage}\n`);
    process.exit(1);
  }
  const other = files.find((f) => resolve(f) !== resolve(file));
  if (other !== undefined) {
    process.stderr.write(`ws-guard: ${command.name()}: two config files given (${file} and ${other}); give one: ${usage}\n`);
    process.exit(1);
  }
  return file;
}

interface RunOptions {
  /** Re-reads the config for SIGHUP (and --watch); absent for the demo. */
  reload?: () => GuardConfig;
  /** A file to watch: a change reloads like SIGHUP. */
  watch?: string;
  onStop?: () => Promise<void>;
}

async function run(config: GuardConfig, options: RunOptions = {}): Promise<void> {
  const logger = createLogger();
  if (workerCount(config) > 1 && cluster.isPrimary) return runPrimary(config, logger);
  const events = new GuardEvents();
  attachLogger(events, logger);
  let guard: Guard | undefined;
  const metrics = config.admin && createMetrics(config, events, () => guard);
  // In a worker, slots and handshakes are counted by the primary, and it serves the admin listener.
  if (metrics && cluster.isWorker) answerMetrics(metrics);
  let admin: Admin | undefined;
  // With store.redis every process (each worker too) is a replica of its own: no IPC store.
  const redisStore = config.store && new RedisStore(config.store, (t) => events.emit('store', t), (err) => events.emit('internalError', { err, where: 'store' }));
  await redisStore?.start();
  // The primary frees a worker's slots the moment it exits, rather than when its lease runs out.
  if (redisStore && cluster.isWorker) process.send!({ wsGuardReplica: redisStore.id }, undefined, {}, () => {});
  const bans = new Bans();
  let local: Operator | undefined;
  let channel: OperatorChannel | undefined;
  if (config.store) {
    // Every replica obeys orders from the others, with or without an admin listener of its own; a
    // worker skips its primary's, which reached it over IPC already. Heard before the guard listens, an
    // order has no connection to close: only its ban counts.
    const ignore = cluster.isWorker ? [channelName(process.ppid)] : [];
    channel = new OperatorChannel(config.store, channelName(), ignore, (selector, banMs) => {
      if (local !== undefined) void local.close(selector, banMs);
      else if (banMs !== undefined && 'user' in selector) bans.add('user', selector.user, banMs);
      else if (banMs !== undefined && 'ip' in selector) bans.add('ip', selector.ip, banMs);
    }, logger);
    // Listening before the bans kept in Redis are read would let a banned user in for a moment.
    await channel.started(Math.max(config.store.timeout, 1000));
  }
  try {
    const started = await startGuard(config, {
      events,
      store: redisStore ?? (cluster.isWorker ? new IpcStore() : undefined),
      firstId: cluster.isWorker ? cluster.worker!.id * WORKER_ID_RANGE : 0,
      bans,
    });
    guard = started;
    local = localOperator(started);
    if (cluster.isWorker && config.admin) answerOperator(local);
    if (metrics && cluster.isPrimary) {
      admin = await startAdmin(config, {
        draining: () => started.draining,
        metrics: metricsSource(metrics),
        operator: channel ? broadcastOperator(local, channel) : local,
        storeReady: config.store?.onError === 'closed' ? () => redisStore!.up : undefined,
      }, logger);
    }
  } catch (err) {
    if (!(err instanceof ListenError)) throw err;
    return exitOnStartupFailure(err.message);
  }
  events.emit('listening', { address: formatAddress(guard.host, guard.port), upstream: config.upstream.origin });

  const running = guard;
  const stop = async (signal: NodeJS.Signals | 'parent exited') => {
    logger.info({ signal }, 'stopping');
    let code = 0;
    try {
      // The admin listener stays up through the drain, so /readyz answers 503 meanwhile.
      await running.drain();
      // After the drain every slot is back; leaving tells the other replicas at once, not after leaseTtl.
      await redisStore?.close();
      channel?.close();
      await admin?.close();
      await options.onStop?.();
    } catch (err) {
      logger.error({ err }, 'stopping failed');
      code = 1;
    }
    logger.flush(() => process.exit(code));
  };
  process.once('SIGTERM', (signal) => void stop(signal));
  process.once('SIGINT', (signal) => void stop(signal));
  // A worker's parent is the primary, which ends its workers itself.
  if (cluster.isPrimary && startedThroughNpm()) watchParent(() => void stop('parent exited'));

  const { reload } = options;
  if (reload === undefined) return;
  const apply = (trigger: string) => {
    try {
      const next = reload();
      if (JSON.stringify(next.store) !== JSON.stringify(config.store)) {
        logger.warn({ trigger }, 'config reload: store changes take effect at the next start; the running store stays');
      }
      running.reload(next);
      logger.info({ trigger }, 'config reloaded: new connections use it, open ones keep theirs');
    } catch (err) {
      // The old config stays: a bad edit must never take the guard down.
      const problems = err instanceof ConfigError ? err.problems : [(err as Error).message];
      logger.error({ trigger, problems }, 'config reload refused; the previous config stays');
    }
  };
  process.on('SIGHUP', () => apply('SIGHUP'));
  if (options.watch !== undefined) {
    // Editors save in several steps; one reload once the file has been quiet for a moment.
    let timer: NodeJS.Timeout | undefined;
    watchFile(options.watch, { interval: 500 }, () => {
      clearTimeout(timer);
      timer = setTimeout(() => apply('watch'), 200);
    });
  }
}

const program = new Command('ws-guard')
  .description('WebSocket guard: authenticates upgrades and inspects every frame on its way to the upstream')
  .version(pkg.version)
  .enablePositionalOptions()
  .addOption(new Option('-c, --config <file>', 'YAML config file (see config/guard.example.yaml)'))
  .option('--watch', 'reload the config file when it changes (SIGHUP always reloads)')
  .action(async (options: { config?: string; watch?: boolean }) => {
    const file = options.config;
    if (file === undefined) return program.help({ error: true });
    await run(configOrExit(() => loadConfigFile(file)), { reload: () => loadConfigFile(file), watch: options.watch ? file : undefined });
  });

program
  .command('check')
  .description('validate a config file; prints the effective config and exits 0, or lists every problem and exits 1')
  .argument('[file]', 'YAML config file (or --config <file>)')
  .option('-c, --config <file>', 'YAML config file (or give it as the argument)')
  .action((positional: string | undefined, _options: unknown, command: Command) => {
    const file = configFileOf(command, positional);
    const config = configOrExit(() => loadConfigFile(file));
    process.stdout.write(`# ${file}: valid (durations in ms, sizes in bytes, secrets masked)\n${stringify(printable(config))}`);
  });

program
  .command('token')
  .description('mint a development token from the configured secret (auth.jwt.secret)')
  .argument('[file]', 'YAML config file (or --config <file>)')
  .option('-c, --config <file>', 'YAML config file (or give it as the argument)')
  .option('--sub <subject>', 'the sub claim', 'dev')
  .option('--ttl <duration>', 'lifetime, like 10m or 24h', '10m')
  .action(async (positional: string | undefined, options: { sub: string; ttl: string }, command: Command) => {
    const config = configOrExit(() => loadConfigFile(configFileOf(command, positional)));
    const ttlMs = parseDuration(options.ttl);
    if (config.auth === undefined || ttlMs === undefined) {
      process.stderr.write(`ws-guard: ${config.auth === undefined ? 'auth.jwt is not configured' : `--ttl: expected a duration, got "${options.ttl}"`}\n`);
      process.exit(1);
    }
    try {
      process.stdout.write(`${await mintToken(config.auth.jwt, { sub: options.sub, ttlMs })}\n`);
    } catch (err) {
      process.stderr.write(`ws-guard: ${(err as Error).message}\n`);
      process.exit(1);
    }
  });

program
  .command('demo')
  .description('run ws-guard with the example config in front of a built-in echo upstream')
  .option('--listen <host:port>', 'where the guard listens', '127.0.0.1:8080')
  .action(async (options: { listen: string }) => {
    const echo = await startEchoUpstream();
    // The example config reads its secret from JWT_SECRET; the demo makes up one for this run only.
    const env = { ...process.env, JWT_SECRET: process.env.JWT_SECRET ?? randomBytes(32).toString('hex') };
    const example = readConfigTree(EXAMPLE_CONFIG) as Record<string, unknown>;
    const config = configOrExit(() =>
      parseConfig({ ...example, listen: options.listen, upstream: `http://127.0.0.1:${echo.port}` }, env),
    );
    await run(config, { onStop: () => echo.close() });
    const token = await mintToken(config.auth!.jwt, { sub: 'demo-user', ttlMs: 3_600_000 });
    const base = `ws://${options.listen}`;
    const client = (url: string, protocols: string) =>
      `node -e "const ws=new (require('ws'))('${url}'${protocols});ws.on('open',()=>ws.send('hello'));` +
      `ws.on('message',m=>{console.log(String(m));ws.close()});ws.on('unexpected-response',(q,r)=>console.log('refused:',r.statusCode))"`;
    process.stderr.write(
      `\nws-guard demo: guarding a built-in echo app at http://127.0.0.1:${echo.port}\n` +
        `  WebSocket: ${base}/ (a JWT is required; this one is valid for an hour)\n` +
        `  try:  ${client(`${base}/`, `,['bearer','${token}']`)}\n` +
        `  no token, refused with 401:  ${client(`${base}/`, '')}\n` +
        `  route without auth:  ${client(`${base}/public`, '')}\n` +
        `  HTTP (the same token; without it 401):  curl -H 'Authorization: Bearer ${token}' http://${options.listen}/hello\n` +
        `  HTTP on the route without auth:  curl http://${options.listen}/public\n` +
        (config.admin ? `  metrics:  curl http://${config.admin.host}:${config.admin.port}/metrics\n` : '') +
        `  stop with Ctrl-C\n\n`,
    );
  });

await program.parseAsync();
