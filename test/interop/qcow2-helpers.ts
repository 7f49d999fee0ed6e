// Shared by the qcow2-*.test.ts interop files: QEMU's tools run against
// images vblk made or served, a seeded generator of NBD workloads that
// nbdsh replays (and that the tests replay on a raw reference copy), and
// qemu-nbd as the reference peer for what a server should report.

import { prng } from '../../src/device/seeded-random.js';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Test } from 'tap';
import type { MapEntry } from '../../src/device/images/map.js';
import { run, TOOL_ENV, type RunResult } from '../helpers/tools.js';

export const KiB = 1024;
export const MiB = 1 << 20;

export function out(r: RunResult): { stdout: string; stderr: string } {
  return { stdout: r.stdout, stderr: r.stderr };
}

/** Runs a tool and fails the test (with its output) unless it exits 0. */
export async function must(t: Test, cmd: string, args: string[]): Promise<RunResult> {
  const r = await run(cmd, args);
  t.equal(r.code, 0, `${cmd} ${args.join(' ')}`, out(r));
  return r;
}

/**
 * `qemu-img check` on every image vblk wrote: exit 0 means no corruption
 * and no leaked cluster. The JSON form is checked too, so that a check
 * that found nothing to check (a raw file) cannot pass for a clean qcow2.
 */
export async function qemuCheck(t: Test, files: string[]): Promise<void> {
  for (const file of files) {
    const r = await run('qemu-img', ['check', '--output=json', file]);
    t.equal(r.code, 0, `qemu-img check ${path.basename(file)} exits 0`, out(r));
    if (r.code !== 0 && r.code !== 2 && r.code !== 3) continue;
    const report = JSON.parse(r.stdout) as { format: string; corruptions?: number; leaks?: number; 'check-errors': number };
    t.equal(report.format, 'qcow2', `${path.basename(file)} is checked as qcow2`);
    t.equal(report.corruptions ?? 0, 0, `${path.basename(file)}: no corruptions`);
    t.equal(report.leaks ?? 0, 0, `${path.basename(file)}: no leaked clusters`);
  }
}

