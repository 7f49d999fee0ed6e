// bench/rbd: vblk against qemu-nbd and qemu-storage-daemon serving the
// same Ceph RBD image over NBD on a UNIX socket, measured by fio's nbd
// engine. All three reach the cluster through librbd, with librbd's
// cache settings as they come: vblk leaves them alone, qemu-nbd runs with
// its default --cache=writeback and qemu-storage-daemon with its default
// cache.direct=off, which both make QEMU's rbd driver set rbd_cache=true,
// librbd's own default (seen by hand through the admin sockets of a vblk
// and a qemu-nbd: rbd_cache=true, rbd_cache_policy=writearound; qemu-nbd
// --cache=none would turn librbd's cache off, which vblk cannot).
// qemu-nbd's --aio picks how file-posix does I/O and means nothing to the
// rbd driver, which always uses librbd's aio, so it is not passed.
//
// The image is made for the run, prefilled with `rbd bench` writes
// (every object allocated, so reads reach data rather than holes), and
// removed at the end. A writable image is served holding RBD's exclusive
// lock, which vblk hands to nobody, so the servers run strictly one after
// another, each started and stopped within its turn. Server CPU per
// request is utime + stime from /proc over each row; the OSDs' CPU is
// taken the same way where their pid files are on this machine, since on
// a one-machine cluster the OSD shares the cores with server and client.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { parseSize } from '../src/cli/size.js';
import { cpuUs, fio, have, median, must, progress, render, stop, usageError, waitForSocket } from './lib.js';

const HELP = `Usage: node dist/bench/rbd.js [options]

Serves one Ceph RBD image over NBD (UNIX socket) with vblk, qemu-nbd and
qemu-storage-daemon in turn (never two at once: the image's exclusive lock
allows one writer) and runs fio's nbd engine against each: 4K random read
and write at 32 in flight, 1M sequential read and write at 8 in flight.
Prints IOPS or MB/s, vblk's ratio to each peer, and CPU per request of the
server and of the cluster's OSDs (utime + stime from /proc; the OSDs only
where their pid files are on this machine), medians of rounds that rotate
the servers' order. The image (bench-rbd-PID in the pool) is created,
prefilled with 'rbd bench' writes so that reads reach allocated objects,
and removed at the end. Needs fio, rbd, qemu-nbd and qemu-storage-daemon
(QEMU's rbd driver: qemu-block-extra on Debian). Progress goes to stderr,
the table (or JSON) to stdout.

Options:
  --ceph-conf FILE  the cluster's ceph.conf (its keyring must allow creating
                    and removing images in the pool). Without it, a
                    throwaway one-OSD cluster is started with
                    test/ceph/cluster.sh in a temporary directory and
                    stopped and removed at the end
  --pool NAME       pool for the image (default rbd)
  --size SIZE       image size, a whole number of MiB (default 1G)
  --runtime SEC     fio runtime per row and server (default 10)
  --rounds N        rounds, the median is reported (default 3)
  --json            print the results as JSON instead of the table
  -h, --help        show this help

Examples:
  npm run bench:rbd
  npm run bench:rbd -- --ceph-conf /etc/ceph/ceph.conf --pool bench
  node dist/bench/rbd.js --ceph-conf /tmp/c1/ceph.conf --runtime 3 --rounds 1
  node dist/bench/rbd.js --size 4G --rounds 5 --json > rbd.json
`;

