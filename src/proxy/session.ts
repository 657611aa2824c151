import { EventEmitter } from 'node:events';
import { FrameInspector, type MessageLimits } from '../frames/inspector.js';
import { ERRORS, type CloseReason } from '../errors.js';
import type { HoldBudget } from '../limits/hold-budget.js';
import type { SessionEnd } from '../events.js';
import { BytePump, type PumpEvents } from './byte-pump.js';
import { systemClock, type Clock, type Timer } from './clock.js';
import { ClosingHandshake } from './closing-handshake.js';
import { OWNER, type Leg } from './handle-leg.js';
import { CompressedGate } from './compressed-gate.js';

export type { SessionEnd };

export interface SessionOptions {
  id: number;
  /** The two legs (handle-leg.ts `takeLeg`): a `net.Socket` is one too. */
  client: Leg;
  upstream: Leg;
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
  /** Time for the session's timers; tests pass a clock they move by hand. */
  clock?: Clock;
}

/**
 * Closes for something wrong in the client's stream: the upstream's frames already on their way still
 * reach the client before the guard's close (`ClosingHandshake.flushToClient`).
 */
const CLIENT_STREAM_FAULTS: ReadonlySet<CloseReason> = new Set<CloseReason>([
  'PROTOCOL_VIOLATION', 'MESSAGE_TOO_BIG', 'TOO_MANY_FRAGMENTS', 'INVALID_COMPRESSED', 'MESSAGE_RATE', 'CONTROL_FRAME_RATE',
]);

/** The session a socket belongs to, for the listeners below: one function each for every connection. */
type Owned = Leg & { [OWNER]: Session };

/*
 * The socket listeners are module-level functions that find their session through the socket: closures
 * made per session (and the wrappers `once` adds) would cost every idle connection a few hundred bytes.
 */
function onError(this: Owned, err: Error): void {
  this[OWNER].socketError(this, err);
}

function onClose(this: Owned): void {
  this[OWNER].socketClosed();
}

function onEnd(this: Owned): void {
  this[OWNER].socketEnded(this);
}

/**
 * One proxied WebSocket connection: two sockets, and what the session wires between them: a byte pump per
 * direction (each with its inspector; the client's with the compressed-message gate when compressed
 * messages are measured), the closing handshake, and the connection's own deadlines (token expiry, idle,
 * maximum lifetime). Chunks are forwarded as they were received (design.md §2); the inspectors only say how
 * much of each.
 */
export class Session extends EventEmitter<{ end: [SessionEnd] }> implements PumpEvents {
  readonly id: number;
  private readonly client: Leg;
  private readonly upstream: Leg;
  /** The inspectors of client → upstream and upstream → client. */
  private readonly c2u: FrameInspector;
  private readonly u2c: FrameInspector;
  private readonly toUpstream: BytePump;
  private readonly toClient: BytePump;
  /** Measures compressed client messages inflated, when a size limit is set on a compressed connection. */
  private readonly gate: CompressedGate | null = null;
  private readonly closing: ClosingHandshake;
  private readonly clock: Clock;
  private readonly startedAt: number;
  private closedBy: SessionEnd['closedBy'] | null = null;
  private reason: CloseReason | null = null;
  /** Why the guard closed, or the first socket error: for the audit line. */
  private detail: string | undefined;
  private guardCloseCode = 0;
  private expiryTimer: Timer | null = null;
  private idleTimer: Timer | null = null;
  private lifetimeTimer: Timer | null = null;
  private openSockets = 2;

  constructor(options: SessionOptions) {
    super();
    this.id = options.id;
    this.client = options.client;
    this.upstream = options.upstream;
    this.clock = options.clock ?? systemClock;
    this.startedAt = this.clock.now();
    const limits = options.messageLimits;
    if (limits !== undefined && options.compressed && Number.isFinite(limits.maxMessageBytes)) {
      this.gate = new CompressedGate({
        maxMessageBytes: limits.maxMessageBytes,
        noContextTakeover: options.clientNoContextTakeover,
        budget: options.holdBudget,
        onBudgetFreed: () => this.toUpstream.budgetFreed(),
        refuse: (reason, detail) => this.close(reason, detail),
      });
    }
    this.c2u = new FrameInspector({
      masked: true,
      compressed: options.compressed,
      limits: limits && { ...limits, onCompressedPayload: this.gate?.inflate ?? null },
    });
    this.u2c = new FrameInspector({ masked: false, compressed: options.compressed });
    this.closing = new ClosingHandshake(
      { client: this.client, upstream: this.upstream, c2u: this.c2u, u2c: this.u2c }, options.closeTimeoutMs, this.clock,
    );

    for (const socket of [this.client, this.upstream]) {
      socket.setNoDelay(true);
      (socket as Owned)[OWNER] = this;
      socket.on('error', onError);
      // A leg that closed before the session existed has no 'close' left to emit; it still counts.
      if (socket.closed) process.nextTick(() => this.socketClosed());
      else socket.on('close', onClose);
    }
    this.toUpstream = new BytePump('client', this.client, this.upstream, this.c2u, this.gate, this.clock, this);
    this.toClient = new BytePump('upstream', this.upstream, this.client, this.u2c, null, this.clock, this);
    this.client.on('end', onEnd);
    this.upstream.on('end', onEnd);

    if (options.expiresAt !== undefined) this.armExpiry(options.expiresAt);
    if (options.idleTimeoutMs !== undefined) this.armIdle(options.idleTimeoutMs);
    if (options.maxLifetimeMs !== undefined) {
      this.lifetimeTimer = this.clock.setTimeout(() => this.close('MAX_LIFETIME', 'maximum lifetime reached'), options.maxLifetimeMs);
    }
    this.toClient.start(options.upstreamHead);
    this.toUpstream.start(options.clientHead);
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
    this.toUpstream.abandonHeldMessage();
    // No client message goes on after a guard close: the copies queued for inflating are dropped now,
    // not when the peers have finished closing (up to timeouts.close later).
    this.gate?.stop();
    this.closing.owe(code, ERRORS[reason].message, CLIENT_STREAM_FAULTS.has(reason));
  }

