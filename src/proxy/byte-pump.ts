import { FORWARD, MEASURE, WAIT, type FrameInspector } from '../frames/inspector.js';
import type { Clock, Timer } from './clock.js';
import type { CompressedGate } from './compressed-gate.js';
import { HandleLeg, WRITER, type Leg, type PooledReceiver } from './handle-leg.js';

// Why a pump does not read its source; it reads again once no reason is left (design.md §2: backpressure).
/** The other socket's buffer is full, until its 'drain'. */
const FULL = 1;
/** The rest of a chunk waits to be fed again: a throttled message's token, or a message being measured. */
const HELD = 2;
/** The process's hold budget is spent (compressed-gate.ts), until other connections give bytes back. */
const BUDGET = 4;

/** The pump that writes to a socket, for the module-level 'drain' listener below. */
type Written = Leg & { [WRITER]: BytePump };

/** One function for every socket rather than a closure per pump: idle connections are counted in bytes. */
function onDrain(this: Written): void {
  this[WRITER].drained();
}

/** What a pump tells its session (the session itself: an object and two closures less per connection). */
export interface PumpEvents {
  /** The inspector said STOP: nothing more goes on in this direction. */
  pumpStopped(pump: BytePump): void;
  /** A bug met while pumping: it ends this connection, never the process (design.md §1). */
  pumpFailed(err: unknown): void;
}

/**
 * One direction of a connection: reads a socket, feeds each chunk to the direction's inspector, and writes
 * to the other socket what the verdict lets through, as the chunk it was read in (design.md §2: no copy
 * beyond the one out of the shared read buffer, no write per message). When the other socket cannot take more, the source is not read until it
 * drains. The verdicts that defer the rest of a chunk (a throttle's WAIT, a compressed message's MEASURE)
 * keep it, unread further, and feed it again when the wait is over.
 */
export class BytePump implements PooledReceiver {
  readonly inspector: FrameInspector;
  /** Whom this pump reads from. */
  readonly side: 'client' | 'upstream';
  private readonly from: Leg;
  private readonly to: Leg;
  /** Set on the client's direction when compressed messages are measured before they go on. */
  private readonly gate: CompressedGate | null;
  private readonly clock: Clock;
  private readonly events: PumpEvents;
  /** The reasons the source is not read (FULL | HELD | BUDGET). */
  private paused = 0;
  /** The rest of a chunk after WAIT or MEASURE, fed again when the wait is over. */
  private held: Buffer | null = null;
  private waitTimer: Timer | null = null;

  constructor(
    side: 'client' | 'upstream', from: Leg, to: Leg, inspector: FrameInspector,
    gate: CompressedGate | null, clock: Clock, events: PumpEvents,
  ) {
    this.side = side;
    this.from = from;
    this.to = to;
    this.inspector = inspector;
    this.gate = gate;
    this.clock = clock;
    this.events = events;
    (to as Written)[WRITER] = this;
    to.on('drain', onDrain);
  }

  /** The other socket's buffer has room again. */
  drained(): void {
    this.resumeFor(FULL);
  }

  /**
   * Starts pumping: `head` (the bytes that came with the handshake) first, then what the socket buffered
   * while the connection was set up, then every read, in the order they came.
   */
  start(head: Buffer): void {
    const buffered = this.from.readableLength > 0 ? this.from.read() as Buffer : null;
    const first = buffered === null ? head : head.length === 0 ? buffered : Buffer.concat([head, buffered]);
    if (this.from instanceof HandleLeg) this.from.readTo(this);
    else this.from.on('data', (chunk: Buffer) => void this.receive(chunk));
    if (first.length > 0) this.receive(first);
    if (this.paused === 0 && !this.from.destroyed) this.from.resume();
  }

  /** Every chunk from outside enters here: a fault ends this connection, never the process. False after a fault. */
  private receive(chunk: Buffer): boolean {
    try {
      this.forward(chunk);
      return true;
    } catch (err) {
      this.events.pumpFailed(err);
      return false;
    }
  }

  /**
   * A read in a reused buffer (handle-leg.ts): true when nothing refers to the chunk any more, so its bytes
   * may be overwritten by the next read. That takes all of it written through to the kernel (nothing queued
   * on the other socket: a queued write still points at these bytes) and nothing of it kept back by a
   * throttle, a measurement or the compressed-message gate.
   */
  receivePooled(chunk: Buffer): boolean {
    return this.receive(chunk) && this.held === null && (this.gate === null || !this.gate.holding) && this.to.writableLength === 0;
  }

  /** The hold budget has room again (compressed-gate.ts). */
  budgetFreed(): void {
    this.resumeFor(BUDGET);
  }

