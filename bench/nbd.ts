// bench/nbd: vblk against qemu-nbd, nbdkit (file plugin) and nbd-server,
// one after another on the same raw image of random data, each over a
// UNIX socket, measured by fio's nbd engine. Rounds interleave the
// servers (the order rotates each round) and the table shows medians and
// vblk's ratio to the best peer on each row. Each server is started
// fresh for each round with the image's pages warm in the page cache
// (the direct rows: with none of them cached, see below).
// Beside IOPS and MB/s it reports each server's CPU per request: its
// whole process tree's user + system time over the row (from /proc,
// children per connection included) divided by the requests fio
// completed, the steadier figure when client and server share 2 cores.
// Row 8 limits fio to 2000 requests a second at depth 1: every server
// does the same work there, and what it costs per request (waking up for
// each one, polling or not) is the figure.
// At depth 1 where the scheduler puts the server can decide what a request
// costs: on this 2-core VM a server woken from fio's core paid 159-220
// µs per request at 2000/s, one on fio's own core 50-130 (nbdkit and
// vblk alike, pinned with taskset, 2026-12-07; an hour later the gap was
// small, see RESULTS.md), and unpinned runs fell either way. So
// the depth-1 rows pin both: rows 5 and 8 put the server on the last core
// and fio on the first (as a VMM keeps an I/O thread off the guest's
// vCPU), rows 5s and 8s put both on the first core, where they take turns.
//
// Page-cache rows use each server's default caching; the direct rows use
// vblk --direct, qemu-nbd --cache=none --aio=io_uring and nbdkit's
// cache=none (nbd-server has no such mode). nbdkit's cache=none reads
// through the page cache and only asks the kernel to drop what it read
// (with the image warm it read nothing from the disk: 0 sectors per
// request), so the direct rows start with the image dropped from the
// cache, and the table reports what each server read from the disk per
// request. qemu-nbd gets --shared=8 so
// the multi-connection rows can open their four and eight connections.
// vblk runs with its defaults (--threads auto: a loop per core).

import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { evict, fio, have, imageBenchArgs, median, must, peakRss, progress, treeCpuUs, randomFile, render, sectorsRead, stop, waitForSocket, warm, writeBack, type FioResult, usageError } from './lib.js';

const HELP = `Usage: node dist/bench/nbd.js [options]

Runs fio (--ioengine=nbd) against vblk, qemu-nbd, nbdkit and nbd-server
serving the same raw image over a UNIX socket, and prints IOPS or MB/s per
server, vblk's ratio to the best peer and the goal for each row, the p99
completion latency at depth 1, what each server read from the disk per
request in the no-page-cache rows, and vblk's peak RSS. The depth-1 rows
pin the server and fio with taskset: rows 5 and 8 to different cores,
rows 5s and 8s to one core for both. A peer that is not
installed is reported and left out. Progress goes to stderr, the table to
stdout.

Options:
  --seconds N       fio runtime per measurement (default 5)
  --rounds N        rounds, interleaved across servers (default 3)
  --quick           one round of 2 s each, for development
  --size MB         size of the image in MiB (default 1024)
  --dir DIR         where the image goes (default: the system temp dir; it
                    is kept and reused; must support O_DIRECT)
  --rows LIST       only these rows, by number (default: all), e.g. 1,5
  --servers LIST    only these servers (default: vblk,qemu-nbd,nbdkit,nbd-server);
                    node-floor, named here, adds the least a Node.js server
                    costs (bench/node-floor.ts) as a yardstick, not a peer
  --vblk-args ARGS  extra arguments for vblk serve, space-separated
  --results FILE    also write the table as Markdown, with the machine and
                    the commands, to FILE (e.g. bench/RESULTS.md), in place
                    of the table there; the sections after it are kept
  -h, --help        show this help

Examples:
  npm run bench
  npm run bench -- --quick
  node dist/bench/nbd.js --rows 1,2 --servers vblk,qemu-nbd --seconds 10
  node dist/bench/nbd.js --results bench/RESULTS.md
  node dist/bench/nbd.js --rows 8s --servers vblk,nbdkit,node-floor
`;

const { values, seconds: SECONDS, rounds: ROUNDS, size: SIZE, image: IMAGE } = imageBenchArgs(HELP, {
  rows: { type: 'string' },
  servers: { type: 'string' },
  'vblk-args': { type: 'string' },
});
const VBLK = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const VBLK_ARGS = values['vblk-args'] ? values['vblk-args'].split(/\s+/).filter(Boolean) : [];

