// qcow2 under kill -9: many seeded iterations, each a fresh qcow2 image
// (an overlay made by `vblk create --backing` over a raw base of random
// data, or a standalone image, with cluster sizes from 512 bytes to
// 64 KiB so small ones force refcount blocks and refcount table growth),
// served by `vblk serve`, driven by a random workload of writes (with and
// without FUA, aligned and not), write-zeroes, trims and flushes with
// several requests in flight, and killed with SIGKILL at a random moment
// (after a random delay or a random number of replies). Some iterations
// serve the crashed image again, run a second workload and kill it again.
//
// After each kill, tools nobody here wrote judge the image:
//   - `qemu-img check` must not report corruption (exit 2) or fail (1);
//     leaked clusters (exit 3) are what a crash may leave.
//   - `qemu-img convert -O raw` reads it (and its backing file) as QEMU
//     sees it, and every byte must hold a value the history allows.
//
// The durability model, per byte b: an operation D is durable if it was
// acknowledged with FUA, or acknowledged before a FLUSH that was itself
// acknowledged was sent. Let T(b) be the latest send time of a durable
// operation covering b. An operation acknowledged before T(b) is
// superseded there (D was sent after it completed, and D survived). So b
// must hold the value of some operation covering b that is not
// superseded (D itself, or anything that may have landed after it); if
// no durable operation covers b, the initial value is allowed too. A
// trim that is not superseded allows anything (its content is
// unspecified). Time is a counter bumped at every send and every reply.
//
// Every iteration prints its seed: BASE_SEED + iteration number.
// VBLK_CRASH_ONLY=N runs iteration N alone; VBLK_CRASH_ITERATIONS=N
// changes how many run.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { connect, formatNbdUri, NbdError } from '../../src/client/index.js';
import { serve, tempDir, vblk } from '../helpers/server.js';
import { requireTool, TOOL_ENV, type RunResult } from '../helpers/tools.js';

const BASE_SEED = 0x9c0c2000;
const ITERATIONS = Number(process.env.VBLK_CRASH_ITERATIONS ?? 52);
const ONLY = process.env.VBLK_CRASH_ONLY === undefined ? null : Number(process.env.VBLK_CRASH_ONLY);
const KiB = 1024;
const MiB = 1024 * KiB;

// --- a small seeded generator (splitmix32) ---------------------------------

class Rng {
  constructor(private state: number) {}
  next(): number {
    this.state = (this.state + 0x9e3779b9) | 0;
    let z = this.state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return ((z ^ (z >>> 16)) >>> 0) / 2 ** 32;
  }
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)];
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    let i = 0;
    for (; i + 4 <= n; i += 4) b.writeUInt32LE((this.next() * 2 ** 32) >>> 0, i);
    for (; i < n; i++) b[i] = (this.next() * 256) | 0;
    return b;
  }
}

// --- the history and its judge ----------------------------------------------

type OpKind = 'write' | 'zero' | 'trim';

export interface Op {
  kind: OpKind;
  offset: number;
  length: number;
  /** Bytes written (write only). */
  data?: Buffer;
  fua: boolean;
  send: number;
  /** Time of the reply; Infinity if none came. */
  ack: number;
}

export interface Flush {
  send: number;
  ack: number;
}

export interface Problem {
  offset: number;
  length: number;
  detail: string;
}

/** Marks durable operations: acknowledged FUA, or acknowledged before an acknowledged flush was sent. */
export function durableOps(ops: Op[], flushes: Flush[]): Set<Op> {
  const lastFlushSend = Math.max(-Infinity, ...flushes.filter((f) => f.ack !== Infinity).map((f) => f.send));
  return new Set(ops.filter((o) => o.ack !== Infinity && (o.fua || o.ack < lastFlushSend)));
}

function valueAt(op: Op, b: number): number {
  return op.kind === 'zero' ? 0 : op.data![b - op.offset];
}

/**
 * Every byte of IMAGE against the history (see the top of the file).
 * Ranges where a byte holds a value no allowed operation wrote come back
 * as problems, merged.
 */
