import type { Clock, Timer } from '../../src/proxy/clock.js';

interface Pending extends Timer {
  at: number;
  order: number;
  callback: () => void;
}

/** A clock that moves only when told to: timers run in `advance`, in the order they fall due. */
export class ManualClock implements Clock {
  private time: number;
  private order = 0;
  private readonly timers = new Set<Pending>();

  constructor(start = 1_000_000) {
    this.time = start;
  }

  now(): number {
    return this.time;
  }

  setTimeout(callback: () => void, ms: number): Timer {
    const timer: Pending = { at: this.time + Math.max(1, ms), order: this.order++, callback, unref: () => timer };
    this.timers.add(timer);
    return timer;
  }

  clearTimeout(timer: Timer): void {
    this.timers.delete(timer as Pending);
  }

  /** Timers not yet run nor cleared. */
  get pending(): number {
    return this.timers.size;
  }

  /** Moves time on by `ms`, running every timer that falls due on the way (and those they set). */
  advance(ms: number): void {
    const end = this.time + ms;
    for (;;) {
      let next: Pending | undefined;
      for (const timer of this.timers) {
        if (timer.at <= end && (next === undefined || timer.at < next.at || (timer.at === next.at && timer.order < next.order))) next = timer;
      }
      if (next === undefined) break;
      this.timers.delete(next);
      this.time = next.at;
      next.callback();
    }
    this.time = end;
  }
}