interface Row {
  id: string;
  title: string;
  /** fio job options beyond engine, URI, time and JSON. */
  job: string[];
  unit: 'IOPS' | 'MB/s';
  /** vblk / best peer at least this; none for a rate-limited row, where CPU per request is the figure. */
  goal?: number;
  /** Bypass the page cache (the servers' direct modes). */
  direct?: boolean;
  p99?: boolean;
  /** Where the server and fio run (taskset): on different cores, or both on one. */
  pin?: 'apart' | 'shared';
}

const ROWS: Row[] = [
  { id: '1', title: 'random read 4K, QD32', job: ['--rw=randread', '--bs=4k', '--iodepth=32'], unit: 'IOPS', goal: 1.5 },
  { id: '2', title: 'random write 4K, QD32', job: ['--rw=randwrite', '--bs=4k', '--iodepth=32'], unit: 'IOPS', goal: 1.5 },
  { id: '3', title: 'sequential read 1M, QD8', job: ['--rw=read', '--bs=1m', '--iodepth=8'], unit: 'MB/s', goal: 1.0 },
  { id: '4', title: 'sequential write 1M, QD8', job: ['--rw=write', '--bs=1m', '--iodepth=8'], unit: 'MB/s', goal: 1.0 },
  { id: '5', title: 'random read 4K, QD1', job: ['--rw=randread', '--bs=4k', '--iodepth=1'], unit: 'IOPS', goal: 1.2, p99: true, pin: 'apart' },
  { id: '5s', title: 'random read 4K, QD1, one core for both', job: ['--rw=randread', '--bs=4k', '--iodepth=1'], unit: 'IOPS', goal: 1.2, p99: true, pin: 'shared' },
  { id: '6', title: 'random read 4K, 4 conns x QD8', job: ['--rw=randread', '--bs=4k', '--iodepth=8', '--numjobs=4'], unit: 'IOPS', goal: 1.5 },
  { id: '7r', title: 'random read 4K, QD32, no page cache', job: ['--rw=randread', '--bs=4k', '--iodepth=32'], unit: 'IOPS', goal: 1.0, direct: true },
  { id: '7w', title: 'random write 4K, QD32, no page cache', job: ['--rw=randwrite', '--bs=4k', '--iodepth=32'], unit: 'IOPS', goal: 1.0, direct: true },
  { id: '8', title: 'random read 4K, QD1, 2000/s (light load)', job: ['--rw=randread', '--bs=4k', '--iodepth=1', '--rate_iops=2000'], unit: 'IOPS', pin: 'apart' },
  { id: '8s', title: 'light load, one core for both', job: ['--rw=randread', '--bs=4k', '--iodepth=1', '--rate_iops=2000'], unit: 'IOPS', pin: 'shared' },
  { id: '9', title: 'random read 4K, 8 conns x QD4', job: ['--rw=randread', '--bs=4k', '--iodepth=4', '--numjobs=8'], unit: 'IOPS', goal: 1.5 },
];

interface Server {
  name: string;
  /** The program it needs; a missing one leaves the server out. */
  program: string;
  /** The command line, for the record (IMAGE and SOCK stand for the paths). */
  command(direct: boolean): string;
  /** Whether it has a mode that bypasses the page cache. */
  direct: boolean;
  start(socket: string, direct: boolean, work: string): { proc: ChildProcess; uri: string; pid: () => number | null };
  /** Not a peer but a yardstick: run only when named, left out of the best-peer ratios. */
  baseline?: boolean;
}

