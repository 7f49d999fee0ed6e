// bench/tls: NBD over TLS, vblk against qemu-nbd with the same X.509
// certificates on the same raw image of random data in the page cache,
// with plain-text vblk beside them for what TLS costs. 4K random reads
// come from fio's nbd engine (libnbd, GnuTLS). libnbd refuses
// tls-certificates= in a URI unless the program allows local files, which
// fio does not, so fio finds the client's directory where libnbd looks by
// default ($HOME/.pki/libnbd, with HOME pointed at a directory made for
// the run); libnbd sends no client certificate from there, so neither
// server asks for one (the client still checks the server's). Sequential
// 1M reads come from nbdcopy to null: (its C event loop keeps exactly
// --requests requests in flight on one connection). Server CPU per
// request is utime + stime from /proc over the run, divided by the
// requests completed.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { makeTlsCreds, type TlsCreds } from '../test/helpers/tls-creds.js';
import { cpuUs, fio, have, median, progress, randomFile, stop, waitForSocket, warm, usageError } from './lib.js';

const HELP = `Usage: node dist/bench/tls.js [options]

Reads a raw image of random data over NBD with TLS (X.509) from vblk and
from qemu-nbd with the same certificates, and from plain-text vblk for
comparison: 4K random reads 32 in flight (fio, 10 s) and sequential 1M
reads 8 in flight (nbdcopy), each on one connection. Prints
IOPS or MB/s and the server's CPU per request (µs, utime + stime from
/proc), medians over rounds that interleave the servers. Needs nbdcopy,
qemu-nbd, fio, certtool and psktool (gnutls-bin). Progress goes to stderr,
the table to stdout.

Options:
  --size MB         image size in MiB (default 256); the 1M row reads it
                    four times
  --rounds N        rounds (default 3)
  --quick           one round on a 64 MiB image, for checking it works
  --servers LIST    only these (default: vblk,qemu-nbd,vblk-plain)
  --dir DIR         where the image goes (default: the system temp dir; it
                    is kept and reused)
  -h, --help        show this help

Examples:
  npm run bench:tls
  npm run bench:tls -- --quick
  node dist/bench/tls.js --servers vblk,qemu-nbd --rounds 5 --size 512
`;

const { values } = parseArgs({
  options: {
    size: { type: 'string' },
    rounds: { type: 'string' },
    quick: { type: 'boolean' },
    servers: { type: 'string' },
    dir: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  },
});
if (values.help) {
  process.stdout.write(HELP);
  process.exit(0);
}

const SIZE = Number(values.size ?? (values.quick ? 64 : 256)) * 2 ** 20;
const ROUNDS = values.quick ? 1 : Number(values.rounds ?? 3);
if (!(SIZE >= 2 ** 20) || !Number.isInteger(SIZE / 2 ** 20)) usageError('--size must be a whole number of MiB, at least 1');
if (!(ROUNDS > 0)) usageError('--rounds must be a positive number');
const DIR = values.dir ?? os.tmpdir();
const IMAGE = path.join(DIR, `vblk-bench-tls-${SIZE >> 20}M.raw`);
const VBLK = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

interface Row {
  id: string;
  title: string;
  /** Runs the load; returns the seconds it took and the requests it completed. */
  run(server: Started): { seconds: number; requests: number };
  unit: 'IOPS' | 'MB/s';
}

interface Started {
  proc: ChildProcess;
  /** For nbdcopy, credentials in the URI. */
  uri: string;
  /** For fio, credentials where libnbd looks by default (HOME below). */
  fioUri: string;
}

const FIO_SECONDS = values.quick ? 3 : 10;

const ROWS: Row[] = [
  {
    id: '4k',
    title: 'random read 4K, 32 in flight (fio)',
    unit: 'IOPS',
    run(server) {
      const args = ['--name=tls', '--ioengine=nbd', `--uri=${server.fioUri}`, '--rw=randread', '--bs=4k', '--iodepth=32'];
      const r = fio([...args, `--size=${SIZE}`, `--runtime=${FIO_SECONDS}`, '--time_based'], { ...process.env, HOME: fioHome });
      return { seconds: r.requests / r.iops, requests: r.requests };
    },
  },
  {
    id: '1m',
    title: 'sequential read 1M, 8 in flight (nbdcopy)',
    unit: 'MB/s',
    run(server) {
      const passes = 4;
      return { seconds: copy(server.uri, 1 << 20, 8, passes), requests: (SIZE >> 20) * passes };
    },
  },
];

interface Server {
  name: string;
  program: string;
  start(socket: string, creds: TlsCreds): Started;
}

/** HOME for fio: .pki/libnbd holds the client's credentials. */
let fioHome = '';

