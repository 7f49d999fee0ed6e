// Seeded random workloads through NBD (libnbd's nbdsh, requests of a batch
// in flight together) on a qcow2 overlay vblk serves, replayed on a raw
// reference copy; QEMU then says whether the two hold the same bytes:
// qemu-img compare (never -s) of the live export and, after the server
// stopped, of the image file itself, and qemu-img check on the overlay.
// The layers below must not change. Each seed is printed; to replay one,
// set VBLK_QCOW2_SEEDS=seed[,seed...].

import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { serve, tempDir, vblk } from '../helpers/server.js';
import { run } from '../helpers/tools.js';
import {
  applyWorkload,
  compare,
  identical,
  KiB,
  makeWorkload,
  MiB,
  must,
  out,
  prng,
  qemuCheck,
  qemuIo,
  qemuRaw,
  replay,
  sha256,
} from './qcow2-helpers.js';

const SEEDS = process.env.VBLK_QCOW2_SEEDS ? process.env.VBLK_QCOW2_SEEDS.split(',').map(Number) : [0x5eed0001, 0x5eed0002, 0x5eed0003];
const BATCHES = 40;

interface Layers {
  /** The overlay vblk serves and writes. */
  top: string;
  topCluster: number;
  /** The files below it, which must not change. */
  below: string[];
}

async function created(t: Test, args: string[]): Promise<void> {
  const r = await vblk(args);
  t.equal(r.code, 0, `vblk ${args.join(' ')}`, { stderr: r.stderr });
}

/** A raw base, partly data and partly holes, with an odd size (not a whole number of clusters), under a vblk overlay. */
async function rawBase(t: Test, dir: string, seed: number): Promise<Layers> {
  const size = 24 * MiB + 7 * 4096 + 512;
  const base = path.join(dir, 'base.raw');
  const fd = fs.openSync(base, 'w');
  fs.ftruncateSync(fd, size);
  const rnd = prng(seed ^ 0xba5e);
  for (let i = 0; i < 12; i++) {
    const length = 4096 * (1 + Math.floor(rnd() * 100));
    const offset = Math.min(size - length, Math.floor((rnd() * size) / 4096) * 4096);
    const chunk = Buffer.alloc(length, 1 + Math.floor(rnd() * 255));
    for (let j = 0; j < length; j += 512) chunk.writeUInt32BE(offset + j, j);
    fs.writeSync(fd, chunk, 0, length, offset);
  }
  // The last bytes too, so that the partial last cluster holds data.
  fs.writeSync(fd, Buffer.alloc(700, 0xee), 0, 700, size - 700);
  fs.closeSync(fd);
  const top = path.join(dir, 'top.qcow2');
  await created(t, ['create', top, '--backing', base]);
  return { top, topCluster: 64 * KiB, below: [base] };
}

/**
 * base.qcow2 <- mid.qcow2, both made and written by QEMU (data, zero
 * clusters, discards), and vblk's overlay on top, larger than the chain
 * below so that its end reads past the backing file.
 */
async function qcow2Chain(t: Test, dir: string, topCluster: number): Promise<Layers> {
  const base = path.join(dir, 'base.qcow2');
  const mid = path.join(dir, 'mid.qcow2');
  const top = path.join(dir, 'top.qcow2');
  await must(t, 'qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=32768', base, '16M']);
  await qemuIo(t, base, 'qcow2', ['write -P 0x11 0 5M', 'write -P 0x12 6M 3M', 'write -P 0x13 12345 7000', 'write -P 0x14 15M 1M']);
  await must(t, 'qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', mid]);
  await qemuIo(t, mid, 'qcow2', ['write -P 0x21 1M 1M', 'write -z 3M 1M', 'discard 7M 512k', 'write -P 0x22 8388608 65536', 'write -P 0x23 15M 4096']);
  await created(t, ['create', top, '--backing', mid, '--size', String(17 * MiB + 8192), '--cluster-size', String(topCluster)]);
  return { top, topCluster, below: [base, mid] };
}

async function workload(t: Test, layers: Layers, seed: number, dir: string): Promise<Buffer> {
  t.comment(`seed 0x${seed.toString(16)} (replay with VBLK_QCOW2_SEEDS=${seed})`);
  const hashes = layers.below.map(sha256);
  const before = await qemuRaw(t, layers.top, 'qcow2', path.join(dir, 'before.raw'));
  const w = makeWorkload(seed, before.length, layers.topCluster, BATCHES);
  const ref = path.join(dir, 'ref.raw');
  fs.writeFileSync(ref, applyWorkload(before, w, layers.topCluster));

  const served = await serve(t, [layers.top]);
  const counts = await replay(t, served.uri(), w, dir);
  t.ok(counts.write > 0 && counts.zero > 0 && counts.trim > 0, 'the workload wrote, zeroed and trimmed', { counts });
  await identical(t, { file: served.uri(), format: 'raw' }, { file: ref, format: 'raw' }, 'the live export against the reference');
  t.same(await served.stop(), { code: 0, signal: null }, 'vblk stops cleanly');

  await identical(t, { file: layers.top, format: 'qcow2' }, { file: ref, format: 'raw' }, 'the overlay file against the reference');
  await qemuCheck(t, [layers.top]);
  t.same(layers.below.map(sha256), hashes, 'the layers below the overlay are unchanged');
  return fs.readFileSync(ref);
}

t.test('random workloads on an overlay over a raw base', async (t) => {
  for (const seed of SEEDS) {
    await t.test(`seed 0x${seed.toString(16)}`, async (t) => {
      const dir = tempDir(t);
      await workload(t, await rawBase(t, dir, seed), seed, dir);
    });
  }
});

t.test('random workloads on an overlay over a two-deep qcow2 chain made by QEMU', async (t) => {
  const clusters = [64 * KiB, 16 * KiB, 4 * KiB];
  for (const [i, seed] of SEEDS.entries()) {
    const cluster = clusters[i % clusters.length];
    await t.test(`seed 0x${seed.toString(16)}, ${cluster / KiB} KiB clusters on top`, async (t) => {
      const dir = tempDir(t);
      await workload(t, await qcow2Chain(t, dir, cluster), seed ^ 0xc4a1, dir);
    });
  }
});

t.test('negative control: compare finds a single changed byte', async (t) => {
  const dir = tempDir(t);
  const layers = await rawBase(t, dir, SEEDS[0]);
  const ref = await workload(t, layers, SEEDS[0], dir);
  const at = Math.floor(ref.length / 3) + 17;
  ref[at] ^= 0x40;
  const file = path.join(dir, 'changed.raw');
  fs.writeFileSync(file, ref);
  const r = await compare({ file: layers.top, format: 'qcow2' }, { file, format: 'raw' });
  t.equal(r.code, 1, 'qemu-img compare exits 1', out(r));
  // qemu-img compare names the 512-byte sector that differs.
  t.match(r.stdout, new RegExp(`Content mismatch at offset ${at - (at % 512)}\\b`), 'at the changed byte\'s sector');
  const check = await run('qemu-img', ['check', file]);
  t.not(check.code, 0, 'qemu-img check does not pass a raw file for a clean qcow2');
});
