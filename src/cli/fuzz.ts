// vblk fuzz: the model-based property suite against any NBD server by
// URI. Each finding is shrunk, printed with a reproduction, and then its
// rule is set aside so the campaign can look for the next one.

import { runModelSuite, type Finding } from '../fuzz/suite.js';
import { isViolation } from '../fuzz/violation.js';
import { tlsConnectOptions } from '../client/tls-credentials.js';
import { formatNbdUri, parseNbdUri } from '../client/uri.js';
import { numberOption, usage, UsageError, type Command } from './command.js';

interface FuzzValues {
  seconds?: string;
  seed?: string;
  export?: string;
  destructive?: boolean;
  connections?: string;
  timeout?: string;
  replay?: string;
  ignore?: string[];
}

const HELP = `Usage: vblk fuzz URI [--seconds N] [--seed S] [--export NAME] [--destructive]

Fuzz the NBD server at URI with sequences of connections (handshake
variants, junk options, old-style EXPORT_NAME), requests alone and
pipelined (every command, every flag, boundary offsets and lengths),
disconnects and reconnects on several connections at once. Every reply
is checked against the protocol and against a model of the disk; each
violation is shrunk to a minimal sequence and printed with the seed and
path that replay it. Without --destructive nothing is written: no WRITE,
TRIM or WRITE_ZEROES is ever sent.

URI is nbd://HOST[:PORT]/NAME or nbd+unix:///NAME?socket=PATH; nbds:// and
nbds+unix:// fuzz over TLS (STARTTLS on every connection) with libnbd's
tls-certificates=DIR or tls-psk-file=FILE&tls-username=NAME parameters.

Options:
  --seconds N        how long to fuzz (default 60)
  --seed S           seed of the first round (default: random, printed)
  --export NAME      export to fuzz (overrides the name in URI)
  --destructive      also write, trim and zero: only on a scratch export
  --connections N    connections open at once (default 3)
  --timeout MS       time any reply may take (default 5000)
  --replay PATH      replay one counterexample: the path printed with it
  --ignore RULE      do not report violations of RULE (repeatable; the
                     replay line of a later finding lists earlier ones)
  -h, --help         show this help

Exit status: 0 when nothing was found, 1 when the server broke a rule,
3 when the server died (stopped accepting connections), 2 for a mistake
on the command line.

Examples:
  vblk fuzz 'nbd+unix:///?socket=/tmp/vblk.sock' --seconds 600
  nbdkit -U /tmp/k.sock memory 64M &
  vblk fuzz 'nbd+unix:///?socket=/tmp/k.sock' --destructive --seconds 120
  vblk fuzz nbd://127.0.0.1:10809/scratch --destructive --seed 42
  vblk fuzz 'nbds+unix:///?socket=/tmp/q.sock&tls-certificates=/etc/pki/qemu' --seconds 60
`;

function print(f: Finding, n: number, replay: string): void {
  const v = f.violation;
  const lines = [
    `finding ${n}: ${v.level}: ${v.rule}`,
    `  ${v.detail}`,
    v.level === 'CRASH'
      ? '  reproduction (not shrunk, the server died: the connection used and the step that killed it):'
      : '  reproduction (shrunk; each step after the previous one answered):',
    ...f.reproduction.map((c, i) => `    ${i + 1}. ${c}`),
    `  replay: ${replay}`,
    '',
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}

function quote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

export const fuzz: Command<FuzzValues> = {
  name: 'fuzz',
  summary: 'fuzz any NBD server by URI against the protocol and a disk model',
  help: HELP,
  options: {
    seconds: { type: 'string' },
    seed: { type: 'string' },
    export: { type: 'string' },
    destructive: { type: 'boolean' },
    connections: { type: 'string' },
    timeout: { type: 'string' },
    replay: { type: 'string' },
    ignore: { type: 'string', multiple: true },
  },
  async run(v, positionals) {
    if (positionals.length !== 1) throw new UsageError('expected exactly one URI');
    const target = usage(() => parseNbdUri(positionals[0]));
    const exportName = v.export ?? target.exportName;
    const seconds = numberOption('seconds', v.seconds, 60, 1, 7 * 24 * 3600);
    const connections = numberOption('connections', v.connections, 3, 1, 16);
    const timeoutMs = numberOption('timeout', v.timeout, 5000, 100, 600_000);
    let seed = numberOption('seed', v.seed, Math.floor(Math.random() * 0x7fffffff), -0x80000000, 0x7fffffff) | 0;
    if (v.replay !== undefined && v.seed === undefined) throw new UsageError('--replay needs the --seed it was found with');
    const ignore = new Set(v.ignore ?? []);
    const destructive = v.destructive ?? false;
    const uri = formatNbdUri(target.endpoint, exportName, target.tls);
    const tls = target.tls ? () => tlsConnectOptions(target.tlsParams, target.endpoint) : undefined;
    const deadline = Date.now() + seconds * 1000;
    process.stdout.write(
      `fuzzing ${uri} for ${seconds} s, seed ${seed}, ${destructive ? 'destructive (writes, trims, zeroes)' : 'read-only (no writes)'}\n`,
    );
    const findings: Finding[] = [];
    let runs = 0;
    let crashed = false;
    for (let round = 0; Date.now() < deadline; round++, seed = (seed + 1) | 0) {
      const earlier = [...ignore];
      const result = await runModelSuite(
        { endpoint: target.endpoint, exportName, destructive, connections, timeoutMs, ignoreRules: ignore, tls },
        v.replay !== undefined
          ? { seed, path: v.replay, numRuns: 1, endOnFailure: true }
          : { seed, numRuns: 1_000_000, interruptAfterTimeLimit: Math.max(1, deadline - Date.now()), markInterruptAsFailure: false },
      ).catch((err: Error) => {
        if (!isViolation(err)) throw new Error(`the campaign failed: ${err.message}`);
        // The first connection of a round failed: the server is gone (or was never there).
        process.stdout.write(`${err.level}: ${err.rule}: ${err.detail}\n`);
        return null;
      });
      if (!result) {
        crashed = true;
        break;
      }
      runs += result.runs;
      if (result.finding) {
        const f = result.finding;
        findings.push(f);
        const replay = [
          'vblk fuzz',
          quote(uri),
          ...(destructive ? ['--destructive'] : []),
          `--connections ${connections}`,
          `--seed ${f.seed}`,
          `--replay ${f.path}`,
          ...earlier.map((r) => `--ignore ${quote(r)}`),
        ].join(' ');
        print(f, findings.length, replay);
        ignore.add(f.violation.rule);
        if (f.violation.level === 'CRASH') {
          crashed = true;
          break;
        }
      }
      if (v.replay !== undefined || (!result.finding && !result.interrupted)) break;
    }
    process.stdout.write(`${runs} sequences run, ${findings.length} finding${findings.length === 1 ? '' : 's'}${crashed ? '; the server died' : ''}\n`);
    return crashed ? 3 : findings.length ? 1 : 0;
  },
};
