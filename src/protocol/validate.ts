/**
 * Schema validation with messages people can act on: every issue names the field, what was
 * expected, and what was got. Used for op arguments, job envelopes, options and environment.
 */
import type { z } from 'zod';

import { redactUrl } from '../redis-url.js';
import { ConfigError, formatIssues, ValidationError, type ValidationIssue } from './errors.js';

/**
 * A string as an error message may show it. A bad Redis URL is echoed back to whoever set it, and
 * messages end up in logs and CI output: its password never does, with or without the scheme.
 */
function redactString(s: string): string {
  if (s.includes('://')) return redactUrl(s);
  return s.includes('@') ? redactUrl(`x://${s}`).slice('x://'.length) : s;
}

/** A short, safe description of a value for an error message (long strings are cut, passwords in URLs hidden). */
export function describeValue(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (value === null) return 'null';
  if (typeof value === 'string') {
    const shown = redactString(value);
    return JSON.stringify(shown.length > 40 ? `${shown.slice(0, 40)}…` : shown);
  }
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  // The length is what a limit on items is about: "at most 1000 ops (got an array of 1001 items)".
  if (Array.isArray(value)) {
    if (value.length === 0) return 'an empty array';
    return `an array of ${value.length} item${value.length === 1 ? '' : 's'}`;
  }
  return typeof value === 'object' ? 'an object' : `a ${typeof value}`;
}

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let value = input;
  for (const key of path) {
    if (typeof value !== 'object' || value === null || !Object.hasOwn(value, key)) return undefined;
    value = (value as Record<PropertyKey, unknown>)[key];
  }
  return value;
}

/** Converts zod issues to ours: a dotted path, and a message that says what was got. */
export function toIssues(error: z.ZodError, input: unknown): ValidationIssue[] {
  return error.issues.map((issue) => {
    const path = issue.path.map(String).join('.');
    if (issue.code === 'unrecognized_keys') {
      // Hostile input can carry thousands of keys; name a few, count the rest.
      const shown = issue.keys.slice(0, 5).map((k) => describeValue(k).slice(1, -1)).join(', ');
      const more = issue.keys.length > 5 ? ` and ${issue.keys.length - 5} more` : '';
      return { path, message: `unknown key(s) ${shown}${more}` };
    }
    return { path, message: `${issue.message} (got ${describeValue(valueAt(input, issue.path))})` };
  });
}

/**
 * Parses `input` with `schema`, or throws an error whose message starts with `Invalid <what>:` and
 * lists every problem: a {@link ValidationError} for op input, a {@link ConfigError} for settings.
 */
export function parseWith<S extends z.ZodType>(
  schema: S,
  input: unknown,
  what: string,
  kind: 'input' | 'config' = 'input',
): z.output<S> {
  const result = schema.safeParse(input);
  if (result.success) return result.data;
  const issues = toIssues(result.error, input);
  const message = `Invalid ${what}: ${formatIssues(issues)}`;
  throw kind === 'config' ? new ConfigError(issues, message) : new ValidationError(issues, message);
}
