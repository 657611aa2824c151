import { closeFrame } from '../frames/close.js';
import type { FrameInspector } from '../frames/inspector.js';
import type { Clock, Timer } from './clock.js';
import type { Leg } from './handle-leg.js';

/** How long the upstream may go on answering what it received before a client fault, before its close. */
const SETTLE_MS = 100;

export interface ClosingLegs {
  client: Leg;
  upstream: Leg;
  /** The inspectors of client → upstream and upstream → client. */
  c2u: FrameInspector;
  u2c: FrameInspector;
}

/**
 * The guard's part in the closing handshake. Its close frame is owed to each side that has not sent one of
 * its own (RFC 6455 §5.5.1: nothing may follow a close), and can be written only once that direction is at
 * a frame boundary, so it waits until the direction's inspector has stopped. `timeouts.close` then ends
 * what is left: the upstream, as the server, closes TCP first (§7.1.1), and the timer covers a peer that
 * never does.
 */
export class ClosingHandshake {
  private readonly client: Leg;
  private readonly upstream: Leg;
  private readonly c2u: FrameInspector;
  private readonly u2c: FrameInspector;
  private readonly closeTimeoutMs: number;
  private readonly clock: Clock;
  private owesClient = false;
  private owesUpstream = false;
  /** What every close frame the guard owes says: the first reason it closed for (0: it has not closed). */
  private code = 0;
  private text = '';
  /** The upstream's close waits a moment, so it can answer what it already received (`flushToClient`). */
  private settling = false;
  private settleTimer: Timer | null = null;
  /** Bounds the wait for the upstream's close before the client gets the guard's (`flushToClient`). */
  private flushTimer: Timer | null = null;
  private closeTimer: Timer | null = null;

  constructor(legs: ClosingLegs, closeTimeoutMs: number, clock: Clock) {
    this.client = legs.client;
    this.upstream = legs.upstream;
    this.c2u = legs.c2u;
    this.u2c = legs.u2c;
    this.closeTimeoutMs = closeTimeoutMs;
    this.clock = clock;
  }

  /** A guard close frame is still owed to a side. */
  get owes(): boolean {
    return this.owesClient || this.owesUpstream;
  }

  /**
   * The guard closes: both directions stop at their next frame boundary, each side that has not sent its
   * own close gets the guard's (`code`, `text` when it can be written now), and the close timer starts.
   * `clientFault`: the client's stream was refused, so the client goes on receiving what the upstream
   * answers until the upstream closes (`flushToClient`).
   */
  owe(code: number, text: string, clientFault: boolean): void {
    // Frames paid later carry the first reason too: one written after a peer's own close used to say 0, a
    // code RFC 6455 §7.4 does not allow on the wire, and a second reason must not contradict the first.
    if (this.code === 0) {
      this.code = code;
      this.text = text;
    }
    if (!this.c2u.closeSeen && !this.upstream.destroyed) {
      this.c2u.stopAtBoundary();
      this.owesUpstream = true;
    }
    if (!this.u2c.closeSeen && !this.client.destroyed && !this.owesClient) {
      this.owesClient = true;
      if (this.owesUpstream && clientFault && !this.u2c.stopped) this.flushToClient();
      else this.u2c.stopAtBoundary();
    }
    this.pay(this.code, this.text);
    this.armCloseTimer();
  }

  /** Writes the owed close frames that can be written now. */
  payDue(): void {
    this.pay(this.code, this.text);
  }

  /** The upstream will send nothing more worth waiting for: the client's close goes out at the next boundary. */
  releaseClientClose(): void {
    if (!this.owesClient) return;
    this.u2c.stopAtBoundary();
    this.payDue();
  }

  /** Both sockets are destroyed `timeouts.close` from the first call, whatever the peers do meanwhile. */
  armCloseTimer(): void {
    if (this.closeTimer !== null) return;
    this.closeTimer = this.clock.setTimeout(() => {
      this.client.destroy();
      this.upstream.destroy();
    }, this.closeTimeoutMs);
    this.closeTimer.unref();
  }

  /** The connection has ended: no timer of the handshake may fire any more. */
  dispose(): void {
    for (const timer of [this.closeTimer, this.flushTimer, this.settleTimer]) if (timer !== null) this.clock.clearTimeout(timer);
  }

  /**
   * The guard failed the client's stream: nothing more of it is forwarded, but the client keeps receiving
   * what the upstream sends until the upstream answers the guard's close (the echo of a valid message in
   * front of the bad frame, say), so nothing the client was owed is lost. The upstream gets its close after
   * SETTLE_MS (at most a quarter of `timeouts.close`): an app that reads messages in one task and answers
   * them in another (Python websockets) would otherwise see the close before it has sent its answer, and
   * drop it. The upstream's own close frame is not relayed: the guard's close goes to the client in its
   * place. A silent upstream is waited for half of `timeouts.close`; then the client's close goes out at
   * the next frame boundary, and the close timer still ends everything within `timeouts.close`.
   */
  private flushToClient(): void {
    this.u2c.stopBeforeClose();
    this.settling = true;
    this.settleTimer = this.clock.setTimeout(() => {
      this.settling = false;
      this.payDue();
    }, Math.min(SETTLE_MS, Math.floor(this.closeTimeoutMs / 4)));
    this.settleTimer.unref();
    this.flushTimer = this.clock.setTimeout(() => this.releaseClientClose(), Math.floor(this.closeTimeoutMs / 2));
    this.flushTimer.unref();
  }

  /** Writes owed close frames to the sides whose direction has reached a frame boundary (RFC 6455 §5.5.1). */
  private pay(code: number, text: string): void {
    if (this.owesUpstream && this.c2u.stopped && !this.settling) {
      this.owesUpstream = false;
      // §5.3: a frame toward the server is masked.
      if (!this.upstream.destroyed && !this.upstream.writableEnded) this.upstream.end(closeFrame(code, text, true));
    }
    if (this.owesClient && this.u2c.stopped) {
      this.owesClient = false;
      if (!this.client.destroyed && !this.client.writableEnded) this.client.end(closeFrame(code, text, false));
    }
  }
}