const { values } = (() => {
  try {
    return parseArgs({
      options: {
        'ceph-conf': { type: 'string' },
        pool: { type: 'string' },
        size: { type: 'string' },
        runtime: { type: 'string' },
        rounds: { type: 'string' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    return usageError((err as Error).message);
  }
})();
if (values.help) {
  process.stdout.write(HELP);
  process.exit(0);
}

const POOL = values.pool ?? 'rbd';
const SIZE = (() => {
  try {
    return parseSize(values.size ?? '1G');
  } catch (err) {
    return usageError(`--size: ${(err as Error).message}`);
  }
})();
const RUNTIME = Number(values.runtime ?? 10);
const ROUNDS = Number(values.rounds ?? 3);
if (!(SIZE >= 2 ** 20) || SIZE % 2 ** 20 !== 0) usageError('--size must be a whole number of MiB, at least 1M');
if (!(Number.isInteger(RUNTIME) && RUNTIME > 0)) usageError('--runtime must be a whole number of seconds, at least 1');
if (!(Number.isInteger(ROUNDS) && ROUNDS > 0)) usageError('--rounds must be a positive whole number');
if (!/^[A-Za-z0-9_.-]+$/.test(POOL)) usageError(`--pool '${POOL}' is not a plain pool name`);
// QEMU's rbd: filenames and -blockdev options split on ':' and ','.
if (values['ceph-conf'] !== undefined && /[:,]/.test(values['ceph-conf'])) usageError("--ceph-conf: a path with ':' or ',' cannot be passed to QEMU");
const CLUSTER_SCRIPT = fileURLToPath(new URL('../../test/ceph/cluster.sh', import.meta.url));
if (values['ceph-conf'] === undefined && !fs.existsSync(CLUSTER_SCRIPT)) {
  usageError(`no --ceph-conf, and no ${path.relative(process.cwd(), CLUSTER_SCRIPT)} to start a throwaway cluster with: pass --ceph-conf FILE`);
}
if (values['ceph-conf'] !== undefined && !fs.existsSync(values['ceph-conf'])) usageError(`--ceph-conf: no file ${values['ceph-conf']}`);
for (const tool of ['fio', 'rbd', 'qemu-nbd', 'qemu-storage-daemon']) if (!have(tool)) usageError(`${tool} is not installed`);

const IMAGE = `bench-rbd-${process.pid}`;
const VBLK = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

interface Row {
  id: string;
  title: string;
  job: string[];
  unit: 'IOPS' | 'MB/s';
}

const ROWS: Row[] = [
  { id: 'randread', title: 'random read 4K, QD32', job: ['--rw=randread', '--bs=4k', '--iodepth=32'], unit: 'IOPS' },
  { id: 'randwrite', title: 'random write 4K, QD32', job: ['--rw=randwrite', '--bs=4k', '--iodepth=32'], unit: 'IOPS' },
  { id: 'read', title: 'sequential read 1M, QD8', job: ['--rw=read', '--bs=1m', '--iodepth=8'], unit: 'MB/s' },
  { id: 'write', title: 'sequential write 1M, QD8', job: ['--rw=write', '--bs=1m', '--iodepth=8'], unit: 'MB/s' },
];

interface Server {
  name: string;
  /** The command line; SOCK stands for the socket, CONF for ceph.conf. */
  args: string[];
  program: string;
  /** The export's name in the NBD URI. */
  exportName: string;
}

const SERVERS: Server[] = [
  {
    name: 'vblk',
    program: 'vblk',
    args: ['serve', `rbd:${POOL}/${IMAGE}`, '--ceph-conf', 'CONF', '--socket', 'SOCK', '--log-level', 'warn'],
    exportName: '',
  },
  {
    name: 'qemu-nbd',
    program: 'qemu-nbd',
    args: ['-f', 'raw', '-t', '-k', 'SOCK', `rbd:${POOL}/${IMAGE}:conf=CONF`],
    exportName: '',
  },
  {
    name: 'qsd',
    program: 'qemu-storage-daemon',
    args: [
      '--blockdev', `driver=rbd,pool=${POOL},image=${IMAGE},conf=CONF,node-name=disk`,
      '--nbd-server', 'addr.type=unix,addr.path=SOCK',
      '--export', 'type=nbd,id=export,node-name=disk,name=disk,writable=on',
    ],
    exportName: 'disk',
  },
];

interface Sample {
  /** IOPS or MB/s, as the row's unit says. */
  rate: number;
  serverUsPerRequest: number;
  /** The OSDs' CPU per request, µs; null where their processes are not on this machine. */
  osdUsPerRequest: number | null;
  /** fio's own CPU, percent of one core. */
  fioCpu: number;
}

const samples = new Map<string, Sample[]>();

/** What main() undoes at the end, last first: the image, then the cluster. */
const cleanups: { what: string; run: () => void }[] = [];

// A signal stops the run between rows (fio's own SIGINT from a terminal
// ends the row early), so that the server stops and the image goes.
let interrupted: string | null = null;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    interrupted = signal;
    progress(`${signal}: stopping after this row, then removing the image`);
  });
}

/** Lets a pending signal's handler run; throws once one has. */
async function checkInterrupted(): Promise<void> {
  await new Promise((resolve) => setImmediate(resolve));
  if (interrupted) throw new Error(`interrupted by ${interrupted}`);
}

/** The cluster's ceph.conf: --ceph-conf, or a throwaway cluster started here. */
function cluster(): string {
  if (values['ceph-conf'] !== undefined) return path.resolve(values['ceph-conf']);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vblk-bench-rbd-ceph-'));
  cleanups.push({
    what: `stop the cluster in ${dir}`,
    run: () => {
      progress(`stopping the throwaway cluster in ${dir}`);
      const r = spawnSync('bash', [CLUSTER_SCRIPT, 'stop', dir], { stdio: ['ignore', 2, 2] });
      if (r.status !== 0) throw new Error(`cluster.sh stop exited with ${r.status ?? r.signal}; ${dir} is left behind`);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  });
  progress(`starting a throwaway cluster in ${dir} (test/ceph/cluster.sh)`);
  const r = spawnSync('bash', [CLUSTER_SCRIPT, 'start', dir], { stdio: ['ignore', 2, 2] });
  if (r.status !== 0) throw new Error(`test/ceph/cluster.sh start ${dir} exited with ${r.status ?? r.signal}`);
  return path.join(dir, 'ceph.conf');
}

/** The pids of the cluster's OSDs that run on this machine (from their pid files), for their CPU use. */
function osdPids(conf: string): number[] {
  if (!have('ceph') || !have('ceph-conf')) return [];
  const ls = spawnSync('ceph', ['-c', conf, '--connect-timeout', '10', 'osd', 'ls'], { encoding: 'utf8' });
  if (ls.status !== 0) return [];
  return ls.stdout.split('\n').filter(Boolean).flatMap((id) => {
    const lookup = spawnSync('ceph-conf', ['-c', conf, '--name', `osd.${id}`, '--lookup', 'pid_file'], { encoding: 'utf8' });
    try {
      const pid = Number(fs.readFileSync(lookup.stdout.trim(), 'utf8').trim());
      return Number.isInteger(pid) && pid > 0 && fs.existsSync(`/proc/${pid}/stat`) ? [pid] : [];
    } catch {
      return [];
    }
  });
}

function prefill(conf: string): void {
  progress(`creating ${POOL}/${IMAGE} (${SIZE >> 20} MiB) and prefilling it with rbd bench (4M sequential writes)`);
  must('rbd', ['-c', conf, 'create', `${POOL}/${IMAGE}`, '--size', `${SIZE >> 20}M`]);
  cleanups.push({
    what: `remove ${POOL}/${IMAGE} (rbd -c ${conf} rm ${POOL}/${IMAGE})`,
    run: () => removeImage(conf),
  });
  must('rbd', ['-c', conf, 'bench', '--io-type', 'write', '--io-size', '4M', '--io-threads', '8', '--io-pattern', 'seq', '--io-total', String(SIZE), `${POOL}/${IMAGE}`]);
  const du = must('rbd', ['-c', conf, 'du', '--format', 'json', `${POOL}/${IMAGE}`]);
  const used = (JSON.parse(du) as { images: { used_size: number }[] }).images[0]?.used_size;
  if (used !== SIZE) throw new Error(`after the prefill ${POOL}/${IMAGE} has ${used} bytes allocated, not ${SIZE}`);
}

/**
 * Removes the image, waiting out a watch left by a server that exited
 * (seen once with qemu-nbd stopped right after it opened the image): the
 * OSD drops such a watch after 30 s.
 */
function removeImage(conf: string): void {
  progress(`removing ${POOL}/${IMAGE}`);
  const deadline = Date.now() + 60_000;
  for (;;) {
    const r = spawnSync('rbd', ['-c', conf, 'rm', '--no-progress', `${POOL}/${IMAGE}`], { encoding: 'utf8' });
    if (r.status === 0) return;
    if (r.status !== 16 || Date.now() > deadline) throw new Error(`rbd rm failed (${r.status ?? r.signal}): ${r.stderr.trim()}`);
    progress(`  ${POOL}/${IMAGE} still has a watcher; trying again in 5 s`);
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5000);
  }
}

const commandLine = (server: Server, conf: string, socket: string): string[] =>
  server.args.map((a) => a.replaceAll('SOCK', socket).replaceAll('CONF', conf));

async function measure(server: Server, conf: string, osds: number[], round: number): Promise<void> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vblk-bench-rbd-'));
  const socket = path.join(work, 's.sock');
  const args = commandLine(server, conf, socket);
  const proc: ChildProcess =
    server.name === 'vblk'
      ? spawn(process.execPath, [VBLK, ...args], { stdio: ['ignore', 'ignore', 'inherit'] })
      : spawn(server.program, args, { stdio: ['ignore', 'ignore', 'inherit'] });
  const osdCpu = (): number => osds.reduce((n, pid) => n + cpuUs(pid), 0);
  try {
    await waitForSocket(socket, proc);
    const uri = `nbd+unix:///${server.exportName}?socket=${socket}`;
    for (const row of ROWS) {
      await checkInterrupted();
      const [serverBefore, osdBefore] = [cpuUs(proc.pid!), osdCpu()];
      const r = fio([`--name=${row.id}`, '--ioengine=nbd', `--uri=${uri}`, ...row.job, '--time_based', `--runtime=${RUNTIME}`]);
      const sample: Sample = {
        rate: row.unit === 'IOPS' ? r.iops : r.bandwidth / 1e6,
        serverUsPerRequest: (cpuUs(proc.pid!) - serverBefore) / r.requests,
        osdUsPerRequest: osds.length ? (osdCpu() - osdBefore) / r.requests : null,
        fioCpu: r.clientCpu,
      };
      const key = `${row.id}|${server.name}`;
      samples.set(key, [...(samples.get(key) ?? []), sample]);
      progress(
        `  round ${round}: ${server.name.padEnd(8)} ${row.title.padEnd(25)} ${Math.round(sample.rate)} ${row.unit}, ` +
          `CPU/request: server ${sample.serverUsPerRequest.toFixed(1)} µs` +
          `${sample.osdUsPerRequest === null ? '' : `, OSD ${sample.osdUsPerRequest.toFixed(1)} µs`}; fio CPU ${sample.fioCpu.toFixed(0)}%`,
      );
    }
  } finally {
    // Stopped before the next server starts: it holds the image's exclusive lock.
    await stop(proc);
    fs.rmSync(work, { recursive: true, force: true });
  }
}

