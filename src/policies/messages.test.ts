import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import { MESSAGE_OK, MESSAGE_REFUSE } from '../frames/inspector.js';
import { MemoryStore } from '../limits/memory-store.js';
import { messageLimits } from './messages.js';

const limitsOf = (limits: Record<string, unknown>) => parseConfig({ listen: '127.0.0.1:0', upstream: 'http://127.0.0.1:1', limits }, {}).limits;

describe('messageLimits', () => {
  it('per connection: each session its own bucket', () => {
    const store = new MemoryStore();
    const open = messageLimits(store, '/r', limitsOf({ messages: { rate: '1/minute', burst: 1 } }));
    const a = open('1.1.1.1', undefined);
    const b = open('1.1.1.1', undefined);
    expect(a.onMessageStart!()).toBe(MESSAGE_OK);
    expect(a.onMessageStart!()).toBe(MESSAGE_REFUSE);
    expect(b.onMessageStart!()).toBe(MESSAGE_OK);
    store.close();
  });

  it('per user: sessions of one user share a bucket; without a user the address counts', () => {
    const store = new MemoryStore();
    const open = messageLimits(store, '/r', limitsOf({ messages: { rate: '1/minute', burst: 1, per: 'user' } }));
    expect(open('1.1.1.1', 'alice').onMessageStart!()).toBe(MESSAGE_OK);
    expect(open('2.2.2.2', 'alice').onMessageStart!()).toBe(MESSAGE_REFUSE);
    expect(open('2.2.2.2', undefined).onMessageStart!()).toBe(MESSAGE_OK);
    expect(open('2.2.2.2', undefined).onMessageStart!()).toBe(MESSAGE_REFUSE);
    store.close();
  });

  it('throttle answers how long to wait; control frames have their default bucket; no rate is null', () => {
    const store = new MemoryStore();
    const throttled = messageLimits(store, '/r', limitsOf({ messages: { rate: '1/s', burst: 1, onExceed: 'throttle' } }))('1.1.1.1', undefined);
    expect(throttled.onMessageStart!()).toBe(MESSAGE_OK);
    expect(throttled.onMessageStart!()).toBeGreaterThan(0);
    const none = messageLimits(store, '/r', limitsOf({}))('1.1.1.1', undefined);
    expect(none.onMessageStart).toBeNull();
    expect(none.onControlFrame!()).toBe(true);
    store.close();
  });
});
