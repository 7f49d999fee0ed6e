#!/usr/bin/env node
// The vblk command: dispatch to a subcommand, and turn errors into one
// clear line on stderr (exit 2 for command-line mistakes, 1 otherwise).

import { create } from './create.js';
import { runCommand, UsageError, type Command } from './command.js';
import { info } from './info.js';
import { journal } from './journal.js';
import { commit } from './commit.js';
import { clone } from './clone.js';
import { fuzz } from './fuzz.js';
import { map } from './map.js';
import { resize } from './resize.js';
import { snapshot } from './snapshot.js';
import { ctl } from './ctl.js';
import { serve } from './serve.js';

// Each subcommand has its own option types; here they are all alike.
const COMMANDS = [serve, ctl, create, info, map, snapshot, commit, clone, resize, journal, fuzz] as unknown as Command<unknown>[];

const HELP = `Usage: vblk COMMAND [options]

vblk is a virtual block device server: it serves disk images over NBD to
QEMU, libnbd tools, fio and the Linux nbd client.

Commands:
${COMMANDS.map((c) => `  ${c.name.padEnd(8)} ${c.summary}`).join('\n')}

Run 'vblk COMMAND --help' for a command's options and examples.

Examples:
  vblk create disk.img --size 10G
  vblk serve disk.img --socket /tmp/vblk.sock
  vblk info disk.img
`;

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '-h' || name === '--help' || name === 'help') {
    process.stdout.write(HELP);
    return name === undefined ? 2 : 0;
  }
  const cmd = COMMANDS.find((c) => c.name === name);
  if (!cmd) throw new UsageError(`unknown command '${name}'`);
  try {
    return await runCommand(cmd, rest);
  } catch (err) {
    if (err instanceof UsageError) err.message = `${name}: ${err.message}; see 'vblk ${name} --help'`;
    throw err;
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`vblk: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(err instanceof UsageError ? 2 : 1);
  },
);
