// bench/vhost-user: vblk's vhost-user-blk back end against
// qemu-storage-daemon's, on the same raw image in the page cache, driven
// by libblkio's blkio-bench (a client neither of us wrote; built by
// test/helpers/libblkio.ts), or with --driver ts by vblk's own TypeScript
// front end (bench/vhost-user-driver-load.ts, its own process). Rows: 4 KiB random reads and writes at depth
// 1 and 32, 1 MiB sequential reads and writes at depth 8, each with one
// and two queues (blkio-bench threads, one queue each). Each server is
// measured in turn per row, rounds alternate the order, and the table has
// medians of IOPS, GiB/s, mean latency and the server's CPU time per
// request (from /proc/PID/stat), which is the steadier figure on two
// shared cores where the client often sets the pace.

import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { libblkioTools } from '../test/helpers/libblkio.js';
import { cpuUs, median, must, progress, randomFile, stop, waitForSocket, warm, writeBack } from './lib.js';

const HELP = `Usage: node dist/bench/vhost-user.js [options]

blkio-bench (libblkio's virtio-blk-vhost-user driver) against vblk serve
--vhost-user-blk and qemu-storage-daemon --export type=vhost-user-blk on
the same raw image: 4K random read/write at QD1 and QD32, 1M sequential
read/write at QD8, with 1 and 2 queues. Prints medians, the ratio
vblk/qemu-storage-daemon and server CPU per request. Progress on stderr.

Options:
  --driver D    the client: blkio (libblkio's blkio-bench, default) or ts
                (test/helpers/vhost-user-driver.ts in its own process)
  --seconds N   runtime per measurement (default 5)
  --rounds N    rounds (default 3)
  --quick       one round of 2 s
  --size MB     image size in MiB (default 1024)
  --dir DIR     where the image goes (default: the system temp dir)
  --rows LIST   comma-separated row ids (default: all; see the table)
  -h, --help    show this help

Examples:
  npm run bench:vhost-user
  npm run bench:vhost-user -- --quick
  node dist/bench/vhost-user.js --rows r4k32q1,r4k32q2 --seconds 10
  node dist/bench/vhost-user.js --driver ts --rows r4k32q1 --quick
`;

interface Row {
  id: string;
  title: string;
  rw: 'randread' | 'randwrite' | 'read' | 'write';
  bs: number;
  depth: number;
  queues: number;
}

const ROWS: Row[] = [];
for (const queues of [1, 2]) {
  for (const [rw, short] of [['randread', 'r'], ['randwrite', 'w']] as const) {
    for (const depth of [1, 32]) ROWS.push({ id: `${short}4k${depth}q${queues}`, title: `4K ${rw} QD${depth} ${queues}q`, rw, bs: 4096, depth, queues });
  }
  for (const [rw, short] of [['read', 'sr'], ['write', 'sw']] as const) {
    ROWS.push({ id: `${short}1m8q${queues}`, title: `1M ${rw} QD8 ${queues}q`, rw, bs: 1 << 20, depth: 8, queues });
  }
}

interface Server {
  name: string;
  start(image: string, socket: string, queues: number): ChildProcess;
}

const VBLK = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

const SERVERS: Server[] = [
  {
    name: 'vblk',
    start: (image, socket, queues) =>
      spawn(process.execPath, [VBLK, 'serve', image, '--vhost-user-blk', socket, '--num-queues', String(queues), '--log-level', 'warn'], { stdio: 'inherit' }),
  },
  {
    name: 'qsd',
    start: (image, socket, queues) =>
      spawn(
        'qemu-storage-daemon',
        [
          '--blockdev', `driver=file,node-name=f,filename=${image}`,
          '--blockdev', 'driver=raw,node-name=r,file=f',
          '--export', `type=vhost-user-blk,id=e,node-name=r,addr.type=unix,addr.path=${socket},writable=on,num-queues=${queues}`,
        ],
        { stdio: 'inherit' },
      ),
  },
];

interface Measured {
  kiops: number;
  gibps: number;
  meanUs: number;
  /** Server CPU (user + system) per request, µs. */
  cpuUs: number;
}

const DRIVER_LOAD = fileURLToPath(new URL('./vhost-user-driver-load.js', import.meta.url));

/** The client's command line for a row: blkio-bench's or the TypeScript driver's (same options, same JSON). */
function client(driver: string, row: Row, socket: string, seconds: number): [string, string[]] {
  const common = [`--runtime=${seconds}`, `--iodepth=${row.depth}`, `--readwrite=${row.rw}`, `--blocksize=${row.bs}`];
  if (driver === 'ts') return [process.execPath, [DRIVER_LOAD, ...common, `--queues=${row.queues}`, `--socket=${socket}`]];
  return [libblkioTools()['blkio-bench'], [...common, `--num-threads=${row.queues}`, 'virtio-blk-vhost-user', `path=${socket}`]];
}

