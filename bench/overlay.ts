// bench/overlay: 4 KiB random writes into a fresh qcow2 overlay over a
// raw base of random data, through NBD, driven by fio's nbd engine:
// vblk serving an overlay made by `vblk create --backing`, against
// qemu-nbd serving one made by `qemu-img create -f qcow2 -b BASE -F raw`,
// with qemu-nbd's default cache mode and with --cache=writeback.
//
// Fair by construction: both overlays are qcow2 v3 with 64 KiB clusters
// over the same base file, whose pages are in the page cache before each
// round; both servers use the page cache (no O_DIRECT) and their default
// I/O engine (vblk: auto, which is io_uring here; qemu-nbd: --aio threads
// unless --qemu-aio says otherwise); neither sends flushes (fio does not
// ask). Every measurement gets a new overlay and a new server; rounds
// alternate which server goes first; the table shows medians.

import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { fio, median, must, progress, randomFile, stop, waitForSocket, warm } from './lib.js';

const HELP = `Usage: node dist/bench/overlay.js [options]

4 KiB random writes (fio --ioengine=nbd --rw=randwrite --bs=4k, time-based)
into a fresh qcow2 overlay over a raw base of random data, served by vblk
and by qemu-nbd (default cache, and --cache=writeback), at iodepth 32 and
1. Each measurement uses a new overlay and a new server; rounds alternate
the order of the servers; medians and the ratio vblk/qemu-nbd are printed.
Progress goes to stderr, the table to stdout.

Options:
  --seconds N      fio runtime per measurement (default 5)
  --rounds N       rounds (default 3)
  --quick          one round (same as --rounds 1)
  --size MB        size of the raw base in MiB (default 1024)
  --dir DIR        where the base and the overlays go (default: the system
                   temp dir; the base is kept there and reused)
  --depths LIST    comma-separated iodepths (default 32,1)
  --qemu-aio MODE  pass --aio=MODE to qemu-nbd (threads, native, io_uring);
                   default: qemu-nbd's own default (threads)
  --vblk-args ARGS extra arguments for vblk serve, space-separated
                   (e.g. --vblk-args="--engine sync")
  --cpu-prof DIR   run vblk under node --cpu-prof, profiles into DIR
  -h, --help       show this help

Examples:
  npm run bench:overlay
  node dist/bench/overlay.js --quick
  node dist/bench/overlay.js --seconds 10 --rounds 5 --dir /var/tmp
  node dist/bench/overlay.js --quick --depths 32 --cpu-prof /tmp/prof
`;

