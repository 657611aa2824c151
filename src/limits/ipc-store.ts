import type { Worker } from 'node:cluster';
import type { Rate } from '../config/units.js';
import { MemoryStore } from './memory-store.js';
import type { Lease, LimitStore, SharedBucket, SlotRequest, SlotVerdict } from './store.js';

/**
 * Limits for a group of worker processes (`workers: N`): connection slots and handshake rates are counted
 * by the primary process, so they hold exactly for the whole group. Per-message buckets stay in each
 * worker, since the per-message check must not wait for another process.
 */

type Request =
  | { wsGuard: 'acquire'; id: number; requests: SlotRequest[]; ip: string; user: string | undefined }
  | { wsGuard: 'release'; lease: number }
  | { wsGuard: 'handshake'; id: number; key: string; rate: Rate; burst: number };

type Reply =
  | { wsGuard: 'acquired'; id: number; verdict: { ok: true; lease: number; usage: { pool: string; ratio: number }[] } | { ok: false; refused: 'total' | 'perIp' | 'perUser' } }
  | { wsGuard: 'handshake'; id: number; waitMs: number };

function isRequest(message: unknown): message is Request {
  return typeof message === 'object' && message !== null && 'wsGuard' in message;
}

/** In the primary: answers the workers' requests from one in-memory store; a worker's exit frees its slots. */
export function serveLimits(worker: Worker, store: MemoryStore): void {
  const leases = new Map<number, Lease>();
  let nextLease = 0;
  worker.on('message', async (message: unknown) => {
    if (!isRequest(message)) return;
    if (message.wsGuard === 'acquire') {
      const verdict = await store.acquireSlots(message.requests, message.ip, message.user);
      let reply: Reply;
      if (verdict.ok) {
        const lease = ++nextLease;
        leases.set(lease, verdict.lease);
        reply = { wsGuard: 'acquired', id: message.id, verdict: { ok: true, lease, usage: verdict.usage } };
      } else {
        reply = { wsGuard: 'acquired', id: message.id, verdict };
      }
      if (worker.isConnected()) worker.send(reply);
      else if (verdict.ok) verdict.lease.release();
    } else if (message.wsGuard === 'release') {
      leases.get(message.lease)?.release();
      leases.delete(message.lease);
    } else {
      const waitMs = await store.takeHandshake(message.key, message.rate, message.burst);
      if (worker.isConnected()) worker.send({ wsGuard: 'handshake', id: message.id, waitMs } satisfies Reply);
    }
  });
  worker.on('exit', () => {
    for (const lease of leases.values()) lease.release();
    leases.clear();
  });
}

/** In a worker: the LimitStore that asks the primary. */
export class IpcStore implements LimitStore {
  private readonly local = new MemoryStore();
  private readonly waiting = new Map<number, (reply: Reply) => void>();
  private nextId = 0;

  constructor() {
    process.on('message', (message: unknown) => {
      const reply = message as Reply;
      if (typeof reply !== 'object' || reply === null || !('wsGuard' in reply)) return;
      const resolve = this.waiting.get(reply.id);
      this.waiting.delete(reply.id);
      resolve?.(reply);
    });
  }

  private ask(request: Request & { id: number }): Promise<Reply> {
    return new Promise((resolve) => {
      this.waiting.set(request.id, resolve);
      process.send!(request);
    });
  }

  async acquireSlots(requests: readonly SlotRequest[], ip: string, user: string | undefined): Promise<SlotVerdict> {
    const reply = await this.ask({ wsGuard: 'acquire', id: ++this.nextId, requests: [...requests], ip, user });
    if (reply.wsGuard !== 'acquired') throw new Error('unexpected reply from the primary');
    const { verdict } = reply;
    if (!verdict.ok) return verdict;
    let released = false;
    return {
      ok: true,
      usage: verdict.usage,
      lease: {
        release: () => {
          if (released) return;
          released = true;
          process.send!({ wsGuard: 'release', lease: verdict.lease } satisfies Request);
        },
      },
    };
  }

  async takeHandshake(key: string, rate: Rate, burst: number): Promise<number> {
    const reply = await this.ask({ wsGuard: 'handshake', id: ++this.nextId, key, rate, burst });
    return reply.wsGuard === 'handshake' ? reply.waitMs : 0;
  }

  sharedBucket(key: string, rate: Rate, burst: number): SharedBucket {
    return this.local.sharedBucket(key, rate, burst);
  }
}
