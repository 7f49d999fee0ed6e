// vblk ctl: one command to a running server's control socket (vblk serve
// --control PATH), its result printed as JSON on stdout. The words on the
// command line map to the socket's commands (server/control/commands.ts);
// `call` sends any command with its arguments as JSON, for scripts.

import net from 'node:net';
import { decodeValue, encodeFrame, FrameReader, parseResponse, type ControlResponse } from '../protocol/control/codec.js';
import { UsageError, type Command } from './command.js';
import { parseSize } from './size.js';

interface CtlValues {
  export?: string;
  policy?: string;
  seed?: string;
  index?: string;
  granularity?: string;
  filter?: string[];
  timeout?: string;
}

const HELP = `Usage: vblk ctl SOCKET COMMAND [ARGS] [options]

Send one command to a server started with --control SOCKET and print its
result as JSON. Exit status 0 when it worked, 1 when the server answered
with an error (printed on stderr), 2 for a mistake on this command line.

Commands:
  exports                          every export: size, file, filters
  stats                            requests, bytes, errors per export
  power-cut [--policy all|random|torn] [--seed N]
                                   drop what the power-cut filter holds
  mark NAME                        a named mark in the journal
  snapshot create|revert NAME      freeze the image as IMAGE@NAME / go back
  snapshot fork NAME NEWTOP        a second overlay on snapshot NAME
  snapshot list                    the snapshots of the export's image
  bitmap start NAME [--granularity SIZE]
  bitmap clear|drop NAME           dirty bitmaps (qemu:dirty-bitmap:NAME)
  bitmap list
  filter list                      each export's filters and settings
  filter set TEXT [--index N]      new settings, as --filter TEXT
  filter clear KIND [--index N]    the filter passes everything through
  export add NAME=FILE[:ro] [--filter TEXT]...
  export remove NAME
  shutdown                         stop the server as SIGTERM would
  call COMMAND [JSON-ARGS]         any command, arguments as a JSON map
  help                             the server's list of commands

Options:
  --export NAME     the export a command is for (default: the only one,
                    or the default export)
  --index N         which filter, when an export has several of a kind
  --timeout SEC     how long to wait for the answer (default 600)
  -h, --help        show this help

Examples:
  vblk ctl /tmp/vblk.ctl exports
  vblk ctl /tmp/vblk.ctl filter set error:op=read,offset=1M,length=1M,errno=EIO
  vblk ctl /tmp/vblk.ctl power-cut --policy torn --seed 7
  vblk ctl /tmp/vblk.ctl snapshot create before-upgrade --export disk
  vblk ctl /tmp/vblk.ctl call stats '{"export": "disk"}'
`;

