// bench/threads: what --threads gives. vblk with --threads 1 and with
// --threads 2 (and nbdkit, whose threads are the yardstick), each pinned
// with taskset to one core and then to two, serve the same warm raw
// image to several fio processes at once, each one connection pinned to
// a core of its own turn (connection i on core i mod cores). Reported per
// setting: total IOPS, server CPU per request, how many cores the server
// kept busy (its CPU time over the wall time), and vblk --threads 2's
// ratio to --threads 1. Rounds interleave the settings; medians.
//
// On a machine where the clients share the server's cores the client
// sets much of the pace; cores busy and CPU per request tell what the
// server did with the time it got.

import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { fioAsync, have, imageBenchArgs, median, progress, randomFile, render, stop, treeCpuUs, usageError, waitForSocket, warm, type FioResult } from './lib.js';

const HELP = `Usage: node dist/bench/threads.js [options]

Runs vblk serve --threads 1 and --threads 2, and nbdkit, each pinned with
taskset to one core and then to two, against CONNS fio processes at once
(--ioengine=nbd, 4K random reads at depth 8, one connection each, pinned
round-robin to the cores), and prints total IOPS, server CPU per request
and the cores the server kept busy. Progress goes to stderr, the table to
stdout.

Options:
  --conns LIST      connection counts to measure (default 4,8)
  --cores LIST      server core sets, as taskset -c takes them, separated
                    by '/' (default 0/0,1 here: one core, then two)
  --seconds N       fio runtime per measurement (default 5)
  --rounds N        rounds, interleaved across settings (default 3)
  --quick           one round of 2 s each
  --size MB         size of the image in MiB (default 1024; the same file
                    as npm run bench's)
  --dir DIR         where the image goes (default: the system temp dir)
  --no-nbdkit       leave nbdkit out
  --results FILE    also append the table as Markdown to FILE
  -h, --help        show this help

Examples:
  npm run bench:threads
  node dist/bench/threads.js --quick --conns 4
  node dist/bench/threads.js --cores 0,1 --conns 4,8,16 --rounds 5
`;

const { values, seconds: SECONDS, rounds: ROUNDS, size: SIZE, image: IMAGE } = imageBenchArgs(HELP, {
  conns: { type: 'string' },
  cores: { type: 'string' },
  'no-nbdkit': { type: 'boolean' },
});
const VBLK = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const CONNS = (values.conns ?? '4,8').split(',').map(Number);
const CORE_SETS = (values.cores ?? (os.availableParallelism() > 1 ? '0/0,1' : '0')).split('/');
if (!CONNS.every((n) => n > 0)) usageError('--conns must be positive numbers');
for (const cmd of ['fio', 'taskset', ...(values['no-nbdkit'] ? [] : ['nbdkit'])]) if (!have(cmd)) usageError(`${cmd} is not installed`);

interface Setting {
  name: string;
  start(socket: string, cores: string): ChildProcess;
}

const taskset = (cores: string, cmd: string, args: string[]): ChildProcess => spawn('taskset', ['-c', cores, cmd, ...args], { stdio: ['ignore', 'ignore', 'inherit'] });
const vblk = (threads: number): Setting => ({
  name: `vblk --threads ${threads}`,
  start: (socket, cores) => taskset(cores, process.execPath, [VBLK, 'serve', IMAGE, '--socket', socket, '--log-level', 'warn', '--threads', String(threads)]),
});
const SETTINGS: Setting[] = [
  vblk(1),
  vblk(2),
  ...(values['no-nbdkit'] ? [] : [{ name: 'nbdkit', start: (socket: string, cores: string) => taskset(cores, 'nbdkit', ['-f', '-U', socket, 'file', IMAGE]) }]),
];

interface Measured {
  iops: number;
  cpuUs: number;
  cores: number;
}
const results = new Map<string, Measured[]>();
const key = (cores: string, conns: number, setting: string): string => `${cores}|${conns}|${setting}`;

/** CONNS fio processes at once, connection i pinned to client core i mod the host's cores. */
async function clients(socket: string, conns: number): Promise<FioResult[]> {
  const cpus = os.availableParallelism();
  const job = ['--name=threads', '--ioengine=nbd', `--uri=nbd+unix:///?socket=${socket}`, '--rw=randread', '--bs=4k', '--iodepth=8', '--time_based', `--runtime=${SECONDS}`];
  return Promise.all(Array.from({ length: conns }, (_, i) => fioAsync(job, ['taskset', '-c', String(i % cpus)])));
}

async function measure(setting: Setting, cores: string, round: number): Promise<void> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vblk-bench-'));
  const socket = path.join(work, 's.sock');
  const proc = setting.start(socket, cores);
  try {
    await waitForSocket(socket, proc);
    for (const conns of CONNS) {
      const before = treeCpuUs(proc.pid!);
      const started = process.hrtime.bigint();
      const runs = await clients(socket, conns);
      const wallUs = Number(process.hrtime.bigint() - started) / 1000;
      const cpu = treeCpuUs(proc.pid!) - before;
      const requests = runs.reduce((n, r) => n + r.requests, 0);
      const m = { iops: runs.reduce((n, r) => n + r.iops, 0), cpuUs: cpu / requests, cores: cpu / wallUs };
      const k = key(cores, conns, setting.name);
      results.set(k, [...(results.get(k) ?? []), m]);
      progress(`  round ${round}: server on cores ${cores.padEnd(4)} ${String(conns).padStart(2)} conns  ${setting.name.padEnd(16)} ${Math.round(m.iops)} IOPS, server CPU ${m.cpuUs.toFixed(1)} µs/request, ${m.cores.toFixed(2)} cores busy`);
    }
  } finally {
    await stop(proc);
    fs.rmSync(work, { recursive: true, force: true });
  }
}

function table(): { text: string; markdown: string } {
  const lines: string[][] = [];
  for (const cores of CORE_SETS) {
    for (const conns of CONNS) {
      const base = results.get(key(cores, conns, 'vblk --threads 1'));
      for (const s of SETTINGS) {
        const rs = results.get(key(cores, conns, s.name));
        if (!rs) continue;
        const iops = median(rs.map((r) => r.iops));
        const ratio = s.name === 'vblk --threads 2' && base ? `${(iops / median(base.map((r) => r.iops))).toFixed(2)}x` : '';
        lines.push([cores, String(conns), s.name, String(Math.round(iops)), median(rs.map((r) => r.cpuUs)).toFixed(1), median(rs.map((r) => r.cores)).toFixed(2), ratio]);
      }
    }
  }
  return render(['server cores', 'conns', 'server', 'IOPS', 'CPU µs/req', 'cores busy', 'vs --threads 1'], lines, 3);
}

async function main(): Promise<void> {
  randomFile(IMAGE, SIZE);
  warm(IMAGE);
  for (let round = 1; round <= ROUNDS; round++) {
    // The order rotates each round, so no setting always runs first.
    const order = SETTINGS.map((_, i) => SETTINGS[(i + round - 1) % SETTINGS.length]!);
    for (const cores of CORE_SETS) for (const s of order) await measure(s, cores, round);
  }
  const { text, markdown } = table();
  process.stdout.write(`${text}\n`);
  if (values.results) {
    const about = `${os.cpus()[0]?.model ?? 'unknown CPU'}, ${os.availableParallelism()} cores; 4K random reads at depth 8 per connection, ${SECONDS} s, median of ${ROUNDS}`;
    fs.appendFileSync(values.results, `\n${about}\n\n${markdown}\n`);
  }
}

await main();
