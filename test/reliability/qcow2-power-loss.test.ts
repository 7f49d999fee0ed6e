// qcow2 under power loss: every write and sync vblk makes to the image
// file is recorded (helpers/write-recorder.ts) while a seeded workload of
// concurrent writes (partial clusters copied from a backing file, whole
// clusters, up to 2 MiB), write-zeroes, trims and flushes runs on a
// Qcow2Image; then the states a power cut could leave between two syncs
// (helpers/crash-states.ts) are built and `qemu-img check` judges each.
// Leaked clusters are what a cut may leave; a corruption (a cluster in
// use with refcount 0, a table or cluster past the end of the file) or a
// check that cannot read the image fails the test.
//
// The image is QEMU's own (qemu-img create) with 512-byte clusters and
// 64-bit refcounts, so one refcount block covers 32 KiB and one cluster
// of refcount table 2 MiB: the workload adds many L2 tables and refcount
// blocks and moves the refcount table more than once.
//
// The negative control runs the same kind of workload with the ordering
// syncs left out (Qcow2Options.unorderedForTest) and must find corrupt
// states: the check can fail. A state is one random subset of the
// writes that may be lost, so the states are sampled, not enumerated;
// VBLK_SEED replays a run, VBLK_CRASH_STATES sets how many are checked.

import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { openLayer } from '../../src/device/images/open.js';
import { Qcow2Image } from '../../src/device/images/qcow2/qcow2-image.js';
import { request, type Request } from '../../src/device/types.js';
import { chooseEngine } from '../../src/io/probe.js';
import { applied, crashState, cutsOf, type Cut } from '../helpers/crash-states.js';
import { tempDir } from '../helpers/server.js';
import { requireTool, run, TOOL_ENV } from '../helpers/tools.js';
import { recordWrites, type Recorded } from '../helpers/write-recorder.js';
import { makeWorkload, prng, type Workload } from '../interop/qcow2-helpers.js';

const seed = Number(process.env.VBLK_SEED ?? Date.now() % 1_000_000);
const STATES = Number(process.env.VBLK_CRASH_STATES ?? 300);
const SIZE = 6 << 20;
const CLUSTER = 512;
requireTool('qemu-img');
t.comment(`seed ${seed} (replay with VBLK_SEED=${seed}), ${STATES} states per run`);

// The thread pool: its writes are really in flight between submit and completion.
const engine = chooseEngine('threads').engine;
t.teardown(() => engine.close());

interface Run {
  dir: string;
  file: string;
  base: Buffer;
  log: Recorded[];
}

