// /proc readers shared by the bench orchestrator and the load generator (Linux only).
import { readFileSync, readdirSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

let clkTck = 100;
try {
  clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
} catch {
  // 100 is the value on every mainstream Linux build.
}
export const CLK_TCK = clkTck;

/** Fields of /proc/<pid>/stat after the `(comm)` field; index 0 is field 3 (state). */
function statFields(pid) {
  const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return text.slice(text.lastIndexOf(')') + 2).split(' ');
}

/** utime + stime of a whole process (all its threads, live and exited) in microseconds. */
export function cpuMicros(pid) {
  const f = statFields(pid);
  return ((Number(f[11]) + Number(f[12])) * 1e6) / CLK_TCK;
}

/** [utime, stime] of a whole process in microseconds. */
export function cpuSplitMicros(pid) {
  const f = statFields(pid);
  return [(Number(f[11]) * 1e6) / CLK_TCK, (Number(f[12]) * 1e6) / CLK_TCK];
}

/** Minor page faults of a whole process (field 10 of /proc/<pid>/stat; children excluded). */
export function minorFaults(pid) {
  return Number(statFields(pid)[7]);
}

/** Sum of cpuMicros over several processes; a vanished process counts 0. */
export function cpuMicrosSum(pids) {
  let total = 0;
  for (const pid of pids) {
    try {
      total += cpuMicros(pid);
    } catch {
      // gone
    }
  }
  return total;
}

/** VmRSS of a process in KiB. */
export function rssKiB(pid) {
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : 0;
}

export function rssKiBSum(pids) {
  let total = 0;
  for (const pid of pids) {
    try {
      total += rssKiB(pid);
    } catch {
      // gone
    }
  }
  return total;
}

export function alive(pid) {
  try {
    readFileSync(`/proc/${pid}/stat`);
    return true;
  } catch {
    return false;
  }
}

/** Direct children of a process (by scanning /proc: /proc/<pid>/task/<tid>/children needs a kernel option). */
export function childrenOf(pid) {
  const out = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (Number(statFields(name)[1]) === pid) out.push(Number(name));
    } catch {
      // raced with an exit
    }
  }
  return out;
}

export function commOf(pid) {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

/**
 * A bench child ends by itself: on SIGTERM/SIGINT, when the bench's stdin pipe closes (the bench is gone),
 * and at the latest after `maxLifetimeMs`.
 */
export function exitWithBench(maxLifetimeMs) {
  const exit = () => process.exit(0);
  process.on('SIGTERM', exit);
  process.on('SIGINT', exit);
  process.stdin.on('end', exit);
  process.stdin.on('error', exit);
  process.stdin.resume();
  setTimeout(exit, maxLifetimeMs).unref();
}