export function sha256(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/** `qemu-img compare` (never -s) between two images; returns its exit code and output. */
export function compare(a: { file: string; format: string }, b: { file: string; format: string }): Promise<RunResult> {
  return run('qemu-img', ['compare', '-f', a.format, '-F', b.format, a.file, b.file]);
}

export async function identical(t: Test, a: { file: string; format: string }, b: { file: string; format: string }, what: string): Promise<void> {
  const r = await compare(a, b);
  t.equal(r.code, 0, `${what}: qemu-img compare exits 0`, out(r));
  t.match(r.stdout, /Images are identical/, `${what}: images are identical`);
}

/** qemu-io commands (pattern, offset, length) checked with read -P; true when every one verifies. */
export async function qemuReads(file: string, format: string, expected: [number, number, number][]): Promise<RunResult & { ok: boolean }> {
  const args = ['-r', '-f', format];
  for (const [p, o, l] of expected) args.push('-c', `read -P ${p} ${o} ${l}`);
  const r = await run('qemu-io', [...args, file]);
  return { ...r, ok: r.code === 0 && !/verification failed|Pattern verification/i.test(r.stdout + r.stderr) };
}

export async function qemuIo(t: Test, file: string, format: string, commands: string[]): Promise<RunResult> {
  const args = ['-f', format];
  for (const c of commands) args.push('-c', c);
  return must(t, 'qemu-io', [...args, file]);
}

/** Reads a whole file as QEMU sees the image: qemu-img convert -O raw. */
export async function qemuRaw(t: Test, file: string, format: string, dest: string): Promise<Buffer> {
  await must(t, 'qemu-img', ['convert', '-f', format, '-O', 'raw', file, dest]);
  return fs.readFileSync(dest);
}

// --- a seeded workload ------------------------------------------------------

export { prng };

export type OpKind = 'write' | 'zero' | 'trim' | 'flush';
export interface Op {
  kind: OpKind;
  offset: number;
  length: number;
  /** NBD command flags: FUA 1, NO_HOLE 2, FAST_ZERO 16. */
  flags: number;
  /** Where a write's bytes start in the data blob. */
  dataOffset: number;
}

export interface Workload {
  seed: number;
  /** Batches run one after the other; the requests of a batch are in flight together and never overlap. */
  batches: Op[][];
  data: Buffer;
}

const FUA = 1;
const NO_HOLE = 2;
const FAST_ZERO = 16;

/**
 * Random writes, write-zeroes and trims over a disk of `size` bytes whose
 * top layer has clusters of `clusterSize`: offsets anywhere, on cluster
 * boundaries and just around them; lengths from one byte to a few
 * clusters and beyond; some FUA, NO_HOLE, FAST_ZERO (only on whole
 * clusters, where vblk can do it) and flushes between.
 */
export function makeWorkload(seed: number, size: number, clusterSize: number, batches: number): Workload {
  const rnd = prng(seed);
  const int = (n: number): number => Math.floor(rnd() * n);
  const pick = <T>(xs: T[]): T => xs[int(xs.length)];
  const chunks: Buffer[] = [];
  let dataLength = 0;
  const out: Op[][] = [];
  for (let b = 0; b < batches; b++) {
    const batch: Op[] = [];
    const want = 1 + int(6);
    for (let tries = 0; batch.length < want && tries < 50; tries++) {
      const kind: OpKind = pick(['write', 'write', 'write', 'write', 'zero', 'zero', 'trim', 'flush']);
      if (kind === 'flush') {
        batch.push({ kind, offset: 0, length: 0, flags: 0, dataOffset: 0 });
        continue;
      }
      const clusters = Math.ceil(size / clusterSize);
      let offset: number;
      switch (int(4)) {
        case 0:
          offset = int(size);
          break;
        case 1:
          offset = int(clusters) * clusterSize;
          break;
        case 2:
          offset = Math.max(0, int(clusters) * clusterSize - 512 * (1 + int(4)));
          break;
        default:
          offset = int(size / 512) * 512;
      }
      let length: number;
      switch (int(4)) {
        case 0:
          length = 1 + int(4096);
          break;
        case 1:
          length = (1 + int(3)) * clusterSize;
          break;
        case 2:
          length = 1 + int(3 * clusterSize);
          break;
        default:
          length = 1 + int(Math.min(2 * MiB, size / 4));
      }
      length = Math.min(length, size - offset);
      if (length <= 0) continue;
      if (batch.some((o) => o.kind !== 'flush' && o.offset < offset + length && offset < o.offset + o.length)) continue;
      let flags = rnd() < 0.2 ? FUA : 0;
      let dataOffset = 0;
      if (kind === 'write') {
        const chunk = Buffer.alloc(length);
        // Random bytes, with some all-zero runs so that written zeroes are data too.
        for (let i = 0; i + 4 <= length; i += 4) chunk.writeUInt32LE((rnd() * 2 ** 32) >>> 0, i);
        for (let i = length - (length % 4); i < length; i++) chunk[i] = 1 + int(255);
        if (rnd() < 0.15) chunk.fill(0, int(length));
        dataOffset = dataLength;
        chunks.push(chunk);
        dataLength += length;
      } else if (kind === 'zero') {
        if (rnd() < 0.3) flags |= NO_HOLE;
        const whole = offset % clusterSize === 0 && (length % clusterSize === 0 || offset + length === size);
        if (whole && rnd() < 0.5) flags |= FAST_ZERO;
      }
      batch.push({ kind, offset, length, flags, dataOffset });
    }
    out.push(batch);
  }
  return { seed, batches: out, data: Buffer.concat(chunks) };
}

/**
 * What the workload leaves on a disk that held `before`. Trim is advisory
 * in NBD; vblk's qcow2 drops whole clusters of the top layer (they then
 * read as zeroes) and leaves the partial clusters at the ends as they
 * were, so that is what the model does.
 */
export function applyWorkload(before: Buffer, w: Workload, clusterSize: number): Buffer {
  const disk = Buffer.from(before);
  for (const batch of w.batches) {
    for (const op of batch) {
      if (op.kind === 'write') w.data.copy(disk, op.offset, op.dataOffset, op.dataOffset + op.length);
      else if (op.kind === 'zero') disk.fill(0, op.offset, op.offset + op.length);
      else if (op.kind === 'trim') {
        const end = op.offset + op.length;
        const first = Math.ceil(op.offset / clusterSize) * clusterSize;
        const last = end === disk.length ? end : Math.floor(end / clusterSize) * clusterSize;
        if (first < last) disk.fill(0, first, last);
      }
    }
  }
  return disk;
}

const REPLAY = `
import json
ops = json.load(open(OPS))
data = open(DATA, 'rb').read()
counts = {}
for batch in ops:
    cookies = []
    for kind, offset, length, flags, doff in batch:
        counts[kind] = counts.get(kind, 0) + 1
        if kind == 'write':
            buf = nbd.Buffer.from_bytearray(bytearray(data[doff:doff + length]))
            cookies.append((h.aio_pwrite(buf, offset, flags=flags), buf))
        elif kind == 'zero':
            cookies.append((h.aio_zero(length, offset, flags=flags), None))
        elif kind == 'trim':
            cookies.append((h.aio_trim(length, offset, flags=flags), None))
        else:
            cookies.append((h.aio_flush(), None))
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for cookie, _ in cookies:
        assert h.aio_command_completed(cookie), 'command %d did not complete' % cookie
h.flush()
print(json.dumps(counts))
`;

/** Replays a workload through nbdsh (libnbd) against `uri`; requests of one batch are in flight together. */
export async function replay(t: Test, uri: string, w: Workload, dir: string): Promise<Record<string, number>> {
  const opsFile = path.join(dir, `ops-${w.seed}.json`);
  const dataFile = path.join(dir, `data-${w.seed}.bin`);
  const scriptFile = path.join(dir, 'replay.py');
  fs.writeFileSync(opsFile, JSON.stringify(w.batches.map((b) => b.map((o) => [o.kind, o.offset, o.length, o.flags, o.dataOffset]))));
  fs.writeFileSync(dataFile, w.data);
  fs.writeFileSync(scriptFile, `OPS = ${JSON.stringify(opsFile)}\nDATA = ${JSON.stringify(dataFile)}\n${REPLAY}`);
  // nbdsh -c runs statements with the handle h connected to the URI.
  const r = await run('nbdsh', ['-u', uri, '-c', `exec(open(${JSON.stringify(scriptFile)}).read())`]);
  t.equal(r.code, 0, `nbdsh replays seed ${w.seed}`, out(r));
  try {
    return JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as Record<string, number>;
  } catch {
    return {};
  }
}

// --- qemu-nbd as the reference peer ------------------------------------------

export interface Peer {
  uri: string;
  stop(): Promise<void>;
}

/** qemu-nbd serving `file` read-only with qemu:allocation-depth, on a socket in `dir`. */
export async function qemuNbd(t: Test, file: string, format: string, dir: string, name = 'qemu'): Promise<Peer> {
  const socket = path.join(dir, `${name}.sock`);
  const child = spawn('qemu-nbd', ['-r', '-t', '-A', '-f', format, '-k', socket, file], { env: TOOL_ENV, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  let alive = true;
  const exited = new Promise<void>((resolve) => child.on('exit', () => ((alive = false), resolve())));
  const stop = async (): Promise<void> => {
    if (alive) child.kill('SIGTERM');
    await exited;
  };
  t.teardown(stop);
  const deadline = Date.now() + 10_000;
  while (!fs.existsSync(socket)) {
    if (!alive || Date.now() > deadline) throw new Error(`qemu-nbd did not start: ${stderr}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return { uri: `nbd+unix:///?socket=${socket}`, stop };
}

// --- maps ---------------------------------------------------------------------

export interface Run {
  start: number;
  length: number;
  value: string;
}

/** Joins neighbouring runs with the same value. */
export function joinRuns(runs: Run[]): Run[] {
  const outRuns: Run[] = [];
  for (const r of runs) {
    const last = outRuns[outRuns.length - 1];
    if (last && last.value === r.value && last.start + last.length === r.start) last.length += r.length;
    else outRuns.push({ ...r });
  }
  return outRuns;
}

export type ImgMapEntry = MapEntry;

/** A qemu-img map (or vblk map) entry as one comparable value; host offsets left out. */
export function mapRuns(entries: ImgMapEntry[]): Run[] {
  return joinRuns(entries.map((e) => ({ start: e.start, length: e.length, value: `depth=${e.depth} present=${e.present} zero=${e.zero} data=${e.data}` })));
}

/** nbdinfo --map[=CONTEXT] --json as runs of the context's value. */
export async function nbdinfoRuns(t: Test, uri: string, context = 'base:allocation'): Promise<Run[]> {
  const r = await run('nbdinfo', [`--map=${context}`, '--json', uri]);
  t.equal(r.code, 0, `nbdinfo --map=${context} exits 0`, out(r));
  if (r.code !== 0) return [];
  const entries = JSON.parse(r.stdout) as { offset: number; length: number; type: number }[];
  return joinRuns(entries.map((e) => ({ start: e.offset, length: e.length, value: String(e.type) })));
}

// --- header patches -------------------------------------------------------------

/** XORs bits into the big-endian 64-bit header field at `offset` (e.g. 72: incompatible features). */
export function flipHeaderBits(file: string, offset: number, bits: bigint): void {
  const fd = fs.openSync(file, 'r+');
  try {
    const b = Buffer.alloc(8);
    fs.readSync(fd, b, 0, 8, offset);
    b.writeBigUInt64BE(b.readBigUInt64BE(0) ^ bits, 0);
    fs.writeSync(fd, b, 0, 8, offset);
  } finally {
    fs.closeSync(fd);
  }
}
