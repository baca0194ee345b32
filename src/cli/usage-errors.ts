/**
 * Usage errors in the CLI's one error form: a single `userops: ...` line on stderr, as scripts
 * and people reading logs expect every failure to look, ending with where to find the usage.
 */
import type { Command } from 'commander';

/** `userops list`, for a subcommand: what to put before `--help`. */
function commandPath(command: Command): string {
  const names: string[] = [];
  for (let c: Command | null = command; c; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}

/**
 * Commander's message as one line: without its `error: ` prefix, its "did you mean" suggestion
 * on the same line, and a pointer to the help of the command that was misused.
 */
export function usageLine(command: Command, message: string): string {
  const text = message
    .trim()
    .replace(/^error: /, '')
    .replace(/\s*\n\(Did you mean (.*)\)$/, '; did you mean $1')
    .replace(/\s*\n\s*/g, ' ');
  return `userops: ${text} (run '${commandPath(command)} --help' for usage)\n`;
}

/**
 * Makes `program` and every command under it print usage errors with {@link usageLine}. Call once
 * every command is added: commander copies output settings into a command only when it is created.
 */
export function oneLineUsageErrors(program: Command): void {
  const visit = (command: Command): void => {
    command.configureOutput({ outputError: (message, write) => write(usageLine(command, message)) });
    command.commands.forEach(visit);
  };
  visit(program);
}