const vblkArgs = (direct: boolean): string[] => ['serve', IMAGE, '--socket', 'SOCK', '--log-level', 'warn', ...(direct ? ['--direct'] : []), ...VBLK_ARGS];
const qemuArgs = (direct: boolean): string[] => ['-f', 'raw', '-k', 'SOCK', '-t', '--shared=8', ...(direct ? ['--cache=none', '--aio=io_uring'] : []), IMAGE];
const nbdkitArgs = (direct: boolean): string[] => ['-f', '-U', 'SOCK', 'file', IMAGE, ...(direct ? ['cache=none'] : [])];
const withSocket = (args: string[], socket: string): string[] => args.map((a) => (a === 'SOCK' ? socket : a));
const spawned = (cmd: string, args: string[]): ChildProcess => spawn(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'] });
const unixUri = (socket: string, name = ''): string => `nbd+unix:///${name}?socket=${socket}`;

const FLOOR = fileURLToPath(new URL('./node-floor.js', import.meta.url));

const SERVERS: Server[] = [
  {
    name: 'vblk',
    program: 'node',
    command: (direct) => `vblk ${vblkArgs(direct).join(' ')}`,
    direct: true,
    start: (socket, direct) => {
      const proc = spawned(process.execPath, [VBLK, ...withSocket(vblkArgs(direct), socket)]);
      return { proc, uri: unixUri(socket), pid: () => proc.pid ?? null };
    },
  },
  {
    name: 'qemu-nbd',
    program: 'qemu-nbd',
    command: (direct) => `qemu-nbd ${qemuArgs(direct).join(' ')}`,
    direct: true,
    start: (socket, direct) => {
      const proc = spawned('qemu-nbd', withSocket(qemuArgs(direct), socket));
      return { proc, uri: unixUri(socket), pid: () => proc.pid ?? null };
    },
  },
  {
    name: 'nbdkit',
    program: 'nbdkit',
    command: (direct) => `nbdkit ${nbdkitArgs(direct).join(' ')}`,
    direct: true,
    start: (socket, direct) => {
      const proc = spawned('nbdkit', withSocket(nbdkitArgs(direct), socket));
      return { proc, uri: unixUri(socket), pid: () => proc.pid ?? null };
    },
  },
  {
    // nbd-server forks a child per connection; -d would keep it to one client at a time.
    name: 'nbd-server',
    program: 'nbd-server',
    command: () => `nbd-server -C CONFIG -p PIDFILE  (CONFIG: [generic] unixsock = SOCK; [bench] exportname = IMAGE)`,
    direct: false,
    start: (socket, _direct, work) => {
      const config = path.join(work, 'nbd-server.conf');
      const pidFile = path.join(work, 'nbd-server.pid');
      fs.writeFileSync(config, `[generic]\nunixsock = ${socket}\n[bench]\nexportname = ${IMAGE}\n`);
      // The parent daemonizes and exits; the pid file names the daemon, stopped through a stand-in process.
      must('nbd-server', ['-C', config, '-p', pidFile]);
      const pid = daemonPid(pidFile);
      const proc = spawn('sh', ['-c', `trap 'kill ${pid}; exit 0' TERM; while kill -0 ${pid} 2>/dev/null; do sleep 0.2; done`], { stdio: 'ignore' });
      return { proc, uri: unixUri(socket, 'bench'), pid: () => pid };
    },
  },
  {
    // The least a Node.js server costs per request (node-floor.ts).
    name: 'node-floor',
    program: 'node',
    command: () => 'node dist/bench/node-floor.js SOCK IMAGE',
    direct: false,
    baseline: true,
    start: (socket) => {
      const proc = spawned(process.execPath, [FLOOR, socket, IMAGE]);
      return { proc, uri: unixUri(socket), pid: () => proc.pid ?? null };
    },
  },
];

/**
 * The pid a daemon wrote to its pid file, waiting until it is there: the
 * parent may exit before the daemon has written it. Never 0 or less,
 * which `kill` would take for a whole process group (the bench's own).
 */
function daemonPid(pidFile: string): number {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const pid = fs.existsSync(pidFile) ? Number(fs.readFileSync(pidFile, 'utf8').trim()) : NaN;
    if (Number.isInteger(pid) && pid > 0) return pid;
    if (Date.now() > deadline) throw new Error(`no pid in ${pidFile} after 10 s`);
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
  }
}

function selected<T>(all: T[], list: string | undefined, key: (t: T) => string, what: string): T[] {
  if (!list) return all;
  const names = list.split(',');
  for (const n of names) if (!all.some((t) => key(t) === n)) usageError(`unknown ${what} '${n}'`);
  return all.filter((t) => names.includes(key(t)));
}

// "--rows 7" means both rows of 7.
const rows = selected(ROWS, values.rows?.replace(/\b7\b(?![rw])/, '7r,7w'), (r) => r.id, 'row');
const wanted = values.servers ? selected(SERVERS, values.servers, (s) => s.name, 'server') : SERVERS.filter((s) => !s.baseline);
const missing = wanted.filter((s) => !have(s.program));
const servers = wanted.filter((s) => have(s.program));