interface Summary {
  row: Row;
  /** Medians per server. */
  servers: Record<string, { rate: number; serverUsPerRequest: number; osdUsPerRequest: number | null; fioCpu: number }>;
  /** vblk's rate over each peer's. */
  ratios: Record<string, number>;
}

function summarize(): Summary[] {
  return ROWS.map((row) => {
    const servers: Summary['servers'] = {};
    for (const s of SERVERS) {
      const xs = samples.get(`${row.id}|${s.name}`) ?? [];
      const osd = xs.map((x) => x.osdUsPerRequest).filter((x): x is number => x !== null);
      servers[s.name] = {
        rate: median(xs.map((x) => x.rate)),
        serverUsPerRequest: median(xs.map((x) => x.serverUsPerRequest)),
        osdUsPerRequest: osd.length ? median(osd) : null,
        fioCpu: median(xs.map((x) => x.fioCpu)),
      };
    }
    const ratios = Object.fromEntries(SERVERS.slice(1).map((s) => [s.name, servers.vblk.rate / servers[s.name].rate]));
    return { row, servers, ratios };
  });
}

function firstLine(cmd: string, args: string[]): string {
  return must(cmd, args).split('\n')[0].trim();
}

function about(conf: string, throwaway: boolean): string[] {
  const cpus = os.cpus();
  return [
    `RBD image ${POOL}/${IMAGE}, ${SIZE >> 20} MiB, prefilled (rbd bench, 4M sequential writes; every object allocated); ` +
      `cluster ${throwaway ? 'started by test/ceph/cluster.sh for the run' : `from ${conf}`}`,
    `${ROUNDS} round${ROUNDS === 1 ? '' : 's'} of ${RUNTIME} s per row and server, servers one at a time in rotating order, medians`,
    `${cpus.length} cores (${cpus[0]?.model ?? 'unknown'}), ${Math.round(os.totalmem() / 2 ** 30)} GiB, Linux ${os.release()}, Node ${process.version}`,
    `${firstLine('fio', ['--version'])}; ${firstLine('qemu-nbd', ['--version'])}; ${firstLine('rbd', ['--version'])}`,
  ];
}

