import { readFileSync } from 'node:fs';
import { parseDocument } from 'yaml';
import type { z } from 'zod';
import { configSchema, type GuardConfig } from './schema.js';

/** A config that cannot be used; `problems` lists every problem at once, each prefixed with its key path. */
export class ConfigError extends Error {
  readonly problems: readonly string[];

  constructor(problems: string[]) {
    super(`invalid config:\n  ${problems.join('\n  ')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

const ENV_REF = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;

/**
 * Replaces `${VAR}` and `${VAR:-default}` inside string values. It works on the parsed tree, not on the
 * file text, so a value from the environment can never change the YAML structure around it.
 */
function interpolate(node: unknown, env: NodeJS.ProcessEnv, path: string, problems: string[]): unknown {
  if (typeof node === 'string') {
    return node.replace(ENV_REF, (_match, name: string, fallback: string | undefined) => {
      const value = env[name];
      if (value !== undefined && value !== '') return value;
      if (fallback !== undefined) return fallback;
      problems.push(`${path || '(root)'}: environment variable ${name} is not set`);
      return '';
    });
  }
  if (Array.isArray(node)) return node.map((item, i) => interpolate(item, env, `${path}[${i}]`, problems));
  if (node !== null && typeof node === 'object') {
    return Object.fromEntries(
      Object.entries(node).map(([key, value]) => [key, interpolate(value, env, path ? `${path}.${key}` : key, problems)]),
    );
  }
  return node;
}

function formatPath(path: readonly PropertyKey[]): string {
  return path.reduce<string>(
    (out, key) => (typeof key === 'number' ? `${out}[${key}]` : out ? `${out}.${String(key)}` : String(key)),
    '',
  );
}

function valueAt(tree: unknown, path: readonly PropertyKey[]): unknown {
  let node = tree;
  for (const key of path) {
    if (node === null || typeof node !== 'object') return undefined;
    node = (node as Record<PropertyKey, unknown>)[key];
  }
  return node;
}

function formatIssues(issues: readonly z.core.$ZodIssue[], tree: unknown): string[] {
  return issues.flatMap((issue) => {
    if (issue.code === 'unrecognized_keys') {
      return issue.keys.map((key) => `${formatPath([...issue.path, key])}: unknown key`);
    }
    const where = formatPath(issue.path) || '(root)';
    const message = issue.code !== 'custom' && valueAt(tree, issue.path) === undefined ? 'is required' : issue.message;
    return [`${where}: ${message}`];
  });
}

/** Validates an already parsed config object (YAML tree or a literal in tests) and freezes the result. */
export function parseConfig(raw: unknown, env: NodeJS.ProcessEnv = process.env): GuardConfig {
  const problems: string[] = [];
  const interpolated = interpolate(raw ?? {}, env, '', problems);
  const result = configSchema.safeParse(interpolated);
  if (!result.success) problems.push(...formatIssues(result.error.issues, interpolated));
  if (problems.length > 0 || !result.success) throw new ConfigError(problems);
  return deepFreeze(result.data);
}

/** Reads and parses a YAML config file into its raw tree, not yet validated. */
export function readConfigTree(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError([`${file}: ${(err as NodeJS.ErrnoException).code ?? 'cannot read'}`]);
  }
  const doc = parseDocument(text, { prettyErrors: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(doc.errors.map((e) => `${file}: ${e.message.split('\n')[0]}`));
  }
  return doc.toJS();
}

/** Reads, interpolates and validates a YAML config file. */
export function loadConfigFile(file: string, env: NodeJS.ProcessEnv = process.env): GuardConfig {
  return parseConfig(readConfigTree(file), env);
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}
