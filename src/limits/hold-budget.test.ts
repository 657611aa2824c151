import { describe, expect, it } from 'vitest';
import { HoldBudget } from './hold-budget.js';

describe('hold budget', () => {
  it('counts held bytes and says when they pass the limit', () => {
    const budget = new HoldBudget(100);
    budget.take(60, true);
    expect(budget.exceeded).toBe(false);
    budget.take(60, false);
    expect(budget.exceeded).toBe(true);
    expect(budget.held).toBe(120);
    budget.giveBack(120, () => {});
    expect(budget.held).toBe(0);
  });

  it('wakes waiting connections, oldest first, once there is room', () => {
    const budget = new HoldBudget(100);
    const woken: string[] = [];
    const a = () => woken.push('a');
    const b = () => woken.push('b');
    const c = () => woken.push('c');
    budget.take(50, true);
    budget.take(40, true);
    budget.take(40, true);
    budget.take(20, true);
    expect(budget.wait(a)).toBe(true);
    expect(budget.wait(b)).toBe(true);
    budget.giveBack(20, () => {});
    expect(woken).toEqual([]);
    budget.giveBack(40, c);
    expect(woken).toEqual(['a', 'b']);
  });

  it('never lets every holder wait: the last to ask goes on, and the oldest waiter once it is alone', () => {
    const budget = new HoldBudget(10);
    const woken: string[] = [];
    const a = () => woken.push('a');
    budget.take(8, true);
    budget.take(8, true);
    expect(budget.wait(a)).toBe(true);
    expect(budget.wait(() => {})).toBe(false);
    // The one that went on finishes its message: still over the limit, but nobody else is being read.
    budget.giveBack(8, () => {});
    expect(woken).toEqual(['a']);
  });

  it('forgets a waiter that gives its bytes back', () => {
    const budget = new HoldBudget(10);
    const woken: string[] = [];
    const a = () => woken.push('a');
    budget.take(8, true);
    budget.take(8, true);
    budget.wait(a);
    budget.giveBack(8, a);
    budget.giveBack(8, () => {});
    expect(woken).toEqual([]);
  });
});
