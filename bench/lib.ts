// What the benchmarks share: running commands, a file of random data in
// the page cache, servers started and stopped on a UNIX socket, fio runs
// read back from its JSON, medians, tables as text and Markdown.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

export function progress(text: string): void {
  process.stderr.write(`${text}\n`);
}

/** A mistake on a bench's command line: one line, exit 2. */
export function usageError(text: string): never {
  process.stderr.write(`bench: ${text}; see --help\n`);
  process.exit(2);
}

export function must(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.error?.message ?? r.status ?? r.signal}): ${r.stderr}`);
  return r.stdout;
}

/** Whether a command is on PATH. */
export function have(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** A file of `size` random bytes at `file`, kept between runs when it is already there. */
export function randomFile(file: string, size: number): void {
  if (fs.existsSync(file) && fs.statSync(file).size === size) return;
  progress(`writing ${size >> 20} MiB of random data to ${file}`);
  const fd = fs.openSync(`${file}.tmp`, 'w');
  const chunk = Buffer.alloc(8 << 20);
  for (let off = 0; off < size; off += chunk.length) {
    for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE((Math.random() * 2 ** 32) >>> 0, i);
    fs.writeSync(fd, chunk, 0, Math.min(chunk.length, size - off), off);
  }
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  fs.renameSync(`${file}.tmp`, file);
}

/** Reads a whole file so that its pages are in the page cache. */
export function warm(file: string): void {
  const fd = fs.openSync(file, 'r');
  const chunk = Buffer.alloc(8 << 20);
  const size = fs.fstatSync(fd).size;
  for (let off = 0; off < size; off += chunk.length) fs.readSync(fd, chunk, 0, chunk.length, off);
  fs.closeSync(fd);
}

/**
 * Writes the file's dirty pages back and waits for them, so that a
 * measurement starts from a clean page cache: writes into pages still
 * under writeback from an earlier row wait for the disk (4 KiB random
 * writes here: about 25k IOPS right after the sequential writes of row 4,
 * 150k from a clean cache, for every server alike).
 */
export function writeBack(file: string): void {
  const fd = fs.openSync(file, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Writes the file back and drops its pages from the page cache (GNU dd's
 * iflag=nocache with count=0 advises the kernel to drop the whole file),
 * so that a "no page cache" row starts with nothing of the image cached:
 * a server that reads through the cache (nbdkit's cache=none does) then
 * reads from the disk like the ones that bypass it.
 */
export function evict(file: string): void {
  writeBack(file);
  must('dd', [`if=${file}`, 'iflag=nocache', 'count=0', 'status=none']);
}

/**
 * Sectors (512 bytes) read so far from the block device that holds the
 * file (/sys/dev/block/MAJ:MIN/stat), or null where it is not on one
 * (tmpfs, overlay).
 */
export function sectorsRead(file: string): number | null {
  const dev = fs.statSync(file).dev;
  const major = (dev >> 8) & 0xfff;
  const minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
  try {
    return Number(fs.readFileSync(`/sys/dev/block/${major}:${minor}/stat`, 'utf8').trim().split(/\s+/)[2]);
  } catch {
    return null;
  }
}

export async function waitForSocket(socket: string, proc: ChildProcess): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (!fs.existsSync(socket)) {
    if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`server exited (${proc.exitCode ?? proc.signalCode}) before listening`);
    if (Date.now() > deadline) throw new Error(`no socket at ${socket} after 15 s`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** SIGTERM, then SIGKILL after 15 s; resolves when the process is gone. */
export async function stop(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGTERM');
  const timer = setTimeout(() => proc.kill('SIGKILL'), 15_000);
  await exited;
  clearTimeout(timer);
}

const TICK_US = 1e6 / Number(must('getconf', ['CLK_TCK']).trim());

/** CPU (user + system) a live process has used so far, µs (from /proc/PID/stat). */
export function cpuUs(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) * TICK_US;
}

/**
 * CPU (user + system) a process and all its descendants have used so far,
 * µs: each live one's own and its reaped children's (cutime, cstime), so
 * a server that forks per connection (nbd-server) is counted whole, and a
 * child that exits between two readings moves from the live sum into its
 * parent's, as long as the parent reaps it.
 */
export function treeCpuUs(pid: number): number {
  const children = new Map<number, number[]>();
  const own = new Map<number, number>();
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue; // gone meanwhile
    }
    const fields = stat.split(') ')[1].split(' ');
    const p = Number(entry);
    const parent = Number(fields[1]);
    own.set(p, (Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])) * TICK_US);
    children.set(parent, [...(children.get(parent) ?? []), p]);
  }
  const sum = (p: number): number => (own.get(p) ?? 0) + (children.get(p) ?? []).reduce((n, c) => n + sum(c), 0);
  return sum(pid);
}

/** Peak resident set of a live process in bytes (VmHWM), or null where /proc does not say. */
export function peakRss(pid: number): number | null {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

export interface FioResult {
  iops: number;
  /** Bytes per second. */
  bandwidth: number;
  /** Mean and 99th percentile completion latency, µs. */
  meanUs: number;
  p99Us: number;
  /** CPU fio itself used, in percent of one core (all its jobs together). */
  clientCpu: number;
  /** Requests completed. */
  requests: number;
}

/** fio's arguments for one run: `args` with JSON output of one group. */
function fioCommand(args: string[]): string[] {
  return [...args, '--output-format=json', '--group_reporting'];
}

/** Runs fio with `args` (plus JSON output) and sums the reads and writes of its one reported group. */
export function fio(args: string[], env: NodeJS.ProcessEnv = process.env): FioResult {
  const full = fioCommand(args);
  const r = spawnSync('fio', full, { encoding: 'utf8', maxBuffer: 64 << 20, env });
  if (r.status !== 0) throw new Error(`fio ${full.join(' ')} failed: ${r.stderr}${r.stdout.slice(0, 300)}`);
  return fioResult(args, r.stdout);
}

/** fio as fio(), in the background under `prefix` (taskset -c N, say), so that several run at once. */
export function fioAsync(args: string[], prefix: string[] = []): Promise<FioResult> {
  const full = fioCommand(args);
  const [cmd, ...rest] = [...prefix, 'fio', ...full];
  return new Promise((resolve, reject) => {
    const child = spawn(cmd!, rest, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) reject(new Error(`${[cmd, ...rest].join(' ')} failed: ${stderr}${stdout.slice(0, 300)}`));
      else {
        try {
          resolve(fioResult(args, stdout));
        } catch (err) {
          reject(err);
        }
      }
    });
  });
}

function fioResult(args: string[], stdout: string): FioResult {
  // The nbd engine prints "fio: connected to NBD server" lines before the JSON.
  const json = JSON.parse(stdout.slice(stdout.indexOf('{\n')));
  const job = json.jobs[0];
  if (job.error) throw new Error(`fio reported error ${job.error}`);
  const sides = [job.read, job.write].filter((s) => s.io_bytes > 0);
  // With --group_reporting, fio reports the CPU use of one job, averaged.
  const jobs = Number(/^--numjobs=(\d+)$/.exec(args.find((a) => a.startsWith('--numjobs=')) ?? '')?.[1] ?? 1);
  const ios = sides.reduce((n, s) => n + s.total_ios, 0) || 1;
  return {
    iops: sides.reduce((n, s) => n + s.iops, 0),
    bandwidth: sides.reduce((n, s) => n + s.bw_bytes, 0),
    meanUs: sides.reduce((n, s) => n + (s.clat_ns.mean * s.total_ios) / 1000, 0) / ios,
    p99Us: Math.max(...sides.map((s) => (s.clat_ns.percentile?.['99.000000'] ?? 0) / 1000)),
    clientCpu: (job.usr_cpu + job.sys_cpu) * jobs,
    requests: ios,
  };
}

/** A table as aligned text and as Markdown; the first `labels` columns are left-aligned. */
export function render(header: string[], lines: string[][], labels: number): { text: string; markdown: string } {
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  const pad = (cells: string[]): string => cells.map((c, i) => (i < labels ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  const text = [pad(header), ...lines.map(pad)].join('\n');
  const rule = `|${header.map((_, i) => (i < labels ? '---' : '---:')).join('|')}|`;
  const markdown = [`| ${header.join(' | ')} |`, rule, ...lines.map((l) => `| ${l.join(' | ')} |`)].join('\n');
  return { text, markdown };
}

type OptionSpec = { type: 'string' } | { type: 'boolean'; short?: string };
/** What parseArgs gives for such options: a string or a boolean each, when given. */
type OptionValues<O> = { [K in keyof O]?: O[K] extends { type: 'boolean' } ? boolean : string };

/** The options of the benches over npm run bench's image: run length, image size and place, results file, help. */
const IMAGE_BENCH_OPTIONS = {
  seconds: { type: 'string' },
  rounds: { type: 'string' },
  quick: { type: 'boolean' },
  size: { type: 'string' },
  dir: { type: 'string' },
  results: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

/**
 * Parses a bench's command line: the shared options above and its own.
 * Prints `help` and exits on --help; a bad number is a usage error. The
 * image is npm run bench's random raw file (kept and reused).
 */
export function imageBenchArgs<O extends Record<string, OptionSpec>>(
  help: string,
  own: O,
): { values: OptionValues<typeof IMAGE_BENCH_OPTIONS & O>; seconds: number; rounds: number; size: number; image: string } {
  const values = parseArgs({ options: { ...IMAGE_BENCH_OPTIONS, ...own } }).values as OptionValues<typeof IMAGE_BENCH_OPTIONS & O>;
  const common = values as OptionValues<typeof IMAGE_BENCH_OPTIONS>;
  if (common.help) {
    process.stdout.write(help);
    process.exit(0);
  }
  const seconds = Number(common.seconds ?? (common.quick ? 2 : 5));
  const rounds = common.quick ? 1 : Number(common.rounds ?? 3);
  const size = Number(common.size ?? 1024) * 2 ** 20;
  for (const [name, n] of [['--seconds', seconds], ['--rounds', rounds], ['--size', size]] as const) {
    if (!(n > 0)) usageError(`${name} must be a positive number`);
  }
  const image = path.join(common.dir ?? os.tmpdir(), `vblk-bench-nbd-${size >> 20}M.raw`);
  return { values, seconds, rounds, size, image };
}
