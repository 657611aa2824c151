/** How often the parent is looked for: a drain that starts within a second of the parent's end is soon enough. */
const PARENT_CHECK_MS = 1000;

/**
 * Whether this process was started through npm (`npx ws-guard`, `npm exec`, `npm start`). npm runs the bin
 * under a shell and does not pass a SIGTERM on: the supervisor's SIGTERM ends npm and the shell, and
 * ws-guard would run on as an orphan that never drains. npm marks the processes it starts with
 * `npm_command`.
 */
export function startedThroughNpm(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.npm_command !== undefined;
}

/**
 * Calls `onGone` once when the parent process has exited (the process is re-parented, to init or a
 * subreaper, so its parent pid changes). The check never keeps the process alive by itself.
 */
export function watchParent(onGone: () => void): void {
  const parent = process.ppid;
  const timer = setInterval(() => {
    if (process.ppid === parent) return;
    clearInterval(timer);
    onGone();
  }, PARENT_CHECK_MS);
  timer.unref();
}