/** Sends one request and resolves to its response. */
export function controlRequest(socketPath: string, command: string, args: Record<string, unknown>, timeoutMs = 600_000): Promise<ControlResponse> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(socketPath);
    const reader = new FrameReader();
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no answer from ${socketPath} in ${timeoutMs / 1000} s`));
    }, timeoutMs);
    socket.on('connect', () => socket.write(encodeFrame({ id: 1, command, args })));
    socket.on('data', (chunk: Buffer) => {
      try {
        const [frame] = reader.push(chunk);
        if (!frame) return;
        clearTimeout(timer);
        socket.end();
        resolve(parseResponse(decodeValue(frame)));
      } catch (err) {
        clearTimeout(timer);
        socket.destroy();
        reject(err as Error);
      }
    });
    socket.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`${socketPath}: ${err.message}`));
    });
    socket.on('close', () => {
      clearTimeout(timer);
      reject(new Error(`${socketPath} closed without an answer`));
    });
  });
}

function whole(name: string, text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(Number(text))) throw new UsageError(`--${name} must be a whole number, not '${text}'`);
  return Number(text);
}

/** The socket command and its arguments for the words after SOCKET. */
function translate(words: string[], v: CtlValues): { command: string; args: Record<string, unknown> } {
  const [word, action, ...rest] = words;
  const scoped = (args: Record<string, unknown>): Record<string, unknown> => {
    const all: Record<string, unknown> = { ...args };
    if (v.export !== undefined) all.export = v.export;
    for (const [k, val] of Object.entries(all)) if (val === undefined) delete all[k];
    return all;
  };
  const want = (n: number, usage: string): void => {
    if (words.length !== n) throw new UsageError(`usage: vblk ctl SOCKET ${usage}`);
  };
  const index = whole('index', v.index);
  switch (word) {
    case 'exports':
    case 'help':
    case 'shutdown':
      want(1, word);
      return { command: word, args: {} };
    case 'stats':
      want(1, 'stats');
      return { command: 'stats', args: scoped({}) };
    case 'power-cut':
      want(1, 'power-cut [--policy all|random|torn] [--seed N]');
      return { command: 'power-cut', args: scoped({ policy: v.policy, seed: whole('seed', v.seed), index }) };
    case 'mark':
      want(2, 'mark NAME');
      return { command: 'mark', args: scoped({ name: action, index }) };
    case 'snapshot':
      if (action === 'list') {
        want(2, 'snapshot list');
        return { command: 'snapshot-list', args: scoped({}) };
      }
      if (action === 'fork') {
        want(4, 'snapshot fork NAME NEWTOP');
        return { command: 'snapshot-fork', args: scoped({ name: rest[0], newTop: rest[1] }) };
      }
      if (action !== 'create' && action !== 'revert') throw new UsageError('usage: vblk ctl SOCKET snapshot create|revert|fork|list ...');
      want(3, `snapshot ${action} NAME`);
      return { command: `snapshot-${action}`, args: scoped({ name: rest[0] }) };
    case 'bitmap': {
      if (action === 'list') {
        want(2, 'bitmap list');
        return { command: 'bitmap-list', args: scoped({ index }) };
      }
      if (action !== 'start' && action !== 'clear' && action !== 'drop') throw new UsageError('usage: vblk ctl SOCKET bitmap start|clear|drop NAME, or bitmap list');
      want(3, `bitmap ${action} NAME`);
      let granularity: number | undefined;
      try {
        granularity = v.granularity === undefined ? undefined : parseSize(v.granularity);
      } catch (err) {
        throw new UsageError(`--granularity: ${(err as Error).message}`);
      }
      return { command: `bitmap-${action}`, args: scoped({ name: rest[0], granularity, index }) };
    }
    case 'filter':
      if (action === 'list') {
        want(2, 'filter list');
        return { command: 'filter-list', args: scoped({}) };
      }
      if (action === 'set') {
        want(3, 'filter set NAME[:key=value,...] [--index N]');
        return { command: 'filter-set', args: scoped({ filter: rest[0], index }) };
      }
      if (action === 'clear') {
        want(3, 'filter clear NAME [--index N]');
        return { command: 'filter-clear', args: scoped({ name: rest[0], index }) };
      }
      throw new UsageError('usage: vblk ctl SOCKET filter list|set|clear ...');
    case 'export': {
      if (action === 'remove') {
        want(3, 'export remove NAME');
        return { command: 'export-remove', args: { name: rest[0] } };
      }
      if (action !== 'add') throw new UsageError('usage: vblk ctl SOCKET export add NAME=FILE[:ro] | export remove NAME');
      want(3, 'export add NAME=FILE[:ro] [--filter TEXT]...');
      const eq = rest[0].indexOf('=');
      if (eq < 0) throw new UsageError(`export add ${rest[0]}: expected NAME=FILE or NAME=FILE:ro`);
      const readOnly = rest[0].endsWith(':ro');
      const file = rest[0].slice(eq + 1, readOnly ? -3 : undefined);
      return { command: 'export-add', args: { name: rest[0].slice(0, eq), file, readOnly, filters: v.filter ?? [] } };
    }
    case 'call': {
      if (words.length < 2 || words.length > 3) throw new UsageError('usage: vblk ctl SOCKET call COMMAND [JSON-ARGS]');
      let args: unknown = {};
      try {
        if (words[2] !== undefined) args = JSON.parse(words[2]);
      } catch (err) {
        throw new UsageError(`call ${action}: the arguments are not JSON: ${(err as Error).message}`);
      }
      if (typeof args !== 'object' || args === null || Array.isArray(args)) throw new UsageError(`call ${action}: the arguments must be a JSON map`);
      return { command: action, args: args as Record<string, unknown> };
    }
    default:
      throw new UsageError(word === undefined ? 'no command given (see vblk ctl --help)' : `unknown command '${word}' (see vblk ctl --help)`);
  }
}

export const ctl: Command<CtlValues> = {
  name: 'ctl',
  summary: 'drive a running server through its control socket',
  help: HELP,
  options: {
    export: { type: 'string' },
    policy: { type: 'string' },
    seed: { type: 'string' },
    index: { type: 'string' },
    granularity: { type: 'string' },
    filter: { type: 'string', multiple: true },
    timeout: { type: 'string' },
  },
  async run(v, positionals) {
    const [socketPath, ...words] = positionals;
    if (!socketPath) throw new UsageError('expected SOCKET COMMAND (see vblk ctl --help)');
    const { command, args } = translate(words, v);
    const timeout = v.timeout === undefined ? 600 : Number(v.timeout);
    if (!(timeout > 0)) throw new UsageError('--timeout must be a number of seconds above 0');
    const response = await controlRequest(socketPath, command, args, timeout * 1000);
    if (!response.ok) {
      process.stderr.write(`vblk ctl: ${command}: ${response.error.message} (${response.error.code})\n`);
      return 1;
    }
    process.stdout.write(`${JSON.stringify(response.result, null, 2)}\n`);
    return 0;
  },
};