function report(summary: Summary[], lines: string[]): string {
  const peers = SERVERS.slice(1).map((s) => s.name);
  const rates = render(
    ['row', 'unit', ...SERVERS.map((s) => s.name), ...peers.map((p) => `vblk / ${p}`)],
    summary.map(({ row, servers, ratios }) => [
      row.title,
      row.unit,
      ...SERVERS.map((s) => (row.unit === 'IOPS' ? String(Math.round(servers[s.name].rate)) : servers[s.name].rate.toFixed(0))),
      ...peers.map((p) => `${ratios[p].toFixed(2)}x`),
    ]),
    2,
  );
  const cpu = render(
    ['row', ...SERVERS.map((s) => s.name)],
    summary.map(({ row, servers }) => [
      row.title,
      ...SERVERS.map((s) => {
        const x = servers[s.name];
        return `${x.serverUsPerRequest.toFixed(1)} / ${x.osdUsPerRequest === null ? '-' : x.osdUsPerRequest.toFixed(0)} / ${x.fioCpu.toFixed(0)}%`;
      }),
    ]),
    1,
  );
  return [
    ...lines,
    '',
    rates.text,
    '',
    'CPU per request, µs: server / OSDs (user + system from /proc), and fio\'s own CPU in percent of one core:',
    '',
    cpu.text,
    '',
  ].join('\n');
}