const spawned = (cmd: string, args: string[]): ChildProcess => spawn(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'] });
const tls = (proc: ChildProcess, socket: string, creds: TlsCreds): Started => ({
  proc,
  uri: `nbds+unix:///?socket=${socket}&tls-certificates=${creds.client}`,
  fioUri: `nbds+unix:///?socket=${socket}`,
});

const SERVERS: Server[] = [
  {
    name: 'vblk',
    program: 'node',
    start: (socket, creds) =>
      tls(spawned(process.execPath, [VBLK, 'serve', IMAGE, '--socket', socket, '--log-level', 'warn', '--tls', 'require', '--tls-certs', creds.server]), socket, creds),
  },
  {
    name: 'qemu-nbd',
    program: 'qemu-nbd',
    start: (socket, creds) =>
      tls(
        spawned('qemu-nbd', [
          '--object', `tls-creds-x509,id=tls0,dir=${creds.server},endpoint=server,verify-peer=off`,
          '--tls-creds', 'tls0', '-t', '--shared=8', '-f', 'raw', '-k', socket, IMAGE,
        ]),
        socket,
        creds,
      ),
  },
  {
    name: 'vblk-plain',
    program: 'node',
    start: (socket) => {
      const uri = `nbd+unix:///?socket=${socket}`;
      return { proc: spawned(process.execPath, [VBLK, 'serve', IMAGE, '--socket', socket, '--log-level', 'warn']), uri, fioUri: uri };
    },
  },
];

const names = values.servers ? values.servers.split(',') : SERVERS.map((s) => s.name);
for (const n of names) if (!SERVERS.some((s) => s.name === n)) usageError(`unknown server '${n}'`);
const servers = SERVERS.filter((s) => names.includes(s.name));
for (const tool of ['nbdcopy', 'fio', 'certtool', 'psktool', ...servers.map((s) => s.program)]) {
  if (!have(tool)) usageError(`${tool} is not installed`);
}

interface Sample {
  /** IOPS or MB/s, as the row's unit says. */
  rate: number;
  cpuUsPerRequest: number;
}

const samples = new Map<string, Sample[]>();

/** nbdcopy reads the export `passes` times to null:; returns the seconds it took. */
function copy(uri: string, requestSize: number, requests: number, passes: number): number {
  const started = process.hrtime.bigint();
  for (let pass = 0; pass < passes; pass++) {
    const args = ['--no-extents', '--connections=1', '--threads=1', `--request-size=${requestSize}`, `--requests=${requests}`, uri, 'null:'];
    const r = spawnSync('nbdcopy', args, { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`nbdcopy ${args.join(' ')} failed: ${r.stderr}`);
  }
  return Number(process.hrtime.bigint() - started) / 1e9;
}

async function measure(server: Server, creds: TlsCreds, round: number): Promise<void> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vblk-bench-tls-'));
  const socket = path.join(work, 's.sock');
  warm(IMAGE);
  const started = server.start(socket, creds);
  const { proc } = started;
  try {
    await waitForSocket(socket, proc);
    for (const row of ROWS) {
      const before = cpuUs(proc.pid!);
      const { seconds, requests } = row.run(started);
      const sample: Sample = {
        rate: row.unit === 'IOPS' ? requests / seconds : (requests * (1 << 20)) / seconds / 1e6,
        cpuUsPerRequest: (cpuUs(proc.pid!) - before) / requests,
      };
      const key = `${row.id}|${server.name}`;
      samples.set(key, [...(samples.get(key) ?? []), sample]);
      progress(
        `  round ${round}: ${server.name.padEnd(10)} ${row.title.padEnd(32)} ${Math.round(sample.rate)} ${row.unit}, ` +
          `server CPU ${sample.cpuUsPerRequest.toFixed(1)} µs/request`,
      );
    }
  } finally {
    await stop(proc);
    fs.rmSync(work, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  randomFile(IMAGE, SIZE);
  const credsDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vblk-bench-tls-creds-'));
  try {
    const creds = await makeTlsCreds(credsDir);
    fioHome = path.join(credsDir, 'home');
    fs.mkdirSync(path.join(fioHome, '.pki'), { recursive: true });
    fs.cpSync(creds.client, path.join(fioHome, '.pki', 'libnbd'), { recursive: true });
    for (let round = 1; round <= ROUNDS; round++) {
      // Rotate the order so that no server always runs first.
      const order = servers.map((_, i) => servers[(i + round - 1) % servers.length]);
      for (const server of order) await measure(server, creds, round);
    }
  } finally {
    fs.rmSync(credsDir, { recursive: true, force: true });
  }
  const lines = [`| row | ${servers.map((s) => s.name).join(' | ')} |`, `|---|${servers.map(() => '---|').join('')}`];
  for (const row of ROWS) {
    const cells = servers.map((s) => {
      const xs = samples.get(`${row.id}|${s.name}`) ?? [];
      const rate = median(xs.map((x) => x.rate));
      const cpu = median(xs.map((x) => x.cpuUsPerRequest));
      return `${Math.round(rate)} ${row.unit}, ${cpu.toFixed(1)} µs CPU/req`;
    });
    lines.push(`| ${row.title} | ${cells.join(' | ')} |`);
  }
  process.stdout.write(
    `NBD over TLS (X.509; the client checks the server's certificate), ${SIZE >> 20} MiB image in the page cache, ` +
      `median of ${ROUNDS} round${ROUNDS === 1 ? '' : 's'}; ${os.cpus().length} CPUs, ${os.cpus()[0]?.model ?? ''}\n\n${lines.join('\n')}\n`,
  );
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