  /** Its closing handshake has begun (the guard's close, or a peer's close frame or FIN): closing it again changes nothing. */
  get ending(): boolean {
    return this.closedBy !== null;
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

  /** For the pumps (PumpEvents): a direction forwards nothing more: a violation, a close frame, or the guard's own stop. */
  pumpStopped(pump: BytePump): void {
    const inspector = pump.inspector;
    if (inspector.error !== null) this.close(inspector.error, `from the ${pump.side}: ${inspector.errorDetail}`);
    else if (this.closing.owes) this.closing.payDue();
    else if (inspector.closeSeen) this.onCloseFrame(pump.side);
  }

  /**
   * For the pumps (PumpEvents): a bug met while handling this connection. Both legs are dropped (no frame
   * can be trusted to be at a boundary any more) and the audit line names it; the process and every other
   * connection go on.
   */
  pumpFailed(err: unknown): void {
    if (this.closedBy === null) {
      this.closedBy = 'guard';
      this.reason = 'INTERNAL_ERROR';
      // Both legs are cut without a close frame: the peers see an abnormal closure.
      this.guardCloseCode = 1006;
    }
    this.detail = `internal error: ${err instanceof Error ? err.message : String(err)}`;
    this.destroy();
  }

  /** For the module-level listener of both sockets' 'end'. */
  socketEnded(socket: Leg): void {
    if (socket === this.client) this.onClientEnd();
    else this.onUpstreamEnd();
  }

  /** Idle means no data frame either way: compared four times per period, so it fires within 1.25× the timeout. */
  private armIdle(timeoutMs: number): void {
    const step = Math.max(1, Math.floor(timeoutMs / 4));
    let seen = -1;
    let quiet = 0;
    const check = () => {
      const frames = this.c2u.dataFrames + this.u2c.dataFrames;
      quiet = frames === seen ? quiet + step : 0;
      seen = frames;
      this.idleTimer = this.clock.setTimeout(check, step);
      if (quiet >= timeoutMs) this.close('IDLE_TIMEOUT', `no data frame for ${timeoutMs} ms`);
    };
    this.idleTimer = this.clock.setTimeout(check, step);
  }

  private onCloseFrame(side: 'client' | 'upstream'): void {
    this.closedBy ??= side;
    // The upstream, as the server, closes TCP after the handshake (RFC 6455 §7.1.1); the timer covers a peer that never does.
    this.closing.armCloseTimer();
  }

  private onClientEnd(): void {
    // http.Server sockets allow half-open connections, so the FIN must be passed on by hand.
    this.closedBy ??= 'client';
    if (!this.upstream.destroyed) this.upstream.end();
    this.closing.armCloseTimer();
  }

  private onUpstreamEnd(): void {
    // The upstream ending after the client left (or after any close frame) is the end, not a vanishing.
    if (!this.u2c.closeSeen && this.closedBy === null && !this.c2u.closeSeen) {
      this.upstreamGone('upstream ended the connection without a close frame');
      return;
    }
    this.closedBy ??= 'upstream';
    this.closing.releaseClientClose();
    if (!this.client.destroyed) this.client.end();
    this.closing.armCloseTimer();
  }

  /** For the module-level listener of both sockets' 'error'. */
  socketError(socket: Leg, err: Error): void {
    this.detail ??= `${socket === this.client ? 'client' : 'upstream'} socket: ${err.message}`;
    if (socket === this.upstream && this.closedBy === null) this.upstreamGone(err.message);
  }

  /** For the module-level listener of both sockets' 'close'. */
  socketClosed(): void {
    if (this.upstream.destroyed && this.closedBy === null) this.upstreamGone('upstream socket closed');
    if (this.upstream.destroyed) this.closing.releaseClientClose();
    if (this.client.destroyed && !this.upstream.destroyed) {
      this.closedBy ??= 'client';
      // A client that vanished takes the upstream leg with it; one that closed cleanly lets ours finish.
      if (this.upstream.writableEnded) this.closing.armCloseTimer();
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
    const delay = at - this.clock.now();
    if (delay <= 0) {
      this.close('TOKEN_EXPIRED', 'token expired during the connection');
      return;
    }
    this.expiryTimer = this.clock.setTimeout(() => this.armExpiry(at), Math.min(delay, 0x7fffffff));
  }

  private finish(): void {
    this.closing.dispose();
    this.toUpstream.dispose();
    for (const timer of [this.expiryTimer, this.lifetimeTimer, this.idleTimer]) if (timer !== null) this.clock.clearTimeout(timer);
    this.gate?.stop();
    this.gate?.drop();
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
      durationMs: this.clock.now() - this.startedAt,
    });
  }
}