export function judge(initial: Buffer, image: Buffer, ops: Op[], flushes: Flush[]): Problem[] {
  const durable = durableOps(ops, flushes);
  // Elementary segments: T(b) and the covering set are constant inside one.
  const cuts = new Set<number>([0, image.length]);
  for (const o of ops) {
    cuts.add(Math.min(o.offset, image.length));
    cuts.add(Math.min(o.offset + o.length, image.length));
  }
  const points = [...cuts].sort((a, b) => a - b);
  const problems: Problem[] = [];
  const report = (offset: number, detail: string): void => {
    const last = problems[problems.length - 1];
    if (last && last.offset + last.length === offset && last.detail === detail) last.length++;
    else problems.push({ offset, length: 1, detail });
  };
  for (let s = 0; s + 1 < points.length; s++) {
    const start = points[s];
    const end = points[s + 1];
    const covering = ops.filter((o) => o.offset <= start && end <= o.offset + o.length);
    const t = Math.max(-Infinity, ...covering.filter((o) => durable.has(o)).map((o) => o.send));
    const allowed = covering.filter((o) => o.ack >= t);
    if (allowed.some((o) => o.kind === 'trim')) continue;
    const initialAllowed = t === -Infinity;
    const what = t === -Infinity ? 'never durably written' : 'durably written';
    for (let b = start; b < end; b++) {
      const v = image[b];
      if (initialAllowed && v === initial[b]) continue;
      if (allowed.some((o) => valueAt(o, b) === v)) continue;
      report(b, `${what}: 0x${v.toString(16)} at this byte is from no allowed operation (${allowed.length} allowed${initialAllowed ? ' + initial' : ''})`);
    }
  }
  return problems;
}

// --- one iteration ---------------------------------------------------------

interface Plan {
  seed: number;
  overlay: boolean;
  clusterSize: number;
  /** Virtual size; for an overlay, baseSize <= size. */
  size: number;
  baseSize: number;
  engine: string;
  direct: boolean;
  depth: number;
  /** Largest request, bytes. */
  maxLength: number;
  kill: { afterReplies: number } | { afterMs: number };
  /** A second serve-workload-kill on the crashed image. */
  again: boolean;
  /** Mostly large writes, to grow the refcount structures. */
  grow: boolean;
}

const ENGINES = ['default', 'sync', 'threads', 'uring', 'posix-aio'] as const;

function plan(i: number, available: string[]): Plan {
  const seed = (BASE_SEED + i) >>> 0;
  const r = new Rng(seed);
  // Every seventh iteration: a standalone image with 512-byte clusters and
  // large writes, to push the file past what one refcount table cluster
  // covers (8 MiB), killed before, during or after the table moves.
  const grow = i % 7 === 3;
  const overlay = !grow && i % 5 !== 1 && i % 5 !== 3; // otherwise three overlays, two standalone images in every five
  const clusterSize = grow ? 512 : r.pick([512, 1024, 4096, 16 * KiB, 64 * KiB, 64 * KiB]);
  const baseSize = r.pick([4, 6, 8]) * MiB;
  const size = overlay ? baseSize + (r.chance(0.3) ? MiB : 0) : grow ? 24 * MiB : r.pick([8, 12, 16]) * MiB;
  const engines = ENGINES.filter((e) => e === 'default' || available.includes(e));
  return {
    seed,
    overlay,
    clusterSize,
    size,
    baseSize,
    // posix-aio pays a thread hand-off per metadata write: too slow to grow the file in time.
    engine: grow ? r.pick(engines.filter((e) => e !== 'posix-aio' && e !== 'threads')) : r.pick(engines),
    direct: r.chance(0.15),
    depth: r.int(1, 16),
    maxLength: grow ? 512 * KiB : r.pick([8 * KiB, 64 * KiB, 256 * KiB]),
    kill: grow ? { afterMs: r.int(1000, 3000) } : r.chance(0.5) ? { afterReplies: r.int(1, 400) } : { afterMs: r.int(1, 700) },
    again: !grow && r.chance(0.2),
    grow,
  };
}

interface Workload {
  ops: Op[];
  flushes: Flush[];
  replies: number;
  errors: string[];
  killedBy: string;
}

/** One request's place in an aligned-or-not range inside the disk. */
function range(r: Rng, p: Plan): { offset: number; length: number } {
  if (p.grow && r.chance(0.8)) {
    // A large write at a random 4 KiB boundary (the cluster size is 512).
    const length = p.maxLength - r.int(0, 3) * 4 * KiB;
    return { offset: r.int(0, (p.size - length) / (4 * KiB)) * 4 * KiB, length };
  }
  const mode = r.pick(['cluster', 'sector', 'byte', 'byte'] as const);
  const unit = mode === 'cluster' ? p.clusterSize : mode === 'sector' ? 512 : 1;
  const maxUnits = Math.max(1, Math.floor(Math.min(p.maxLength, p.size) / unit));
  // Mostly small, sometimes up to the maximum.
  const units = r.chance(0.7) ? r.int(1, Math.max(1, Math.min(maxUnits, Math.ceil((8 * KiB) / unit)))) : r.int(1, maxUnits);
  const length = units * unit;
  const slots = Math.floor((p.size - length) / unit);
  return { offset: r.int(0, slots) * unit, length };
}