const { values } = parseArgs({
  options: {
    seconds: { type: 'string' },
    rounds: { type: 'string' },
    quick: { type: 'boolean' },
    size: { type: 'string' },
    dir: { type: 'string' },
    depths: { type: 'string' },
    'qemu-aio': { type: 'string' },
    'vblk-args': { type: 'string' },
    'cpu-prof': { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  },
});
if (values.help) {
  process.stdout.write(HELP);
  process.exit(0);
}

const SECONDS = Number(values.seconds ?? 5);
const ROUNDS = values.quick ? 1 : Number(values.rounds ?? 3);
const SIZE = Number(values.size ?? 1024) * 2 ** 20;
const DIR = values.dir ?? os.tmpdir();
const DEPTHS = (values.depths ?? '32,1').split(',').map(Number);
const BASE = path.join(DIR, `vblk-bench-overlay-base-${SIZE >> 20}M.raw`);
const VBLK = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const QEMU_AIO = values['qemu-aio'];
const VBLK_ARGS = values['vblk-args'] ? values['vblk-args'].split(/\s+/).filter(Boolean) : [];
const CPU_PROF = values['cpu-prof'];
for (const [name, n] of [['--seconds', SECONDS], ['--rounds', ROUNDS], ['--size', SIZE]] as const) {
  if (!(n > 0)) {
    process.stderr.write(`${name} must be a positive number\n`);
    process.exit(2);
  }
}
if (DEPTHS.some((d) => !(Number.isInteger(d) && d > 0))) {
  process.stderr.write('--depths must be positive integers, like 32,1\n');
  process.exit(2);
}

interface Server {
  name: string;
  /** How it is started, for the record. */
  command: string;
  createOverlay(overlay: string): void;
  start(overlay: string, socket: string): ChildProcess;
}

// -t (--persistent): fio's nbd engine connects once to learn the size and
// again for the job; without it qemu-nbd exits when the first client goes.
const qemuFlags = (cache: string | null): string[] => [
  '-t',
  ...(cache ? [`--cache=${cache}`] : []),
  ...(QEMU_AIO ? [`--aio=${QEMU_AIO}`] : []),
];

const SERVERS: Server[] = [
  {
    name: 'vblk',
    command: `vblk serve OVERLAY --socket SOCK${VBLK_ARGS.length ? ` ${VBLK_ARGS.join(' ')}` : ''} (overlay: vblk create OVERLAY --backing BASE)`,
    createOverlay: (overlay) => must('node', [VBLK, 'create', overlay, '--backing', BASE]),
    start: (overlay, socket) => {
      const prof = CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${CPU_PROF}`] : [];
      return spawn(process.execPath, [...prof, VBLK, 'serve', overlay, '--socket', socket, '--log-level', 'warn', ...VBLK_ARGS], {
        stdio: ['ignore', 'ignore', 'inherit'],
      });
    },
  },
  ...[null, 'writeback'].map((cache): Server => ({
    name: cache ? `qemu-nbd --cache=${cache}` : 'qemu-nbd',
    command: `qemu-nbd -f qcow2 -k SOCK ${qemuFlags(cache).join(' ')} OVERLAY (overlay: qemu-img create -f qcow2 -b BASE -F raw OVERLAY)`.replace(/ {2,}/g, ' '),
    createOverlay: (overlay) => must('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', BASE, '-F', 'raw', overlay]),
    start: (overlay, socket) => spawn('qemu-nbd', ['-f', 'qcow2', '-k', socket, ...qemuFlags(cache), overlay], { stdio: ['ignore', 'ignore', 'inherit'] }),
  })),
];

function fioArgs(socket: string, depth: number): string[] {
  return [
    '--name=overlay', '--ioengine=nbd', `--uri=nbd+unix:///?socket=${socket}`, '--rw=randwrite', '--bs=4k',
    `--iodepth=${depth}`, '--time_based', `--runtime=${SECONDS}`,
  ];
}

interface Result {
  iops: number;
  /** Mean completion latency, µs. */
  latUs: number;
}

function fioRun(socket: string, depth: number): Result {
  const r = fio(fioArgs(socket, depth));
  return { iops: r.iops, latUs: r.meanUs };
}

async function measure(server: Server, depth: number, round: number): Promise<Result> {
  const work = fs.mkdtempSync(path.join(DIR, 'vblk-bench-ov-'));
  const overlay = path.join(work, 'overlay.qcow2');
  const socket = path.join(work, 's.sock');
  let proc: ChildProcess | null = null;
  try {
    server.createOverlay(overlay);
    warm(BASE);
    proc = server.start(overlay, socket);
    await waitForSocket(socket, proc);
    const r = fioRun(socket, depth);
    progress(`  round ${round}, iodepth ${depth}, ${server.name}: ${Math.round(r.iops)} IOPS, ${r.latUs.toFixed(1)} µs mean`);
    return r;
  } finally {
    if (proc) await stop(proc);
    fs.rmSync(work, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  must('fio', ['--version']);
  must('qemu-nbd', ['--version']);
  randomFile(BASE, SIZE);
  const results = new Map<string, Result[]>();
  const key = (server: Server, depth: number): string => `${server.name}@${depth}`;
  for (let round = 1; round <= ROUNDS; round++) {
    progress(`round ${round} of ${ROUNDS}`);
    // Alternate the order: vblk first in odd rounds, last in even ones.
    const order = round % 2 ? SERVERS : [...SERVERS].reverse();
    for (const depth of DEPTHS) {
      for (const server of order) {
        const k = key(server, depth);
        results.set(k, [...(results.get(k) ?? []), await measure(server, depth, round)]);
      }
    }
  }

  const qemu = os.platform() === 'linux' ? must('qemu-nbd', ['--version']).split('\n')[0] : 'qemu-nbd';
  let out = `\n4 KiB random writes into a fresh qcow2 overlay (64 KiB clusters) over a ${SIZE >> 20} MiB raw base of random data (page cache warm)\n`;
  out += `fio ${must('fio', ['--version']).trim()} --ioengine=nbd --rw=randwrite --bs=4k --time_based --runtime=${SECONDS}; ${ROUNDS} round(s), medians\n`;
  out += `${os.cpus().length} cores (${os.cpus()[0]?.model ?? 'unknown'}), Linux ${os.release()}, Node ${process.version}, ${qemu}\n`;
  out += `Servers:\n${SERVERS.map((s) => `  ${s.name.padEnd(28)}${s.command}`).join('\n')}\n\n`;
  const width = 30;
  out += `${'server'.padEnd(width)}${DEPTHS.map((d) => `iodepth ${d} IOPS`.padStart(20) + `(µs)`.padStart(9)).join('')}   all rounds (IOPS)\n`;
  for (const server of SERVERS) {
    out += server.name.padEnd(width);
    const all: string[] = [];
    for (const depth of DEPTHS) {
      const rs = results.get(key(server, depth))!;
      out += Math.round(median(rs.map((r) => r.iops))).toString().padStart(20) + median(rs.map((r) => r.latUs)).toFixed(1).padStart(9);
      all.push(`qd${depth}: ${rs.map((r) => Math.round(r.iops)).join(', ')}`);
    }
    out += `   ${all.join('; ')}\n`;
  }
  out += '\nRatio vblk / qemu-nbd (median IOPS; goal >= 1.0):\n';
  const vblk = SERVERS[0];
  for (const other of SERVERS.slice(1)) {
    for (const depth of DEPTHS) {
      const ratio = median(results.get(key(vblk, depth))!.map((r) => r.iops)) / median(results.get(key(other, depth))!.map((r) => r.iops));
      out += `  vs ${other.name.padEnd(26)} iodepth ${String(depth).padEnd(3)} ${ratio.toFixed(2)}  ${ratio >= 1 ? 'met' : 'NOT met'}\n`;
    }
  }
  process.stdout.write(out);
}

await main();
