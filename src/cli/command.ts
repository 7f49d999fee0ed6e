// What every subcommand shares: option parsing with node:util's
// parseArgs (strict: unknown options are errors), --help with examples,
// and one error type for command-line mistakes.

import { parseArgs } from 'node:util';

/** A mistake on the command line: printed with a pointer to --help, exit status 2. */
export class UsageError extends Error {}

type OptionSpec = { type: 'string' | 'boolean'; multiple?: boolean; short?: string };

export interface Command<V> {
  name: string;
  summary: string;
  /** Full help text, examples included. */
  help: string;
  options: Record<string, OptionSpec>;
  /** `order`: the options as given, name and value, for options whose meaning depends on their place. */
  run(values: V, positionals: string[], order: { name: string; value: string | undefined }[]): Promise<number>;
}

export async function runCommand<V>(cmd: Command<V>, argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      options: { ...cmd.options, help: { type: 'boolean', short: 'h' } },
      allowPositionals: true,
      strict: true,
      tokens: true,
    });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (parsed.values.help) {
    process.stdout.write(cmd.help);
    return 0;
  }
  const order = parsed.tokens.flatMap((tok) => (tok.kind === 'option' ? [{ name: tok.name, value: tok.value }] : []));
  return cmd.run(parsed.values as V, parsed.positionals, order);
}

/** A whole number option within bounds. */
export function numberOption(name: string, text: string | undefined, fallback: number, min: number, max: number): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isFinite(n) || n < min || n > max) throw new UsageError(`--${name} must be a number from ${min} to ${max}`);
  return n;
}

/** Runs a parser of command-line text; its errors are command-line mistakes. */
export function usage<T>(parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}
