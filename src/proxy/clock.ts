/** A pending timer; `unref` lets the process exit while it waits (Node's `Timeout.unref`). */
export interface Timer {
  unref(): unknown;
}

/**
 * What a connection's timers need of time. The session and its parts take one, so that their unit tests
 * can run time by hand (test/helpers/manual-clock.ts) instead of waiting for it.
 */
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
  setTimeout(callback: () => void, ms: number): Timer;
  clearTimeout(timer: Timer): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (timer) => clearTimeout(timer as NodeJS.Timeout),
};
