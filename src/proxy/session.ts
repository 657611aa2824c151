import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { closeFrame } from '../frames/close.js';
import { InflateCounter } from '../frames/inflate-counter.js';
import { FrameInspector, MEASURE, STOP, WAIT, compressedAllowance, type MessageLimits } from '../frames/inspector.js';
import { ERRORS, type CloseReason } from '../errors.js';
import type { HoldBudget } from '../limits/hold-budget.js';
import type { SessionEnd } from '../events.js';

export type { SessionEnd };

export interface SessionOptions {
  id: number;
  client: Socket;
  upstream: Socket;
  /** Bytes the client sent after its handshake, and the upstream after its 101. */
  clientHead: Buffer;
  upstreamHead: Buffer;
  /** permessage-deflate was negotiated in the 101. */
  compressed: boolean;
  closeTimeoutMs: number;
  /** With `expiry: close`: when the connection's token expires (ms since the epoch); it is closed with 4001 then. */
  expiresAt: number | undefined;
  /** Limits on the client's messages (rate, size, fragments). */
  messageLimits: Omit<MessageLimits, 'onCompressedPayload'> | undefined;
  /** The 101 negotiated client_no_context_takeover: each client message is compressed on its own. */
  clientNoContextTakeover: boolean;
  /** The process-wide budget for held compressed messages (limits.holdBudget). */
  holdBudget: HoldBudget;
  /** No data frame either way for this long closes with 1001 (checked four times per period). */
  idleTimeoutMs: number | undefined;
  maxLifetimeMs: number | undefined;
}

/**
 * Closes for something wrong in the client's stream: the upstream's frames already on their way still
 * reach the client before the guard's close (`Session.flushToClient`).
 */
/** How long the upstream may go on answering what it received before a client fault, before its close. */
const SETTLE_MS = 100;

const CLIENT_STREAM_FAULTS: ReadonlySet<CloseReason> = new Set<CloseReason>([
  'PROTOCOL_VIOLATION', 'MESSAGE_TOO_BIG', 'TOO_MANY_FRAGMENTS', 'INVALID_COMPRESSED', 'MESSAGE_RATE', 'CONTROL_FRAME_RATE',
]);


/**
 * One proxied WebSocket connection: two sockets, an inspector per direction, and the closing logic.
 * Chunks are forwarded as they were received (design.md §2); the inspectors only say how much of each.
 */
export class Session extends EventEmitter<{ end: [SessionEnd] }> {
  readonly id: number;
  private readonly client: Socket;
  private readonly upstream: Socket;
  /** client → upstream and upstream → client. */
  private readonly c2u: FrameInspector;
  private readonly u2c: FrameInspector;
  private readonly closeTimeoutMs: number;
  private readonly startedAt = Date.now();
  private closedBy: SessionEnd['closedBy'] | null = null;
  private reason: CloseReason | null = null;
  /** Why the guard closed, or the first socket error: for the audit line. */
  private detail: string | undefined;
  private guardCloseCode = 0;
  /** A guard close frame still owed to that side, written once its direction reaches a frame boundary. */
  private owesClient = false;
  private owesUpstream = false;
  private closeTimer: NodeJS.Timeout | null = null;
  /** Bounds the wait for the upstream's close before the client gets the guard's (`flushToClient`). */
  private flushTimer: NodeJS.Timeout | null = null;
  /** The upstream's close waits a moment, so it can answer what it already received (`flushToClient`). */
  private settleTimer: NodeJS.Timeout | null = null;
  private settling = false;
  private expiryTimer: NodeJS.Timeout | null = null;
  private idleTimer: NodeJS.Timeout | null = null;
  private lifetimeTimer: NodeJS.Timeout | null = null;
  /** Client bytes not yet inspected while a message waits for its rate (throttle). */
  private held: Buffer | null = null;
  private throttleTimer: NodeJS.Timeout | null = null;
  /** The upstream's socket buffer is full: the client stays paused until it drains. */
  private upstreamFull = false;
  /** Measures compressed client messages inflated, when a size limit is set on a compressed connection. */
  private readonly counter: InflateCounter | null = null;
  /** A compressed client message held back until its inflated size is known, and its length. */
  private gate: Buffer[] | null = null;
  private gateBytes = 0;
  private readonly gateCap: number = 0;
  private readonly budget: HoldBudget;
  /** Paused until the hold budget has room again. */
  private awaitingBudget = false;
  /** Reads the client again once the budget has room: one function for the life of the session. */
  private readonly budgetFreed = () => {
    this.awaitingBudget = false;
    if (this.held === null && !this.upstreamFull && !this.client.destroyed) this.client.resume();
  };
  private openSockets = 2;

