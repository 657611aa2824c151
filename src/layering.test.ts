import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

// The layering of design.md §4: policies and the upstream leg know nothing of the server that runs them,
// and the event catalogue imports no module that emits events (subscribers must not pull in the core).

const SRC = fileURLToPath(new URL('.', import.meta.url));

function imports(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  return [...text.matchAll(/^(?:import|export)[^'"]*from\s+'([^']+)'/gm)].map((m) => m[1]!);
}

function sources(dir: string): string[] {
  return readdirSync(join(SRC, dir)).filter((f) => f.endsWith('.ts')).map((f) => join(SRC, dir, f));
}

describe('layering', () => {
  it.each(['policies', 'proxy'])('nothing under %s/ imports from server/', (dir) => {
    for (const file of sources(dir)) {
      expect(imports(file).filter((i) => i.includes('/server/')), file).toEqual([]);
    }
  });

  it('events.ts imports only the error catalogue', () => {
    expect(imports(join(SRC, 'events.ts')).filter((i) => i.startsWith('.'))).toEqual(['./errors.js']);
  });
});
