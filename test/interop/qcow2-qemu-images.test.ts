// vblk serves qcow2 images QEMU made: compressed clusters (qemu-img convert
// -c), a three-deep chain made by qemu-img and written by qemu-io (data,
// zero clusters with and without an allocation, discards), 512-byte and
// 2 MiB clusters, refcounts of 1, 8 and 64 bits, persistent bitmaps and
// version 2 images. What vblk serves is compared with what QEMU reads from
// the file directly (qemu-img compare, qemu-io read -P on the NBD URI);
// then a seeded workload writes through vblk, and QEMU checks the image and
// compares it with the model.

import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { serve, tempDir, vblk } from '../helpers/server.js';
import { run } from '../helpers/tools.js';
import {
  applyWorkload,
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
  qemuReads,
  replay,
  sha256,
} from './qcow2-helpers.js';

interface Served {
  image: string;
  /** The cluster size of the image itself (what a trim can drop). */
  cluster: number;
  below?: string[];
  /** Runs QEMU wrote, checked with qemu-io read -P through vblk. */
  expected?: [number, number, number][];
  seed: number;
}

/** Read-only first (vblk vs QEMU reading the file), then a workload through vblk, checked and compared. */
async function serveAndVerify(t: Test, dir: string, s: Served): Promise<void> {
  const hashes = (s.below ?? []).map(sha256);
  const before = await qemuRaw(t, s.image, 'qcow2', path.join(dir, 'before.raw'));
  const ro = await serve(t, [s.image, '--read-only']);
  await identical(t, { file: ro.uri(), format: 'raw' }, { file: s.image, format: 'qcow2' }, 'vblk serves what QEMU reads from the file');
  if (s.expected) {
    const r = await qemuReads(ro.uri(), 'raw', s.expected);
    t.ok(r.ok, 'qemu-io read -P through vblk finds what qemu-io wrote', out(r));
  }
  await ro.stop();

  t.comment(`seed 0x${s.seed.toString(16)}`);
  const w = makeWorkload(s.seed, before.length, s.cluster, 16);
  const model = path.join(dir, 'model.raw');
  fs.writeFileSync(model, applyWorkload(before, w, s.cluster));
  const rw = await serve(t, [s.image]);
  await replay(t, rw.uri(), w, dir);
  await identical(t, { file: rw.uri(), format: 'raw' }, { file: model, format: 'raw' }, 'after the workload vblk serves the model');
  t.same(await rw.stop(), { code: 0, signal: null }, 'vblk stops cleanly');
  await qemuCheck(t, [s.image]);
  await identical(t, { file: s.image, format: 'qcow2' }, { file: model, format: 'raw' }, 'and QEMU reads the model from the file');
  t.same((s.below ?? []).map(sha256), hashes, 'the layers below are unchanged');
}

async function checkJson(t: Test, file: string): Promise<Record<string, number>> {
  const r = await run('qemu-img', ['check', '--output=json', file]);
  t.equal(r.code, 0, `premise: QEMU's own ${path.basename(file)} is clean`, out(r));
  return JSON.parse(r.stdout) as Record<string, number>;
}

/** A raw source: compressible patterned clusters, random ones, zeroes. */
function source(file: string, size: number, seed: number): void {
  const rnd = prng(seed);
  const buf = Buffer.alloc(size);
  for (let off = 0; off < size; off += 32 * KiB) {
    const kind = Math.floor(rnd() * 3);
    const end = Math.min(size, off + 32 * KiB);
    if (kind === 0) buf.fill(`block ${off} `, off, end);
    else if (kind === 1) for (let i = off; i < end; i++) buf[i] = Math.floor(rnd() * 256);
  }
  fs.writeFileSync(file, buf);
}

for (const cluster of [512, 64 * KiB, 2 * MiB]) {
  t.test(`compressed clusters (qemu-img convert -c), ${cluster} B clusters`, async (t) => {
    const dir = tempDir(t);
    const src = path.join(dir, 'src.raw');
    const image = path.join(dir, 'comp.qcow2');
    source(src, 6 * MiB + 512, cluster);
    await must(t, 'qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', `cluster_size=${cluster}`, src, image]);
    const report = await checkJson(t, image);
    t.ok(report['compressed-clusters'] > 0, `premise: the image has compressed clusters (${report['compressed-clusters']})`);
    await identical(t, { file: image, format: 'qcow2' }, { file: src, format: 'raw' }, 'premise: QEMU reads the source back');
    await serveAndVerify(t, dir, { image, cluster, seed: 0x5eed0200 + Math.log2(cluster) });
  });
}