  constructor(options: SessionOptions) {
    super();
    this.id = options.id;
    this.client = options.client;
    this.upstream = options.upstream;
    this.closeTimeoutMs = options.closeTimeoutMs;
    this.budget = options.holdBudget;
    const limits = options.messageLimits;
    let onCompressedPayload: ((payload: Buffer) => void) | null = null;
    if (limits !== undefined && options.compressed && Number.isFinite(limits.maxMessageBytes)) {
      const counter = new InflateCounter(limits.maxMessageBytes, options.clientNoContextTakeover);
      this.counter = counter;
      // Control frames interleaved in a fragmented message get 64 KiB on top, then the message is refused.
      this.gateCap = compressedAllowance(limits.maxMessageBytes) + 65_536;
      onCompressedPayload = (payload) => counter.write(payload);
    }
    this.c2u = new FrameInspector({
      masked: true,
      compressed: options.compressed,
      limits: limits && { ...limits, onCompressedPayload },
    });
    this.u2c = new FrameInspector({ masked: false, compressed: options.compressed });

    for (const socket of [this.client, this.upstream]) {
      socket.setNoDelay(true);
      socket.setTimeout(0);
      socket.on('error', (err) => this.onSocketError(socket, err));
      // A leg that closed before the session existed has no 'close' left to emit; it still counts.
      if (socket.closed) process.nextTick(() => this.onSocketClose());
      else socket.once('close', () => this.onSocketClose());
    }
    this.client.on('data', (chunk: Buffer) => this.pass(chunk, this.client, this.upstream, this.c2u));
    this.upstream.on('data', (chunk: Buffer) => this.pass(chunk, this.upstream, this.client, this.u2c));
    // Backpressure: a side that cannot keep up pauses the other (design.md §2).
    this.client.on('drain', () => this.upstream.resume());
    this.upstream.on('drain', () => {
      this.upstreamFull = false;
      if (this.held === null && !this.awaitingBudget) this.client.resume();
    });
    this.client.on('end', () => this.onClientEnd());
    this.upstream.on('end', () => this.onUpstreamEnd());

    if (options.expiresAt !== undefined) this.armExpiry(options.expiresAt);
    if (options.idleTimeoutMs !== undefined) this.armIdle(options.idleTimeoutMs);
    if (options.maxLifetimeMs !== undefined) {
      this.lifetimeTimer = setTimeout(() => this.close('MAX_LIFETIME', 'maximum lifetime reached'), options.maxLifetimeMs);
    }
    if (options.upstreamHead.length > 0) this.pass(options.upstreamHead, this.upstream, this.client, this.u2c);
    if (options.clientHead.length > 0) this.pass(options.clientHead, this.client, this.upstream, this.c2u);
    // A client FIN that came before the session existed (while the token was verified, a JWKS fetched or
    // the upstream dialled) was emitted as 'end' to nobody, and http.Server sockets are half-open, so no
    // 'close' follows either: without this the session, its connection slot and the upstream leg would
    // wait forever for a client that has gone (test/limits.test.ts, "slots come back").
    if (this.client.readableEnded) this.onClientEnd();
  }