const CORES = os.cpus().length;
const ALL_CORES = `0-${CORES - 1}`;

/** The cores a pinned row runs the server and fio on (taskset -c lists); on one core, both there. */
function pinning(pin: 'apart' | 'shared'): { server: string; fio: string } {
  return { server: pin === 'apart' ? String(CORES - 1) : '0', fio: '0' };
}

function pinNote(pin: 'apart' | 'shared'): string {
  const { server, fio } = pinning(pin);
  return ` (server on core ${server}, fio on core ${fio}: \`taskset -a -p -c\`, \`--cpus_allowed\`)`;
}

/** Every thread of a server (and so whatever it starts after) on these cores. */
function pinThreads(pid: number, cores: string): void {
  must('taskset', ['-a', '-p', '-c', cores, String(pid)]);
}

type Key = `${string}|${string}`;
/** A row's fio result with the server's CPU (its whole process tree) per request, µs, and what it read from the disk per request, KiB (null: not on a block device). */
type Measured = FioResult & { serverUs: number; diskKiB: number | null };
const results = new Map<Key, Measured[]>();
let vblkPeakRss = 0;

async function measureServer(server: Server, direct: boolean, round: number): Promise<void> {
  const todo = rows.filter((r) => (r.direct ?? false) === direct);
  if (todo.length === 0 || (direct && !server.direct)) return;
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vblk-bench-'));
  const socket = path.join(work, 's.sock');
  // A direct row drops the image from the cache just before it runs (below).
  if (!direct) warm(IMAGE);
  const running = server.start(socket, direct, work);
  try {
    await waitForSocket(socket, running.proc);
    for (const row of todo) {
      if (direct) evict(IMAGE);
      else writeBack(IMAGE);
      const pid = running.pid()!;
      const cores = row.pin ? pinning(row.pin) : null;
      if (cores) pinThreads(pid, cores.server);
      const sectors = sectorsRead(IMAGE);
      const before = treeCpuUs(pid);
      const r = fio([
        `--name=${row.id}`, '--ioengine=nbd', `--uri=${running.uri}`, ...row.job,
        '--time_based', `--runtime=${SECONDS}`, '--percentile_list=99', ...(cores ? [`--cpus_allowed=${cores.fio}`] : []),
      ]);
      // Let per-connection children exit (and be reaped) so their CPU is counted.
      await new Promise((resolve) => setTimeout(resolve, 300));
      const serverUs = (treeCpuUs(pid) - before) / r.requests;
      if (cores) pinThreads(pid, ALL_CORES);
      const sectorsAfter = sectorsRead(IMAGE);
      const diskKiB = sectors === null || sectorsAfter === null ? null : (sectorsAfter - sectors) / 2 / r.requests;
      const key: Key = `${row.id}|${server.name}`;
      results.set(key, [...(results.get(key) ?? []), { ...r, serverUs, diskKiB }]);
      const value = row.unit === 'IOPS' ? `${Math.round(r.iops)} IOPS` : `${(r.bandwidth / 1e6).toFixed(0)} MB/s`;
      const p99 = row.p99 ? `, p99 ${r.p99Us.toFixed(0)} µs` : '';
      progress(`  round ${round}: ${server.name.padEnd(10)} row ${row.id.padEnd(3)} ${row.title.padEnd(38)} ${value}${p99}, server CPU ${serverUs.toFixed(1)} µs/request, fio CPU ${r.clientCpu.toFixed(0)}%`);
    }
    if (server.name === 'vblk') vblkPeakRss = Math.max(vblkPeakRss, peakRss(running.pid()!) ?? 0);
  } finally {
    await stop(running.proc);
    fs.rmSync(work, { recursive: true, force: true });
  }
}

/** A server vblk is compared with: not vblk, not a baseline. */
function isPeer(s: Server): boolean {
  return s.name !== 'vblk' && !s.baseline;
}

function value(row: Row, r: FioResult): number {
  return row.unit === 'IOPS' ? r.iops : r.bandwidth / 1e6;
}

