import { describe, expect, it } from 'vitest';
import { ERRORS, type ErrorCode } from '../errors.js';
import {
  CLOSE_CODE_LABELS, CLOSED_BY_LABELS, REASON_LABELS, STATUS_LABELS, closeCodeLabel, closedByLabel, refusalLabels, statusClassLabel,
  upstreamRefusalLabels,
} from './metrics.js';

describe('metric label values', () => {
  it('the close code set is the one docs/operations.md lists', () => {
    expect(CLOSE_CODE_LABELS).toEqual([
      '1000', '1001', '1002', '1003', '1005', '1006', '1007', '1008', '1009', '1010', '1011', '1012', '1013', '1014',
      '4001', '4003', '3xxx', '4xxx', 'other',
    ]);
  });

  it('keeps the defined codes, the guard\'s own and 1005/1006; buckets the rest', () => {
    for (const code of [1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 4001, 4003]) {
      expect(closeCodeLabel(code)).toBe(String(code));
    }
    expect(closeCodeLabel(3000)).toBe('3xxx');
    expect(closeCodeLabel(3999)).toBe('3xxx');
    expect(closeCodeLabel(4000)).toBe('4xxx');
    expect(closeCodeLabel(4002)).toBe('4xxx');
    expect(closeCodeLabel(4321)).toBe('4xxx');
    expect(closeCodeLabel(4999)).toBe('4xxx');
    // Reserved, never sent (1004, 1015), unassigned (1016–2999), below 1000, above 4999, not a code at all.
    for (const code of [0, 1, 999, 1004, 1015, 1016, 2000, 2999, 5000, 5099, 65535, -1, 1000.5, NaN, Infinity]) {
      expect(closeCodeLabel(code), String(code)).toBe('other');
    }
  });

  it('every 16-bit close code maps into the fixed set', () => {
    const seen = new Set<string>();
    for (let code = 0; code <= 0xffff; code++) seen.add(closeCodeLabel(code));
    expect([...seen].sort()).toEqual([...CLOSE_CODE_LABELS].sort());
  });

  it('every close code of the catalogue is kept as it is', () => {
    for (const entry of Object.values(ERRORS)) {
      if ('close' in entry) expect(closeCodeLabel(entry.close)).toBe(String(entry.close));
    }
  });

  it('closed_by is client, upstream or guard', () => {
    expect(CLOSED_BY_LABELS).toEqual(['client', 'upstream', 'guard']);
    for (const side of CLOSED_BY_LABELS) expect(closedByLabel(side)).toBe(side);
    expect(closedByLabel('/ws/chat')).toBe('other');
  });

  it('upstream statuses are bucketed by class', () => {
    expect(statusClassLabel(100)).toBe('1xx');
    expect(statusClassLabel(200)).toBe('2xx');
    expect(statusClassLabel(302)).toBe('3xx');
    expect(statusClassLabel(403)).toBe('4xx');
    expect(statusClassLabel(418)).toBe('4xx');
    expect(statusClassLabel(599)).toBe('5xx');
    for (const status of [0, 99, 600, 999, 12345, -1, 404.5, NaN]) expect(statusClassLabel(status), String(status)).toBe('other');
    expect(upstreamRefusalLabels(403)).toEqual({ reason: 'UPSTREAM_REFUSED', status: '4xx' });
    expect(upstreamRefusalLabels(0)).toEqual({ reason: 'UPSTREAM_REFUSED', status: 'other' });
  });

  it('a refusal is labelled with its catalogue code and status', () => {
    for (const [code, entry] of Object.entries(ERRORS)) {
      expect(refusalLabels(code as ErrorCode, entry.status)).toEqual({ reason: code, status: String(entry.status) });
    }
    expect(refusalLabels('BAD_VERSION', 426)).toEqual({ reason: 'BAD_VERSION', status: '426' });
    // Neither can happen through the types; the labels stay in the set all the same.
    expect(refusalLabels('BAD_VERSION', 299)).toEqual({ reason: 'BAD_VERSION', status: '2xx' });
    expect(refusalLabels('/admin?token=x' as ErrorCode, 403)).toEqual({ reason: 'other', status: '4xx' });
  });

  it('the reason and status sets are the catalogue\'s', () => {
    expect(REASON_LABELS).toEqual([...Object.keys(ERRORS), 'UPSTREAM_REFUSED', 'other']);
    expect(STATUS_LABELS).toEqual([
      '400', '401', '403', '404', '405', '408', '413', '426', '429', '431', '500', '501', '502', '503', '504', '1xx', '2xx', '3xx', '4xx', '5xx', 'other',
    ]);
  });
});