  /** Closes both sides with the reason's close code at frame boundaries; tears down after the close timeout. */
  close(reason: CloseReason, detail: string): void {
    const code = ERRORS[reason].close;
    if (this.closedBy === null) {
      this.closedBy = 'guard';
      this.reason = reason;
      this.guardCloseCode = code;
    }
    this.detail ??= detail;
    // A held compressed message never went out: the upstream is at a frame boundary where it began.
    if (this.gate !== null) {
      this.dropGate();
      this.c2u.stopNow();
    }
    // No client message goes on after a guard close: the copies queued for inflating are dropped now,
    // not when the peers have finished closing (up to timeouts.close later).
    this.counter?.destroy();
    // A side that already sent its own close frame gets none from the guard (RFC 6455 §5.5.1).
    if (!this.c2u.closeSeen && !this.upstream.destroyed) {
      this.c2u.stopAtBoundary();
      this.owesUpstream = true;
    }
    if (!this.u2c.closeSeen && !this.client.destroyed && !this.owesClient) {
      this.owesClient = true;
      if (this.owesUpstream && CLIENT_STREAM_FAULTS.has(reason) && !this.u2c.stopped) this.flushToClient();
      else this.u2c.stopAtBoundary();
    }
    this.payDebts(code, ERRORS[reason].message);
    this.armCloseTimer();
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
    this.settleTimer = setTimeout(() => {
      this.settling = false;
      this.payDebts(this.guardCloseCode, this.reason ? ERRORS[this.reason].message : '');
    }, Math.min(SETTLE_MS, Math.floor(this.closeTimeoutMs / 4)));
    this.settleTimer.unref();
    this.flushTimer = setTimeout(() => this.releaseClientClose(), Math.floor(this.closeTimeoutMs / 2));
    this.flushTimer.unref();
  }

  /** The upstream will send nothing more worth waiting for: the client's close goes out at the next boundary. */
  private releaseClientClose(): void {
    if (!this.owesClient) return;
    this.u2c.stopAtBoundary();
    this.payDebts(this.guardCloseCode, this.reason ? ERRORS[this.reason].message : '');
  }

  /** Messages and bytes so far, each way, for live metrics. */
  get counts(): { messagesIn: number; messagesOut: number; bytesIn: number; bytesOut: number } {
    return { messagesIn: this.c2u.messages, messagesOut: this.u2c.messages, bytesIn: this.c2u.bytes, bytesOut: this.u2c.bytes };
  }

  /** Bytes the guard holds for this connection in its socket buffers, both ways. */
  get bufferedBytes(): number {
    return this.client.writableLength + this.upstream.writableLength + this.client.readableLength + this.upstream.readableLength;
  }

  /** Drops both legs at once, without a closing handshake (used when the listener stops). */
  destroy(): void {
    this.client.destroy();
    this.upstream.destroy();
  }

  /** Every chunk from outside enters here: a fault while handling it ends this connection, never the process (design.md §1). */
  private pass(chunk: Buffer, from: Socket, to: Socket, inspector: FrameInspector): void {
    try {
      this.forward(chunk, from, to, inspector);
    } catch (err) {
      this.fault(err);
    }
  }

  private forward(chunk: Buffer, from: Socket, to: Socket, inspector: FrameInspector): void {
    const verdict = inspector.feed(chunk);
    const n = inspector.accepted;
    let flushed = true;
    const gateFrom = inspector.gateFrom;
    if (gateFrom >= 0) {
      // From gateFrom on, the bytes belong to a compressed message that is measured before it may go on.
      if (inspector.released !== null) {
        if (gateFrom === 0) this.hold(inspector.released);
        else flushed = to.write(inspector.released);
      }
      if (gateFrom > 0) flushed = to.write(chunk.subarray(0, gateFrom)) && flushed;
      if (n > gateFrom) this.hold(chunk.subarray(gateFrom, n));
    } else {
      if (inspector.released !== null) flushed = to.write(inspector.released);
      if (n === chunk.length) flushed = to.write(chunk) && flushed;
      else if (n > 0) flushed = to.write(chunk.subarray(0, n)) && flushed;
    }
    if (!flushed) {
      if (to === this.upstream) this.upstreamFull = true;
      from.pause();
    }
    if (verdict === WAIT) this.throttle(chunk.subarray(n), inspector.waitMs);
    else if (verdict === MEASURE) this.measure(chunk.subarray(n));
    else if (verdict === STOP) this.onStop(inspector);
  }

  /** This direction forwards nothing more: a violation, a close frame, or the guard's own stop. */
  private onStop(inspector: FrameInspector): void {
    if (inspector.error !== null) {
      const direction = inspector === this.c2u ? 'client' : 'upstream';
      this.close(inspector.error, `from the ${direction}: ${inspector.errorDetail}`);
    } else if (this.owesClient || this.owesUpstream) {
      this.payDebts(this.guardCloseCode, this.reason ? ERRORS[this.reason].message : '');
    } else if (inspector.closeSeen) {
      this.onCloseFrame(inspector === this.c2u ? 'client' : 'upstream');
    }
  }