function table(): { text: string; markdown: string } {
  const medianOf = (row: Row, server: Server): number | null => {
    const rs = results.get(`${row.id}|${server.name}`);
    return rs ? median(rs.map((r) => value(row, r))) : null;
  };
  const header = ['row', 'unit', ...servers.map((s) => s.name), 'vblk / best peer', 'goal', ''];
  const lines: string[][] = [];
  for (const row of rows) {
    const cells = servers.map((s) => medianOf(row, s));
    const vblk = cells[servers.findIndex((s) => s.name === 'vblk')] ?? null;
    const peers = servers.map((s, i) => (isPeer(s) ? cells[i] : null)).filter((c): c is number => c !== null);
    const best = peers.length ? Math.max(...peers) : null;
    const ratio = vblk !== null && best ? vblk / best : null;
    lines.push([
      `${row.id} ${row.title}`,
      row.unit,
      ...cells.map((c) => (c === null ? '-' : row.unit === 'IOPS' ? String(Math.round(c)) : c.toFixed(0))),
      ratio === null ? '-' : `${ratio.toFixed(2)}x`,
      row.goal === undefined ? '-' : `>= ${row.goal.toFixed(1)}x`,
      ratio === null || row.goal === undefined ? '' : ratio >= row.goal ? 'met' : 'NOT met',
    ]);
    if (row.p99) {
      const p99 = servers.map((s) => {
        const rs = results.get(`${row.id}|${s.name}`);
        return rs ? median(rs.map((r) => r.p99Us)) : null;
      });
      const v = p99[servers.findIndex((s) => s.name === 'vblk')] ?? null;
      const bestP99 = Math.min(...p99.filter((c, i): c is number => c !== null && isPeer(servers[i])));
      lines.push([
        `${row.id} p99 completion latency`,
        'µs',
        ...p99.map((c) => (c === null ? '-' : c.toFixed(0))),
        v !== null && Number.isFinite(bestP99) ? `${(v / bestP99).toFixed(2)}x` : '-',
        '<= 1.0x',
        v !== null && Number.isFinite(bestP99) ? (v <= bestP99 ? 'met' : 'NOT met') : '',
      ]);
    }
  }
  const floor = servers.findIndex((s) => s.baseline);
  const cpuHeader = ['row', ...servers.map((s) => s.name), 'vblk / best peer', ...(floor >= 0 ? [`vblk / ${servers[floor].name}`] : [])];
  const cpuLines = rows.map((row) => {
    const per = servers.map((s) => {
      const rs = results.get(`${row.id}|${s.name}`);
      return rs ? median(rs.map((r) => r.serverUs)) : null;
    });
    const vblk = per[servers.findIndex((s) => s.name === 'vblk')] ?? null;
    const peers = per.filter((c, i): c is number => c !== null && isPeer(servers[i]));
    const best = peers.length ? Math.min(...peers) : null;
    const floorUs = floor >= 0 ? per[floor] : null;
    return [
      `${row.id} ${row.title}`,
      ...servers.map((s, i) => {
        const rs = results.get(`${row.id}|${s.name}`);
        return rs ? `${per[i]!.toFixed(1)} / ${median(rs.map((r) => r.clientCpu)).toFixed(0)}%` : '-';
      }),
      vblk !== null && best ? `${(vblk / best).toFixed(2)}x` : '-',
      ...(floor >= 0 ? [vblk !== null && floorUs ? `${(vblk / floorUs).toFixed(2)}x` : '-'] : []),
    ];
  });
  const [main, cpu] = [render(header, lines, 2), render(cpuHeader, cpuLines, 1)];
  const disk = diskReads();
  return { text: `${main.text}\n\n${CPU_CAPTION}\n\n${cpu.text}${disk}`, markdown: `${main.markdown}\n\n${CPU_CAPTION}\n\n${cpu.markdown}${disk}` };
}

/** What each server read from the disk per request in the direct read rows: 4 KiB where a 4 KiB read bypassed the page cache. */
function diskReads(): string {
  const lines = rows
    .filter((row) => row.direct && row.job.includes('--rw=randread'))
    .map((row) => {
      const per = servers.flatMap((s) => {
        const kib = (results.get(`${row.id}|${s.name}`) ?? []).map((r) => r.diskKiB).filter((k): k is number => k !== null);
        return kib.length ? [`${s.name} ${median(kib).toFixed(1)}`] : [];
      });
      return per.length ? `row ${row.id}, KiB read from the disk per request (median): ${per.join(', ')}` : '';
    })
    .filter(Boolean);
  return lines.length ? `\n\n${lines.join('\n')}` : '';
}

