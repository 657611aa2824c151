import { readFileSync } from 'node:fs';
import { LineCounter, parseDocument } from 'yaml';
import type { z } from 'zod';
import { configSchema, type GuardConfig } from './schema.js';

/**
 * A config that cannot be used; `problems` lists every problem at once, each prefixed with its key path.
 * A file that cannot be read or parsed is one problem, and then the message is that one line.
 */
export class ConfigError extends Error {
  readonly problems: readonly string[];

  constructor(problems: string[], message = `invalid config:\n  ${problems.join('\n  ')}`) {
    super(message);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

const ENV_REF = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;

/** Problems found while interpolating, and the keys they were found at. */
interface EnvProblems {
  lines: string[];
  /** Keys whose value is already reported: the schema's complaint about the stand-in value would only repeat it. */
  keys: Set<string>;
}

/**
 * Replaces `${VAR}` and `${VAR:-default}` inside string values. It works on the parsed tree, not on the
 * file text, so a value from the environment can never change the YAML structure around it. An unset or
 * empty variable without a default is an error: an empty value would quietly switch checks off (an empty
 * issuer or audience is not checked at all), and `${VAR:-}` says so when empty is meant.
 */
function interpolate(node: unknown, env: NodeJS.ProcessEnv, path: string, problems: EnvProblems): unknown {
  if (typeof node === 'string') {
    return node.replace(ENV_REF, (_match, name: string, fallback: string | undefined) => {
      const value = env[name];
      if (value !== undefined && value !== '') return value;
      if (fallback !== undefined) return fallback;
      const where = path || '(root)';
      problems.lines.push(`${where}: environment variable ${name} is ${value === undefined ? 'not set' : 'empty'}`);
      problems.keys.add(where);
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

/** A value as a message names it after "got": strings quoted, so `"true"` and `true` stay apart. */
export function describeValue(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (value === null) return 'an empty value';
  if (Array.isArray(value)) return value.length === 0 ? 'an empty list' : 'a list';
  if (typeof value === 'object') return 'a mapping';
  return String(value);
}

const KINDS: Record<string, string> = {
  string: 'a string', number: 'a number', boolean: 'true or false', array: 'a list', object: 'a mapping', int: 'a whole number',
};

/** zod's own wording ("Invalid input: expected string, received number") in the config's terms. */
function zodMessage(issue: z.core.$ZodIssue): string {
  if (issue.code === 'invalid_type') return `expected ${KINDS[issue.expected] ?? issue.expected}`;
  if (issue.code === 'too_small' && issue.origin === 'string' && issue.minimum === 1) return 'expected a non-empty string';
  if (issue.code === 'too_small' && issue.origin === 'array' && issue.minimum === 1) return 'expected at least one entry';
  return issue.message;
}

const ZOD_DEFAULT = /^(Invalid|Too small|Too big)\b/;

/** The one place zod's issues become the lines `check` prints. */
function formatIssues(issues: readonly z.core.$ZodIssue[], tree: unknown, reported: ReadonlySet<string>): string[] {
  return issues.flatMap((issue) => {
    if (issue.code === 'unrecognized_keys') {
      const allowed = keysAt(configSchema, issue.path);
      return issue.keys.map((key) => {
        const near = nearest(key, allowed);
        return `${formatPath([...issue.path, key])}: unknown key${near === undefined ? '' : `, did you mean ${near}?`}`;
      });
    }
    const where = formatPath(issue.path) || '(root)';
    // An unset or empty variable is reported already; what the schema thinks of its stand-in would repeat it.
    if (reported.has(where)) return [];
    const value = valueAt(tree, issue.path);
    if (issue.code !== 'custom' && value === undefined) return [`${where}: is required`];
    let message = ZOD_DEFAULT.test(issue.message) ? zodMessage(issue) : issue.message;
    // Every "expected ..." names what it got.
    if (message.startsWith('expected ') && !message.includes(', got ')) message += `, got ${describeValue(value)}`;
    return [`${where}: ${message}`];
  });
}

type AnySchema = z.core.$ZodType;

/** The keys an object schema allows at `path`, looking through optional, default, pipes, unions and lists. */
function keysAt(schema: AnySchema, path: readonly PropertyKey[]): string[] {
  const def = schema._zod.def as unknown as Record<string, unknown> & { type: string };
  const inner = (...schemas: unknown[]) => {
    for (const s of schemas) {
      const keys = s === undefined ? [] : keysAt(s as AnySchema, path);
      if (keys.length > 0) return keys;
    }
    return [];
  };
  switch (def.type) {
    case 'optional': case 'nullable': case 'default': case 'prefault': case 'readonly': case 'catch':
      return inner(def.innerType);
    case 'pipe':
      return inner(def.in, def.out);
    case 'union':
      return inner(...(def.options as unknown[]));
    case 'array':
      return typeof path[0] === 'number' ? keysAt(def.element as AnySchema, path.slice(1)) : [];
    case 'record':
      return path.length > 0 ? keysAt(def.valueType as AnySchema, path.slice(1)) : [];
    case 'object': {
      const shape = def.shape as Record<string, AnySchema>;
      if (path.length === 0) return Object.keys(shape);
      const child = shape[String(path[0])];
      return child === undefined ? [] : keysAt(child, path.slice(1));
    }
    default:
      return [];
  }
}

/** Edits from one word to the other, a swap of two neighbours counting as one (`clsoe` → `close`). */
function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      let best = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) best = Math.min(best, d[i - 2]![j - 2]! + 1);
      d[i]![j] = best;
    }
  }
  return d[a.length]![b.length]!;
}

/** The allowed key closest to an unknown one, when close enough to be a slip: at most 2 edits, fewer for short words. */
export function nearest(key: string, allowed: readonly string[]): string | undefined {
  let best: { key: string; distance: number } | undefined;
  for (const candidate of allowed) {
    const distance = editDistance(key.toLowerCase(), candidate.toLowerCase());
    const limit = Math.min(2, Math.max(1, Math.floor(Math.max(key.length, candidate.length) / 3)));
    if (distance <= limit && (best === undefined || distance < best.distance)) best = { key: candidate, distance };
  }
  return best?.key;
}

/** Validates an already parsed config object (YAML tree or a literal in tests) and freezes the result. */
export function parseConfig(raw: unknown, env: NodeJS.ProcessEnv = process.env): GuardConfig {
  const fromEnv: EnvProblems = { lines: [], keys: new Set() };
  const interpolated = interpolate(raw ?? {}, env, '', fromEnv);
  const result = configSchema.safeParse(interpolated);
  const problems = [...fromEnv.lines];
  if (!result.success) problems.push(...formatIssues(result.error.issues, interpolated, fromEnv.keys));
  if (problems.length > 0 || !result.success) throw new ConfigError(problems);
  return deepFreeze(result.data);
}

const READ_ERRORS: Record<string, string> = {
  ENOENT: 'no such file',
  EACCES: 'permission denied',
  EPERM: 'permission denied',
  EISDIR: 'it is a directory',
  ENOTDIR: 'a part of the path is not a directory',
  ELOOP: 'too many symbolic links',
};

/** Reads and parses a YAML config file into its raw tree, not yet validated. */
export function readConfigTree(file: string): unknown {
  // A file that cannot be read or parsed is one line: nothing after the first problem would be reliable.
  const fail = (line: string) => new ConfigError([line], line);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const { code, message } = err as NodeJS.ErrnoException;
    throw fail(`cannot read config file ${file}: ${READ_ERRORS[code ?? ''] ?? code ?? message}`);
  }
  // The first syntax error alone: the ones after it are mostly its echoes.
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { prettyErrors: false, lineCounter });
  const [first] = doc.errors;
  if (first !== undefined) {
    const { line, col } = lineCounter.linePos(first.pos[0]);
    throw fail(`${file}:${line}:${col}: invalid YAML: ${first.message}`);
  }
  try {
    return doc.toJS();
  } catch (err) {
    // An alias without its anchor, or too many aliases (a "billion laughs" file).
    throw fail(`${file}: invalid YAML: ${(err as Error).message}`);
  }
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