async function measure(server: Server, row: Row, image: string, dir: string, seconds: number, driver: string): Promise<Measured> {
  const socket = path.join(dir, `${server.name}.sock`);
  fs.rmSync(socket, { force: true });
  writeBack(image);
  const proc = server.start(image, socket, row.queues);
  try {
    await waitForSocket(socket, proc);
    const before = cpuUs(proc.pid!);
    const out = must(...client(driver, row, socket, seconds));
    const used = cpuUs(proc.pid!) - before;
    const agg = (JSON.parse(out) as { aggregate: { kiops: number; gips: number; mean_lat_us: number } }).aggregate;
    return { kiops: agg.kiops, gibps: agg.gips, meanUs: agg.mean_lat_us, cpuUs: used / (agg.kiops * 1000 * seconds) };
  } finally {
    await stop(proc as ChildProcess);
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      driver: { type: 'string' },
      seconds: { type: 'string' },
      rounds: { type: 'string' },
      quick: { type: 'boolean' },
      size: { type: 'string' },
      dir: { type: 'string' },
      rows: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return void process.stdout.write(HELP);
  const driver = values.driver ?? 'blkio';
  if (driver !== 'blkio' && driver !== 'ts') throw new Error(`--driver ${driver}: blkio or ts`);
  const seconds = values.quick ? 2 : Number(values.seconds ?? 5);
  const rounds = values.quick ? 1 : Number(values.rounds ?? 3);
  const rows = values.rows ? ROWS.filter((r) => values.rows!.split(',').includes(r.id)) : ROWS;
  if (rows.length === 0) throw new Error(`--rows: none of ${values.rows} (ids: ${ROWS.map((r) => r.id).join(', ')})`);
  const dir = values.dir ?? os.tmpdir();
  const image = path.join(dir, 'vblk-bench-vhost-user.raw');
  randomFile(image, Number(values.size ?? 1024) << 20);
  warm(image);
  progress(driver === 'ts' ? `client: ${DRIVER_LOAD}` : `blkio-bench: ${libblkioTools()['blkio-bench']}`);
  const results = new Map<string, Measured[]>();
  for (let round = 1; round <= rounds; round++) {
    for (const row of rows) {
      const order = round % 2 ? SERVERS : [...SERVERS].reverse();
      for (const server of order) {
        const m = await measure(server, row, image, dir, seconds, driver);
        const key = `${row.id}/${server.name}`;
        results.set(key, [...(results.get(key) ?? []), m]);
        progress(`  round ${round}: ${server.name.padEnd(5)} ${row.title.padEnd(22)} ${m.kiops.toFixed(1)}k IOPS ${m.gibps.toFixed(2)} GiB/s ${m.meanUs.toFixed(0)} µs, CPU ${m.cpuUs.toFixed(1)} µs/req`);
      }
    }
  }
  const med = (key: string, f: (m: Measured) => number): number => median(results.get(key)!.map(f));
  const lines = ['| row | vblk kIOPS | qsd kIOPS | ratio | vblk GiB/s | qsd GiB/s | vblk mean µs | qsd mean µs | vblk CPU µs/req | qsd CPU µs/req |', '|---|---|---|---|---|---|---|---|---|---|'];
  for (const row of rows) {
    const [v, q] = SERVERS.map((s) => `${row.id}/${s.name}`);
    const vk = med(v, (m) => m.kiops);
    const qk = med(q, (m) => m.kiops);
    lines.push(
      `| ${row.title} (${row.id}) | ${vk.toFixed(1)} | ${qk.toFixed(1)} | ${(vk / qk).toFixed(2)}x | ${med(v, (m) => m.gibps).toFixed(2)} | ${med(q, (m) => m.gibps).toFixed(2)} | ${med(v, (m) => m.meanUs).toFixed(0)} | ${med(q, (m) => m.meanUs).toFixed(0)} | ${med(v, (m) => m.cpuUs).toFixed(1)} | ${med(q, (m) => m.cpuUs).toFixed(1)} |`,
    );
  }
  const cpus = os.cpus();
  process.stdout.write(`${rounds} round(s) of ${seconds} s, medians; ${cpus.length} cores (${cpus[0]?.model ?? '?'}), Linux ${os.release()}, Node ${process.version}\n\n${lines.join('\n')}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench:vhost-user: ${(err as Error).message}\n`);
  process.exit(1);
});