const CPU_CAPTION =
  "CPU per request: the server's whole process tree (user + system, from /proc) divided by the requests fio completed, µs, and fio's own CPU " +
  '(percent of one core, all its jobs: near 100% the client, not the server, sets the pace). Then vblk against the cheapest peer and, where node-floor ran, against it.';

/** Caps the send buffer vblk asks for on its UNIX connections. */
function wmemMax(): string {
  try {
    return fs.readFileSync('/proc/sys/net/core/wmem_max', 'utf8').trim();
  } catch {
    return 'unknown';
  }
}

function machine(): string {
  const cpus = os.cpus();
  const versions = servers
    .filter(isPeer)
    .map((s) => {
      const args = s.name === 'nbd-server' ? ['-V'] : ['--version'];
      const r = must('sh', ['-c', `${s.program} ${args.join(' ')} 2>&1 | head -1`]).trim();
      return r;
    });
  return [
    `${cpus.length} cores (${cpus[0]?.model ?? 'unknown'}), ${Math.round(os.totalmem() / 2 ** 30)} GiB, Linux ${os.release()}, Node ${process.version}, net.core.wmem_max ${wmemMax()}`,
    `${must('fio', ['--version']).trim()}; ${versions.join('; ')}`,
  ].join('\n');
}

async function main(): Promise<void> {
  if (!have('fio')) throw new Error('fio is missing; install the fio package');
  for (const s of missing) progress(`${s.name}: not installed (${s.program} not found); left out`);
  if (!servers.some((s) => s.name === 'vblk')) usageError('vblk must be among the servers');
  randomFile(IMAGE, SIZE);
  const started = new Date();
  for (let round = 1; round <= ROUNDS; round++) {
    progress(`round ${round} of ${ROUNDS}`);
    // Rotate the order so no server always runs first (or just after another's writes).
    const order = servers.map((_, i) => servers[(i + round - 1) % servers.length]);
    for (const direct of [false, true]) for (const server of order) await measureServer(server, direct, round);
  }
  const { text, markdown } = table();
  const rss = `vblk peak RSS: ${(vblkPeakRss / 2 ** 20).toFixed(0)} MiB (goal < 200 MB)`;
  const about = `${machine()}\n${ROUNDS} round(s) of ${SECONDS} s per row and server, medians; image ${SIZE >> 20} MiB of random data, page cache warm and written back before each row (the direct rows: dropped from it)`;
  process.stdout.write(`\n${about}\n\n${text}\n\n${rss}\n${missing.length ? `missing: ${missing.map((s) => s.name).join(', ')}\n` : ''}`);
  if (values.results) {
    const commands = servers.flatMap((s) => [`    ${s.command(false)}`, ...(s.direct && rows.some((r) => r.direct) ? [`    ${s.command(true)}`] : [])]);
    const doc = [
      '# Benchmark results',
      '',
      `Run ${started.toISOString().slice(0, 16).replace('T', ' ')} UTC with \`node dist/bench/nbd.js${process.argv.slice(2).length ? ` ${process.argv.slice(2).join(' ')}` : ''}\`.`,
      '',
      ...about.split('\n').map((l) => `${l}  `),
      '',
      markdown,
      '',
      rss,
      '',
      'Servers (IMAGE is the raw image, SOCK a UNIX socket):',
      '',
      ...commands,
      '',
      `fio: \`fio --ioengine=nbd --uri=nbd+unix:///?socket=SOCK <row options> --time_based --runtime=${SECONDS} --percentile_list=99 --output-format=json --group_reporting\`, with these row options:`,
      '',
      ...rows.map((r) => `- row ${r.id}: \`${r.job.join(' ')}\`${r.direct ? ' (servers in their direct mode)' : ''}${r.pin ? pinNote(r.pin) : ''}`),
      '',
    ].join('\n');
    fs.writeFileSync(values.results, doc + handWritten(values.results));
    progress(`wrote ${values.results}`);
  }
}

/**
 * What follows the generated table in an existing results file (from its
 * first "## " or later "# " heading on): the notes and the other
 * benchmarks' sections, kept when the table is written again.
 */
function handWritten(file: string): string {
  let old: string;
  try {
    old = fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
  const at = old.search(/^#{1,2} (?!Benchmark results$)/m);
  return at < 0 ? '' : `\n${old.slice(at)}`;
}

await main();