async function main(): Promise<void> {
  try {
    const conf = cluster();
    const osds = osdPids(conf);
    progress(osds.length ? `OSD processes here: ${osds.join(', ')}` : 'no OSD process found on this machine: OSD CPU is left out');
    prefill(conf);
    for (let round = 1; round <= ROUNDS; round++) {
      progress(`round ${round} of ${ROUNDS}`);
      const order = SERVERS.map((_, i) => SERVERS[(i + round - 1) % SERVERS.length]);
      for (const server of order) {
        await checkInterrupted();
        await measure(server, conf, osds, round);
      }
    }
    const summary = summarize();
    const lines = about(conf, values['ceph-conf'] === undefined);
    if (values.json) {
      const servers = Object.fromEntries(SERVERS.map((s) => [s.name, `${s.program} ${s.args.join(' ')}`]));
      const rows = summary.map(({ row, servers: medians, ratios }) => ({ row: row.id, title: row.title, unit: row.unit, medians, ratios, samples: Object.fromEntries(SERVERS.map((s) => [s.name, samples.get(`${row.id}|${s.name}`)])) }));
      process.stdout.write(`${JSON.stringify({ about: lines, servers, rows }, null, 2)}\n`);
    } else {
      process.stdout.write(report(summary, lines));
    }
  } finally {
    for (let c = cleanups.pop(); c; c = cleanups.pop()) {
      try {
        c.run();
      } catch (err) {
        progress(`could not ${c.what}: ${(err as Error).message}`);
      }
    }
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
