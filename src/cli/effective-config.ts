/**
 * `userops config`: the configuration in effect for this shell (config.ts `describeConfig`), each
 * variable with its value, secrets redacted, and whether it came from the environment or a default.
 */
import type { ConfigEntry } from '../config.js';
import { formatTable } from './table.js';

/** The configuration as a table for people. */
export function formatConfig(entries: ConfigEntry[]): string {
  return formatTable([['VARIABLE', 'VALUE', 'FROM'], ...entries.map((e) => [e.variable, e.value, e.source])]);
}