  /**
   * `onExceed: throttle`: the message waits for its token with the rest of the chunk held, and the client
   * is not read meanwhile, so it is slowed by TCP backpressure and nothing is lost.
   */
  private throttle(rest: Buffer, wait: number): void {
    this.held = rest;
    this.client.pause();
    this.throttleTimer = setTimeout(() => {
      this.throttleTimer = null;
      try {
        this.feedHeld();
      } catch (err) {
        this.fault(err);
      }
    }, wait);
  }

  /** Inspects the client bytes held back by a throttle or a measurement, then reads the client again. */
  private feedHeld(): void {
    const held = this.held;
    this.held = null;
    if (held !== null && held.length > 0) this.forward(held, this.client, this.upstream, this.c2u);
    if (this.held === null && !this.upstreamFull && !this.awaitingBudget && !this.client.destroyed) this.client.resume();
  }

  private hold(bytes: Buffer): void {
    const first = this.gate === null;
    (this.gate ??= []).push(bytes);
    this.gateBytes += bytes.length;
    this.budget.take(bytes.length, first);
    if (this.gateBytes > this.gateCap) {
      this.close('MESSAGE_TOO_BIG', 'compressed message held past its cap');
      return;
    }
    // Past the process's budget the client is not read until others give bytes back (backpressure),
    // unless every other holder waits already: then this one goes on, so some message can always end.
    if (!this.budget.exceeded || this.awaitingBudget || !this.budget.wait(this.budgetFreed)) return;
    this.awaitingBudget = true;
    this.client.pause();
  }

  /** The held message is gone (forwarded, refused, or the session ended): its bytes go back to the budget. */
  private dropGate(): void {
    this.budget.giveBack(this.gateBytes, this.budgetFreed);
    this.gate = null;
    this.gateBytes = 0;
    this.awaitingBudget = false;
  }

  /**
   * A compressed message is complete: it goes on only once inflated within `messageSize` (design.md §2),
   * so a deflate bomb never reaches the upstream. The client is not read meanwhile.
   */
  private measure(rest: Buffer): void {
    this.held = rest;
    this.client.pause();
    this.counter!.end().then((verdict) => {
      if (this.gate === null) return;
      if (verdict !== 'ok') {
        this.close(verdict === 'too-big' ? 'MESSAGE_TOO_BIG' : 'INVALID_COMPRESSED', `compressed message ${verdict}`);
        return;
      }
      const gate = this.gate;
      this.dropGate();
      let flushed = true;
      for (const bytes of gate) flushed = this.upstream.write(bytes) && flushed;
      if (!flushed) this.upstreamFull = true;
      this.feedHeld();
    }).catch((err: unknown) => this.fault(err));
  }

  /**
   * A bug met while handling this connection: both legs are dropped (no frame can be trusted to be at a
   * boundary any more) and the audit line names it; the process and every other connection go on.
   */
  private fault(err: unknown): void {
    if (this.closedBy === null) {
      this.closedBy = 'guard';
      this.reason = 'INTERNAL_ERROR';
      // Both legs are cut without a close frame: the peers see an abnormal closure.
      this.guardCloseCode = 1006;
    }
    this.detail = `internal error: ${err instanceof Error ? err.message : String(err)}`;
    this.destroy();
  }

  /** Idle means no data frame either way: compared four times per period, so it fires within 1.25× the timeout. */
  private armIdle(timeoutMs: number): void {
    const step = Math.max(1, Math.floor(timeoutMs / 4));
    let seen = -1;
    let quiet = 0;
    this.idleTimer = setInterval(() => {
      const frames = this.c2u.dataFrames + this.u2c.dataFrames;
      quiet = frames === seen ? quiet + step : 0;
      seen = frames;
      if (quiet >= timeoutMs) this.close('IDLE_TIMEOUT', `no data frame for ${timeoutMs} ms`);
    }, step);
  }

  private onCloseFrame(side: 'client' | 'upstream'): void {
    this.closedBy ??= side;
    // The upstream, as the server, closes TCP after the handshake (RFC 6455 §7.1.1); the timer covers a peer that never does.
    this.armCloseTimer();
  }