/** Drives the served image until the kill; returns what was sent and acknowledged. */
async function workload(socket: string, p: Plan, r: Rng, kill: () => void): Promise<Workload> {
  const disk = await connect(formatNbdUri({ path: socket }), { structuredReplies: false });
  const w: Workload = { ops: [], flushes: [], replies: 0, errors: [], killedBy: '' };
  if (disk.size !== p.size) w.errors.push(`export size ${disk.size}, expected ${p.size}`);
  if (!disk.canFua || !disk.canFlush || !disk.canTrim || !disk.canZero) w.errors.push(`export flags 0x${disk.info.flags.toString(16)} lack FUA, FLUSH, TRIM or WRITE_ZEROES`);
  let clock = 0;
  let inFlight = 0;
  let killed = false;
  let finished: () => void;
  const done = new Promise<void>((resolve) => (finished = resolve));
  const doKill = (why: string): void => {
    if (killed) return;
    killed = true;
    w.killedBy = why;
    kill();
  };
  const timer = 'afterMs' in p.kill ? setTimeout(() => doKill(`after ${(p.kill as { afterMs: number }).afterMs} ms`), p.kill.afterMs) : null;

  const MAX_OPS = 4000;
  const sendOne = (): void => {
    const roll = p.grow ? 0.1 + 0.62 * r.next() + (r.chance(0.1) ? 0.28 : 0) : r.next();
    let entry: Op | Flush;
    let sent: Promise<void>;
    if (roll < 0.05) {
      entry = { send: ++clock, ack: Infinity };
      w.flushes.push(entry);
      sent = disk.flush();
    } else {
      const { offset, length } = range(r, p);
      const fua = r.chance(0.2);
      let op: Op;
      if (roll < 0.72) {
        op = { kind: 'write', offset, length, data: r.bytes(length), fua, send: 0, ack: Infinity };
        sent = disk.write(offset, op.data!, { fua });
      } else if (roll < 0.88) {
        op = { kind: 'zero', offset, length, fua, send: 0, ack: Infinity };
        sent = disk.zero(offset, length, { fua, noHole: r.chance(0.3) });
      } else {
        op = { kind: 'trim', offset, length, fua, send: 0, ack: Infinity };
        sent = disk.trim(offset, length, { fua });
      }
      op.send = ++clock;
      w.ops.push(op);
      entry = op;
    }
    inFlight++;
    sent.then(
      () => {
        inFlight--;
        entry.ack = ++clock;
        w.replies++;
        if ('afterReplies' in p.kill && w.replies >= p.kill.afterReplies) doKill(`after ${w.replies} replies`);
        if (!killed && w.ops.length + w.flushes.length < MAX_OPS) sendOne();
        if (!killed && inFlight === 0) doKill('after the whole workload');
        if (inFlight === 0) finished();
      },
      (err: Error) => {
        inFlight--;
        if (err instanceof NbdError) w.errors.push(`a request failed with ${err.code}`);
        else if (!killed) w.errors.push(`the connection failed before the kill: ${err.message}`);
        if (inFlight === 0) finished();
      },
    );
  };
  for (let k = 0; k < p.depth; k++) sendOne();
  await done;
  if (timer) clearTimeout(timer);
  disk.destroy();
  return w;
}

/**
 * Like helpers/tools.ts run(), with no stdin at all: a tool that exits
 * before its stdin is closed would otherwise raise EPIPE in this process.
 */