  /**
   * The guard closes while a compressed message is held: none of it went out, so the other side is at the
   * frame boundary where that message began, and this direction stops there. What was kept behind the
   * message is dropped with it, and the source is read again (into the stopped inspector, which forwards
   * nothing), so the peer's FIN is seen at once rather than after `timeouts.close`.
   */
  abandonHeldMessage(): void {
    if (this.gate === null || !this.gate.holding) return;
    this.gate.drop();
    this.inspector.stopNow();
    this.held = null;
    this.resumeFor(BUDGET | HELD);
  }

  /** The connection has ended: a throttled message's timer may not fire any more. */
  dispose(): void {
    if (this.waitTimer !== null) this.clock.clearTimeout(this.waitTimer);
  }

  private forward(chunk: Buffer): void {
    const inspector = this.inspector;
    const verdict = inspector.feed(chunk);
    const n = inspector.accepted;
    if (inspector.gateFrom < 0) this.write(chunk, n);
    else this.writeGated(chunk, n, inspector.gateFrom);
    if (verdict === FORWARD) return;
    if (verdict === WAIT) this.waitThenFeed(chunk.subarray(n), inspector.waitMs);
    else if (verdict === MEASURE) this.measureThenFeed(chunk.subarray(n));
    else {
      if (inspector.closeSeen && this.gate !== null && this.gate.holding) this.passCloseInsideMessage();
      this.events.pumpStopped(this);
    }
  }

  /**
   * The client closed between the fragments of a compressed message still held (RFC 6455 §5.4 lets a
   * control frame come there). The unfinished message is dropped: it can never be delivered, and unmeasured
   * it may not go on. The close frame goes on by itself, at a frame boundary, so the upstream answers it.
   */
  private passCloseInsideMessage(): void {
    this.writeAll(this.gate!.takeClose(this.inspector.closeFrameLength));
    this.resumeFor(BUDGET);
  }

  /** Bytes the gate held, as the chunks they came in. */
  private writeAll(chunks: readonly Buffer[]): void {
    let flushed = true;
    for (const bytes of chunks) flushed = this.to.write(bytes) && flushed;
    if (!flushed) this.pauseFor(FULL);
  }

  /** The held header bytes the chunk completed, then its first `n` bytes: the chunk itself when all of it goes on. */
  private write(chunk: Buffer, n: number): void {
    const released = this.inspector.released;
    let flushed = true;
    if (released !== null) flushed = this.to.write(released);
    if (n === chunk.length) flushed = this.to.write(chunk) && flushed;
    else if (n > 0) flushed = this.to.write(chunk.subarray(0, n)) && flushed;
    if (!flushed) this.pauseFor(FULL);
  }

  /** From `gateFrom` on, the bytes belong to a compressed message that is measured before it may go on. */
  private writeGated(chunk: Buffer, n: number, gateFrom: number): void {
    const gate = this.gate!;
    const released = this.inspector.released;
    let flushed = true;
    let budgetSpent = false;
    if (released !== null) {
      if (gateFrom === 0) budgetSpent = gate.hold(released);
      else flushed = this.to.write(released);
    }
    if (gateFrom > 0) flushed = this.to.write(chunk.subarray(0, gateFrom)) && flushed;
    if (n > gateFrom) budgetSpent = gate.hold(chunk.subarray(gateFrom, n)) || budgetSpent;
    if (budgetSpent) this.pauseFor(BUDGET);
    if (!flushed) this.pauseFor(FULL);
  }

  /**
   * `onExceed: throttle`: the message waits for its token with the rest of the chunk kept, and the source is
   * not read meanwhile, so it is slowed by TCP backpressure and nothing is lost.
   */
  private waitThenFeed(rest: Buffer, ms: number): void {
    this.keep(rest);
    this.waitTimer = this.clock.setTimeout(() => {
      this.waitTimer = null;
      try {
        this.feedHeld();
      } catch (err) {
        this.events.pumpFailed(err);
      }
    }, ms);
  }

  /** A compressed message is complete: it goes on once measured, and the rest of the chunk after it. */
  private measureThenFeed(rest: Buffer): void {
    this.keep(rest);
    this.gate!.measure().then((message) => {
      if (message === null) return;
      // The gate gave the message's bytes back to the budget: a wait for the budget ends with it.
      this.paused &= ~BUDGET;
      this.writeAll(message);
      this.feedHeld();
    }).catch((err: unknown) => this.events.pumpFailed(err));
  }

  private keep(rest: Buffer): void {
    this.held = rest;
    this.pauseFor(HELD);
  }

  /** Feeds the bytes kept back by a throttle or a measurement, then reads the source again. */
  private feedHeld(): void {
    const held = this.held;
    this.held = null;
    this.paused &= ~HELD;
    if (held !== null && held.length > 0) this.forward(held);
    if (this.paused === 0 && !this.from.destroyed) this.from.resume();
  }

  private pauseFor(reason: number): void {
    this.paused |= reason;
    this.from.pause();
  }

  private resumeFor(reason: number): void {
    this.paused &= ~reason;
    if (this.paused === 0 && !this.from.destroyed) this.from.resume();
  }
}