  /** Writes owed guard close frames to the sides whose direction has reached a frame boundary. */
  private payDebts(code: number, text: string): void {
    if (this.owesUpstream && this.c2u.stopped && !this.settling) {
      this.owesUpstream = false;
      if (!this.upstream.destroyed && !this.upstream.writableEnded) this.upstream.end(closeFrame(code, text, true));
    }
    if (this.owesClient && this.u2c.stopped) {
      this.owesClient = false;
      if (!this.client.destroyed && !this.client.writableEnded) this.client.end(closeFrame(code, text, false));
    }
  }

  private onClientEnd(): void {
    // http.Server sockets allow half-open connections, so the FIN must be passed on by hand.
    this.closedBy ??= 'client';
    if (!this.upstream.destroyed) this.upstream.end();
    this.armCloseTimer();
  }

  private onUpstreamEnd(): void {
    // The upstream ending after the client left (or after any close frame) is the end, not a vanishing.
    if (!this.u2c.closeSeen && this.closedBy === null && !this.c2u.closeSeen) {
      this.upstreamGone('upstream ended the connection without a close frame');
      return;
    }
    this.closedBy ??= 'upstream';
    this.releaseClientClose();
    if (!this.client.destroyed) this.client.end();
    this.armCloseTimer();
  }

  private onSocketError(socket: Socket, err: Error): void {
    this.detail ??= `${socket === this.client ? 'client' : 'upstream'} socket: ${err.message}`;
    if (socket === this.upstream && this.closedBy === null) this.upstreamGone(err.message);
  }

  private onSocketClose(): void {
    if (this.upstream.destroyed && this.closedBy === null) this.upstreamGone('upstream socket closed');
    if (this.upstream.destroyed) this.releaseClientClose();
    if (this.client.destroyed && !this.upstream.destroyed) {
      this.closedBy ??= 'client';
      // A client that vanished takes the upstream leg with it; one that closed cleanly lets ours finish.
      if (this.upstream.writableEnded) this.armCloseTimer();
      else this.upstream.destroy();
    }
    if (--this.openSockets === 0) this.finish();
  }

  private upstreamGone(detail: string): void {
    if (this.client.destroyed) return;
    // A frame cut off in the middle cannot be followed by a close frame; only a TCP close is left then.
    if (!this.u2c.atBoundary) {
      this.closedBy ??= 'upstream';
      this.client.destroy();
      return;
    }
    this.close('UPSTREAM_GONE', detail);
  }

  /** setTimeout holds at most 2^31-1 ms (24.8 days); a longer-lived token re-arms until it is due. */
  private armExpiry(at: number): void {
    const delay = at - Date.now();
    if (delay <= 0) {
      this.close('TOKEN_EXPIRED', 'token expired during the connection');
      return;
    }
    this.expiryTimer = setTimeout(() => this.armExpiry(at), Math.min(delay, 0x7fffffff));
  }

  private armCloseTimer(): void {
    if (this.closeTimer !== null) return;
    this.closeTimer = setTimeout(() => {
      this.client.destroy();
      this.upstream.destroy();
    }, this.closeTimeoutMs);
    this.closeTimer.unref();
  }

  private finish(): void {
    for (const timer of [this.closeTimer, this.flushTimer, this.settleTimer, this.expiryTimer, this.lifetimeTimer, this.throttleTimer]) clearTimeout(timer ?? undefined);
    this.counter?.destroy();
    if (this.gate !== null) this.dropGate();
    clearInterval(this.idleTimer ?? undefined);
    const closeCode = this.closedBy === 'guard'
      ? this.guardCloseCode
      : this.closedBy === 'upstream' ? this.u2c.closeCode : this.c2u.closeCode;
    this.emit('end', {
      id: this.id,
      closedBy: this.closedBy ?? 'client',
      closeCode: this.closedBy === 'guard' || this.c2u.closeSeen || this.u2c.closeSeen ? closeCode : 1006,
      reason: this.reason,
      detail: this.detail,
      messagesIn: this.c2u.messages,
      messagesOut: this.u2c.messages,
      bytesIn: this.c2u.bytes,
      bytesOut: this.u2c.bytes,
      durationMs: Date.now() - this.startedAt,
    });
  }
}