t.test('a three-deep chain made by qemu-img and written by qemu-io', async (t) => {
  const dir = tempDir(t);
  const [base, mid, top] = ['base.qcow2', 'mid.qcow2', 'top.qcow2'].map((f) => path.join(dir, f));
  await must(t, 'qemu-img', ['create', '-q', '-f', 'qcow2', base, '8M']);
  await qemuIo(t, base, 'qcow2', ['write -P 0x51 0 3M', 'write -P 0x52 5M 2M']);
  await must(t, 'qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', mid]);
  await qemuIo(t, mid, 'qcow2', ['write -P 0x61 1M 512k', 'write -z 2M 128k', 'discard 5M 64k', 'write -P 0x62 6M 64k', 'write -z 6M 64k']);
  await must(t, 'qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', top]);
  await qemuIo(t, top, 'qcow2', ['write -P 0x71 100k 50k', 'write -P 0x72 7M 1M', 'write -z -u 0 64k']);
  const map = JSON.parse((await must(t, 'qemu-img', ['map', '--output=json', top])).stdout) as { depth: number }[];
  t.same([...new Set(map.map((e) => e.depth))].sort(), [0, 1, 2], 'premise: data comes from all three layers');
  await serveAndVerify(t, dir, {
    image: top,
    cluster: 64 * KiB,
    below: [base, mid],
    seed: 0x5eed0300,
    expected: [
      [0, 0, 64 * KiB],
      [0x51, 64 * KiB, 36 * KiB],
      [0x71, 100 * KiB, 50 * KiB],
      [0x61, MiB, 512 * KiB],
      [0, 2 * MiB, 128 * KiB],
      [0x51, 2 * MiB + 128 * KiB, 896 * KiB],
      [0, 3 * MiB, 2 * MiB],
      [0, 5 * MiB, 64 * KiB],
      [0x52, 5 * MiB + 64 * KiB, 960 * KiB],
      [0, 6 * MiB, 64 * KiB],
      [0x72, 7 * MiB, MiB],
    ],
  });
});

t.test('512-byte clusters over 2 MiB clusters, both made by qemu-img', async (t) => {
  const dir = tempDir(t);
  const [base, top] = ['base.qcow2', 'top.qcow2'].map((f) => path.join(dir, f));
  await must(t, 'qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=2M', base, '10M']);
  await qemuIo(t, base, 'qcow2', ['write -P 0x81 0 3M', 'write -P 0x82 7M 1000k']);
  await must(t, 'qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', '-b', 'base.qcow2', '-F', 'qcow2', top]);
  await qemuIo(t, top, 'qcow2', ['write -P 0x91 1000 5000', 'write -P 0x92 4M 1M', 'write -z 2M 512']);
  await serveAndVerify(t, dir, {
    image: top,
    cluster: 512,
    below: [base],
    seed: 0x5eed0400,
    expected: [[0x81, 0, 1000], [0x91, 1000, 5000], [0x81, 6000, 2 * MiB - 6000], [0, 2 * MiB, 512], [0x92, 4 * MiB, MiB], [0x82, 7 * MiB, 1000 * KiB]],
  });
});

for (const bits of [1, 8, 64]) {
  t.test(`refcounts of ${bits} bits`, async (t) => {
    const dir = tempDir(t);
    const image = path.join(dir, 'rc.qcow2');
    await must(t, 'qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `refcount_bits=${bits},cluster_size=4096`, image, '6M']);
    await qemuIo(t, image, 'qcow2', ['write -P 0xa1 0 1M']);
    await serveAndVerify(t, dir, { image, cluster: 4096, seed: 0x5eed0500 + bits, expected: [[0xa1, 0, MiB]] });
  });
}

t.test('an image with a persistent dirty bitmap', async (t) => {
  const dir = tempDir(t);
  const image = path.join(dir, 'bm.qcow2');
  await must(t, 'qemu-img', ['create', '-q', '-f', 'qcow2', image, '6M']);
  await must(t, 'qemu-img', ['bitmap', '--add', image, 'b0']);
  await qemuIo(t, image, 'qcow2', ['write -P 0xb1 0 1M']);
  await serveAndVerify(t, dir, { image, cluster: 64 * KiB, seed: 0x5eed0600, expected: [[0xb1, 0, MiB]] });
  // vblk does not track the writes in the bitmap, so QEMU must not trust it any more.
  const info = JSON.parse((await must(t, 'qemu-img', ['info', '--output=json', image])).stdout) as {
    'format-specific': { data: { bitmaps?: { name: string; flags: string[] }[] } };
  };
  const bitmaps = info['format-specific'].data.bitmaps ?? [];
  t.ok(bitmaps.every((b) => b.flags.includes('in-use')), 'the bitmap is no longer trusted (in-use), or gone', { bitmaps });
});

t.test('a version 2 (compat=0.10) image: served read-only, not written', async (t) => {
  const dir = tempDir(t);
  const image = path.join(dir, 'v2.qcow2');
  await must(t, 'qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', image, '4M']);
  await qemuIo(t, image, 'qcow2', ['write -P 0xc1 64k 1M']);
  const hash = sha256(image);
  const ro = await serve(t, [image, '--read-only']);
  await identical(t, { file: ro.uri(), format: 'raw' }, { file: image, format: 'qcow2' }, 'vblk serves what QEMU reads');
  await ro.stop();
  const r = await vblk(['serve', image, '--socket', path.join(dir, 'rw.sock')]);
  t.equal(r.code, 1, 'serving it writable fails');
  t.match(r.stderr, /will not write.*version 2/, 'and says it is a version 2 image', { stderr: r.stderr });
  t.equal(sha256(image), hash, 'the image is untouched');
});