/** Creates the image, runs the workload on it while recording, closes it. */
async function record(t: Test, workload: Workload, unorderedForTest: boolean): Promise<Run> {
  const dir = tempDir(t);
  const backing = path.join(dir, 'base.img');
  const fill = Buffer.alloc(SIZE);
  for (let i = 0; i < SIZE; i += 4) fill.writeUInt32LE((i * 2654435761) >>> 0, i);
  fs.writeFileSync(backing, fill);
  const file = path.join(dir, 'disk.qcow2');
  const made = await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${CLUSTER},refcount_bits=64`, '-b', 'base.img', '-F', 'raw', file, String(SIZE)]);
  if (made.code !== 0) throw new Error(`qemu-img create: ${made.stderr}`);
  const base = fs.readFileSync(file);
  const recorder = recordWrites(engine);
  t.teardown(() => recorder.stop());
  const fd = fs.openSync(file, 'r+');
  recorder.watch(fd);
  const img = await Qcow2Image.open(file, { readOnly: false, engine: recorder.engine, backing: await openLayer(backing, engine), fd, unorderedForTest });
  for (const batch of workload.batches) {
    await Promise.all(
      batch.map((op) => {
        const fua = (op.flags & 1) !== 0;
        const req = (kind: Request['op'], extra: Partial<Request> = {}): Request => request(kind, op.offset, op.length, { fua, ...extra });
        switch (op.kind) {
          case 'write':
            return img.write(req('write', { data: workload.data.subarray(op.dataOffset, op.dataOffset + op.length) }));
          case 'zero':
            return img.writeZeroes(req('writeZeroes', { noHole: (op.flags & 2) !== 0, fastZero: (op.flags & 16) !== 0 }));
          case 'trim':
            return img.trim(req('trim'));
          case 'flush':
            return img.flush();
        }
      }),
    );
  }
  await img.close();
  recorder.stop();
  return { dir, file, base, log: recorder.log };
}

interface Verdict {
  corrupt: boolean;
  leaks: number;
  output: string;
}

/** qemu-img check without the helper's look-up of the tool each time (a shell per call counts here). */
function check(file: string): Promise<Verdict> {
  return new Promise((resolve, reject) => {
    execFile('qemu-img', ['check', '--output=json', file], { env: TOOL_ENV, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : null) : 0;
      if (code === null) return reject(err);
      resolve(verdict(code, stdout, stderr));
    });
  });
}

function verdict(code: number, stdout: string, stderr: string): Verdict {
  const errors = stderr.split('\n').filter((line) => !line.startsWith('Leaked cluster'));
  const output = `exit ${code}: ${errors.join(' ').trim().slice(0, 600)}`;
  // 0 clean, 3 leaked clusters only; 2 corruption, 1 the check could not finish.
  if (code !== 0 && code !== 3) return { corrupt: true, leaks: 0, output };
  const report = JSON.parse(stdout) as { corruptions?: number; leaks?: number };
  return { corrupt: (report.corruptions ?? 0) > 0, leaks: report.leaks ?? 0, output };
}

interface Tally {
  checked: number;
  corrupt: number;
  leaky: number;
  first: string | null;
}

/**
 * Checks up to `budget` states sampled over the cuts: a random cut, then
 * each of its possible writes lost or kept with a random probability
 * (sometimes all lost, sometimes all kept), skipping states already
 * checked. Stops at the first corrupt state when `stopAtCorrupt`.
 */
async function checkStates(run: Run, cuts: Cut[], budget: number, stopAtCorrupt: boolean): Promise<Tally> {
  const random = prng(seed ^ 0x5eed);
  const tally: Tally = { checked: 0, corrupt: 0, leaky: 0, first: null };
  const seen = new Set<string>();
  const interesting = cuts.filter((c) => c.possible.length > 0);
  // One check at a time: most of a check is process start-up, and on two
  // busy cores running two at once was slower.
  const file = path.join(run.dir, 'state.qcow2');
  for (let attempts = 0; interesting.length > 0 && tally.checked < budget && attempts < budget * 4; attempts++) {
    if (stopAtCorrupt && tally.corrupt > 0) break;
    const cut = interesting[Math.floor(random() * interesting.length)];
    const roll = random();
    const image = crashState(run.base, cut, roll < 0.1 ? 0 : roll < 0.2 ? 1 : random(), random);
    const key = createHash('sha1').update(image).digest('hex');
    if (seen.has(key)) continue;
    seen.add(key);
    fs.writeFileSync(file, image);
    tally.checked++;
    const v = await check(file);
    if (v.leaks > 0) tally.leaky++;
    if (v.corrupt) {
      tally.corrupt++;
      tally.first ??= `${cut.label}: ${v.output}`;
    }
  }
  return tally;
}

function summary(log: Recorded[], cuts: Cut[]): string {
  const writes = log.filter((e) => e.kind === 'write').length;
  const syncs = log.filter((e) => e.kind === 'sync').length;
  return `${writes} writes, ${syncs} syncs, ${cuts.length} cuts`;
}

t.test('with the ordering syncs, no state a power cut can leave is corrupt', async (t) => {
  const workload = makeWorkload(seed, SIZE, CLUSTER, 30);
  const r = await record(t, workload, false);
  const final = fs.readFileSync(r.file);
  const replayed = applied(r.base, r.log.flatMap((e) => (e.kind === 'write' ? [{ id: e.id, offset: e.offset, data: e.data }] : [])));
  t.ok(replayed.equals(final), 'the recorded writes, replayed, make the image as vblk left it (nothing went unrecorded)');
  const clean = await check(r.file);
  t.ok(!clean.corrupt && clean.leaks === 0, `the image as closed is clean (${clean.output.slice(0, 200)})`);
  t.ok(final.readUInt32BE(56) > 1, `the refcount table grew (to ${final.readUInt32BE(56)} clusters)`);
  const cuts = cutsOf(r.log);
  t.comment(summary(r.log, cuts));
  const tally = await checkStates(r, cuts, STATES, false);
  t.comment(`${tally.checked} states checked: ${tally.corrupt} corrupt, ${tally.leaky} with leaked clusters`);
  t.ok(tally.checked >= Math.min(STATES, 50), `enough states checked (${tally.checked})`);
  t.equal(tally.corrupt, 0, 'no corrupt state', { first: tally.first });
});

t.test('negative control: without the ordering syncs, corrupt states are found', async (t) => {
  const workload = makeWorkload(seed, SIZE, CLUSTER, 30);
  const r = await record(t, workload, true);
  const cuts = cutsOf(r.log);
  t.comment(summary(r.log, cuts));
  const tally = await checkStates(r, cuts, STATES, true);
  t.comment(`${tally.checked} states checked until the first corrupt one: ${tally.first?.slice(0, 300)}`);
  t.ok(tally.corrupt > 0, 'a corrupt state is found');
});