function runNoInput(cmd: string, args: string[], timeoutMs = 60_000): Promise<RunResult> {
  requireTool(cmd);
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: TOOL_ENV, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/**
 * qemu-img, retried while the image is still locked: a killed server's
 * io_uring is torn down by the kernel after the process is gone, and its
 * file references (so its OFD locks) go a moment later.
 */
async function qemuImg(args: string[]): Promise<RunResult> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const r = await runNoInput('qemu-img', args);
    if (!/Failed to get .*lock/.test(r.stderr) || Date.now() > deadline) return r;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function qemuCheck(file: string): Promise<{ code: number | null; output: string }> {
  const r = await qemuImg(['check', '-f', 'qcow2', file]);
  return { code: r.code, output: `${r.stdout}${r.stderr}`.trim() };
}

/** The image as QEMU reads it, through its backing chain, as a raw buffer. */
async function qemuRead(file: string, out: string): Promise<Buffer> {
  fs.rmSync(out, { force: true });
  const r = await qemuImg(['convert', '-f', 'qcow2', '-O', 'raw', file, out]);
  if (r.code !== 0) throw new Error(`qemu-img convert failed: ${r.stderr}`);
  const data = fs.readFileSync(out);
  fs.rmSync(out, { force: true });
  return data;
}

function describe(p: Plan): string {
  const kill = 'afterMs' in p.kill ? `kill after ${p.kill.afterMs} ms` : `kill after ${p.kill.afterReplies} replies`;
  return [
    p.overlay ? `overlay ${p.size >> 10}K on raw ${p.baseSize >> 10}K` : `standalone ${p.size >> 10}K`,
    `clusters ${p.clusterSize}`,
    `engine ${p.engine}${p.direct ? ' --direct' : ''}`,
    `depth ${p.depth}`,
    `max ${p.maxLength >> 10}K`,
    kill,
    p.again ? 'then again' : '',
  ]
    .filter(Boolean)
    .join(', ');
}

const summary = { iterations: 0, kills: 0, ops: 0, acked: 0, durable: 0, leaks: 0, clean: 0, grewTable: 0 };

async function iteration(t: Test, i: number, available: string[]): Promise<void> {
  const p = plan(i, available);
  t.comment(`iteration ${i} seed 0x${p.seed.toString(16)}: ${describe(p)}`);
  const r = new Rng(p.seed ^ 0x5bd1e995);
  const dir = tempDir(t, 'vblk-crash-');
  const image = path.join(dir, 'top.qcow2');
  let initial: Buffer;
  if (p.overlay) {
    const base = path.join(dir, 'base.raw');
    const baseData = new Rng(p.seed ^ 0x1234567).bytes(p.baseSize);
    fs.writeFileSync(base, baseData);
    const args = ['create', image, '--backing', base, '--cluster-size', String(p.clusterSize)];
    if (p.size !== p.baseSize) args.push('--size', String(p.size));
    const c = await vblk(args);
    t.equal(c.code, 0, 'vblk create --backing', { stderr: c.stderr });
    initial = Buffer.concat([baseData, Buffer.alloc(p.size - p.baseSize)]);
  } else {
    const c = await vblk(['create', image, '--size', String(p.size), '--cluster-size', String(p.clusterSize)]);
    t.equal(c.code, 0, 'vblk create', { stderr: c.stderr });
    initial = Buffer.alloc(p.size);
  }
  const tableClustersAtStart = fs.readFileSync(image).readUInt32BE(56);

  for (let phase = 1; phase <= (p.again ? 2 : 1); phase++) {
    const args = [image];
    if (p.engine !== 'default') args.push('--engine', p.engine);
    if (p.direct) args.push('--direct');
    const served = await serve(t, args);
    const w = await workload(served.socket, p, r, () => served.proc.kill('SIGKILL'));
    const exit = await served.exited;
    const durable = durableOps(w.ops, w.flushes);
    const acked = w.ops.filter((o) => o.ack !== Infinity).length;
    summary.kills++;
    summary.ops += w.ops.length;
    summary.acked += acked;
    summary.durable += durable.size;
    t.same(w.errors, [], `phase ${phase}: no errors from the server before the kill`);
    t.equal(exit.signal, 'SIGKILL', `phase ${phase}: the server died of SIGKILL (${w.killedBy})`);

    const check = await qemuCheck(image);
    t.ok(check.code === 0 || check.code === 3, `phase ${phase}: qemu-img check exit ${check.code} (0 clean, 3 leaks)`, { output: check.output, seed: p.seed });
    if (check.code === 3) summary.leaks++;
    if (check.code === 0) summary.clean++;

    const now = await qemuRead(image, path.join(dir, 'read.raw'));
    t.equal(now.length, p.size, `phase ${phase}: QEMU sees the virtual size`);
    t.comment(`phase ${phase}: killed ${w.killedBy}; file ${(fs.statSync(image).size / MiB).toFixed(1)} MiB; qemu-img check exit ${check.code}`);
    const problems = judge(initial, now, w.ops, w.flushes);
    t.same(problems.slice(0, 5), [], `phase ${phase}: every byte is one the history allows (${w.ops.length} ops, ${acked} acknowledged, ${durable.size} durable, ${w.flushes.filter((f) => f.ack !== Infinity).length} flushes acknowledged)`, { seed: p.seed, problems: problems.length });
    initial = now;
  }
  const tableClusters = fs.readFileSync(image).readUInt32BE(56);
  if (tableClusters > tableClustersAtStart) {
    summary.grewTable++;
    t.comment(`refcount table grew from ${tableClustersAtStart} to ${tableClusters} clusters`);
  }
  summary.iterations++;
}

async function availableEngines(): Promise<string[]> {
  const r = await vblk(['info', '--engines']);
  return r.stdout
    .split('\n')
    .map((l) => /^(\S+)\s+yes\b/.exec(l)?.[1])
    .filter((e): e is string => !!e);
}

// --- the checks can fail ----------------------------------------------------

t.test('negative controls: the judge and qemu-img check catch what they should', async (t) => {
  await t.test('the judge: a durable write missing, a flushed write missing, garbage, and what is allowed', async (t) => {
    const initial = Buffer.alloc(64, 0xaa);
    const w1: Op = { kind: 'write', offset: 0, length: 16, data: Buffer.alloc(16, 1), fua: true, send: 1, ack: 2 };
    const w2: Op = { kind: 'write', offset: 16, length: 16, data: Buffer.alloc(16, 2), fua: false, send: 3, ack: 4 };
    const flush: Flush = { send: 5, ack: 6 };
    const w3: Op = { kind: 'write', offset: 8, length: 16, data: Buffer.alloc(16, 3), fua: false, send: 7, ack: Infinity };
    const w4: Op = { kind: 'write', offset: 40, length: 8, data: Buffer.alloc(8, 4), fua: false, send: 8, ack: 9 };
    const ops = [w1, w2, w3, w4];
    const good = Buffer.alloc(64, 0xaa);
    good.fill(1, 0, 16);
    good.fill(2, 16, 32);
    t.same(judge(initial, good, ops, [flush]), [], 'the image as acknowledged passes');
    const landed = Buffer.from(good);
    landed.fill(3, 8, 20); // part of the unacknowledged w3 landed: allowed
    landed.fill(4, 40, 44); // part of w4 (not durable) landed: allowed
    t.same(judge(initial, landed, ops, [flush]), [], 'unacknowledged later writes may land, partly');
    const lostFua = Buffer.from(good);
    lostFua.fill(0xaa, 0, 4);
    t.same(judge(initial, lostFua, ops, [flush]).map((p) => [p.offset, p.length]), [[0, 4]], 'a lost FUA write is caught');
    const lostFlushed = Buffer.from(good);
    lostFlushed.fill(0xaa, 28, 32);
    t.same(judge(initial, lostFlushed, ops, [flush]).map((p) => [p.offset, p.length]), [[28, 4]], 'a lost write acknowledged before a flush is caught');
    t.same(judge(initial, lostFlushed, ops, [{ send: 5, ack: Infinity }]), [], '...but not if the flush was never acknowledged');
    const garbage = Buffer.from(good);
    garbage[50] = 0x77;
    t.same(judge(initial, garbage, ops, [flush]).map((p) => [p.offset, p.length]), [[50, 1]], 'a byte nobody wrote is caught');
    const trim: Op = { kind: 'trim', offset: 0, length: 64, fua: false, send: 10, ack: 11 };
    t.same(judge(initial, garbage, [...ops, trim], [flush]), [], 'a trim afterwards allows anything');
  });

  await t.test('a real run: rolling back one durable write in what QEMU read is caught', async (t) => {
    const available = await availableEngines();
    let p = plan(0, available);
    p = { ...p, overlay: true, clusterSize: 4096, kill: { afterReplies: 200 }, depth: 4, again: false, maxLength: 64 * KiB };
    const dir = tempDir(t, 'vblk-crash-neg-');
    const image = path.join(dir, 'top.qcow2');
    const base = path.join(dir, 'base.raw');
    const baseData = new Rng(77).bytes(p.baseSize);
    fs.writeFileSync(base, baseData);
    t.equal((await vblk(['create', image, '--backing', base, '--cluster-size', '4096'])).code, 0, 'created');
    const served = await serve(t, [image]);
    const w = await workload(served.socket, p, new Rng(99), () => served.proc.kill('SIGKILL'));
    await served.exited;
    const now = await qemuRead(image, path.join(dir, 'read.raw'));
    t.same(judge(baseData, now, w.ops, w.flushes), [], 'the real image passes');
    // The last durable write that no later operation touches: undo it.
    const durable = durableOps(w.ops, w.flushes);
    const victim = [...durable].reverse().find((d) => d.kind === 'write' && !w.ops.some((o) => o !== d && o.send > d.send && o.offset < d.offset + d.length && d.offset < o.offset + o.length));
    t.ok(victim, 'a durable write to roll back exists');
    if (!victim) return;
    const rolledBack = Buffer.from(now);
    baseData.copy(rolledBack, victim.offset, victim.offset, victim.offset + victim.length);
    const problems = judge(baseData, rolledBack, w.ops, w.flushes);
    t.ok(problems.length > 0, `rolling back a durable ${victim.length}-byte write at ${victim.offset} is caught (${problems.length} ranges)`);
  });

  await t.test('qemu-img check reports corruption (exit 2) when a refcount block is wiped', async (t) => {
    const dir = tempDir(t, 'vblk-crash-neg-');
    const image = path.join(dir, 'img.qcow2');
    t.equal((await vblk(['create', image, '--size', '4M', '--cluster-size', '4096'])).code, 0, 'created');
    const served = await serve(t, [image]);
    const disk = await connect(formatNbdUri({ path: served.socket }));
    await disk.write(0, Buffer.alloc(64 * KiB, 0x42), { fua: true });
    t.pass('a FUA write acknowledged');
    served.proc.kill('SIGKILL');
    await served.exited;
    disk.destroy();
    const before = await qemuCheck(image);
    t.equal(before.code, 0, 'qemu-img check is clean before', { output: before.output });
    const fd = fs.openSync(image, 'r+');
    const head = Buffer.alloc(64);
    fs.readSync(fd, head, 0, 64, 0);
    const tableOffset = Number(head.readBigUInt64BE(48));
    const entry = Buffer.alloc(8);
    fs.readSync(fd, entry, 0, 8, tableOffset);
    const blockOffset = Number(entry.readBigUInt64BE(0) & ~0x1ffn);
    fs.writeSync(fd, Buffer.alloc(4096), 0, 4096, blockOffset);
    fs.closeSync(fd);
    const after = await qemuCheck(image);
    t.equal(after.code, 2, 'qemu-img check exits 2 after the refcount block is wiped', { output: after.output.slice(0, 400) });
  });

  await t.test('qemu-img check reports corruption when an L1 entry points into the header', async (t) => {
    const dir = tempDir(t, 'vblk-crash-neg-');
    const image = path.join(dir, 'img.qcow2');
    t.equal((await vblk(['create', image, '--size', '4M', '--cluster-size', '4096'])).code, 0, 'created');
    const fd = fs.openSync(image, 'r+');
    const head = Buffer.alloc(64);
    fs.readSync(fd, head, 0, 64, 0);
    const l1Offset = Number(head.readBigUInt64BE(40));
    const entry = Buffer.alloc(8);
    // COPIED, pointing at the refcount table's cluster: refcount 1, used twice.
    entry.writeBigUInt64BE((1n << 63n) | 4096n, 0);
    fs.writeSync(fd, entry, 0, 8, l1Offset);
    fs.closeSync(fd);
    const after = await qemuCheck(image);
    t.equal(after.code, 2, 'qemu-img check exits 2', { output: after.output.slice(0, 400) });
  });
});

// --- the iterations ------------------------------------------------------------

t.test(`${ITERATIONS} kill -9 iterations, seeds 0x${BASE_SEED.toString(16)} + i`, async (t) => {
  const available = await availableEngines();
  const started = Date.now();
  for (let i = 0; i < ITERATIONS; i++) {
    if (ONLY !== null && i !== ONLY) continue;
    await t.test(`iteration ${i} (seed 0x${((BASE_SEED + i) >>> 0).toString(16)})`, (t) => iteration(t, i, available));
  }
  if (ONLY === null && ITERATIONS >= 20) t.ok(summary.grewTable > 0, `the refcount table grew in ${summary.grewTable} iterations`);
  t.comment(
    `${summary.iterations} iterations, ${summary.kills} kills in ${((Date.now() - started) / 1000).toFixed(1)} s: ` +
      `${summary.ops} operations sent, ${summary.acked} acknowledged, ${summary.durable} durable; ` +
      `qemu-img check clean ${summary.clean}, leaks ${summary.leaks}; refcount table grew in ${summary.grewTable}`,
  );
});
