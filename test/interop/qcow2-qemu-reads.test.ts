// QEMU reads what vblk wrote, with no vblk in between: qemu-io read -P on
// each layer, qemu-img convert -O raw compared byte for byte with a model,
// qemu-img info --backing-chain on a three-file chain made with vblk create
// --backing and vblk snapshot create, and qemu-img commit down that chain,
// twice, into the raw base. Overlays with 512-byte and 2 MiB clusters,
// which stress refcount growth and big copy-on-write, are read the same way.

import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { serve, tempDir, vblk } from '../helpers/server.js';
import {
  applyWorkload,
  identical,
  KiB,
  makeWorkload,
  MiB,
  must,
  qemuCheck,
  qemuIo,
  qemuRaw,
  qemuReads,
  replay,
} from './qcow2-helpers.js';

const SIZE = 12 * MiB;

async function ok(t: Test, args: string[]): Promise<string> {
  const r = await vblk(args);
  t.equal(r.code, 0, `vblk ${args.join(' ')}`, { stderr: r.stderr });
  return r.stdout;
}

/** qemu-io commands run through vblk serving `file`, mirrored on the model `disk`. */
async function writeThroughVblk(t: Test, file: string, disk: Buffer, ops: [string, number, number, number?][]): Promise<void> {
  const served = await serve(t, [file]);
  const commands = ops.map(([op, offset, length, pattern]) => (op === 'write' ? `write -P ${pattern} ${offset} ${length}` : op === 'zero' ? `write -z ${offset} ${length}` : `discard ${offset} ${length}`));
  await qemuIo(t, served.uri(), 'raw', commands);
  t.same(await served.stop(), { code: 0, signal: null }, 'vblk stops cleanly');
  for (const [op, offset, length, pattern] of ops) {
    // Discards here are of whole clusters, which vblk turns into zero clusters.
    disk.fill(op === 'write' ? pattern! : 0, offset, offset + length);
  }
}

/** The runs of equal bytes in `disk`, as (pattern, offset, length) for qemu-io read -P. */
function runs(disk: Buffer): [number, number, number][] {
  const out: [number, number, number][] = [];
  for (let start = 0; start < disk.length; ) {
    let end = start + 1;
    while (end < disk.length && disk[end] === disk[start]) end++;
    out.push([disk[start], start, end - start]);
    start = end;
  }
  return out;
}

t.test('a three-file chain made by vblk, read, converted and committed by QEMU', async (t) => {
  const dir = tempDir(t);
  const base = path.join(dir, 'base.raw');
  const disk = path.join(dir, 'disk.qcow2');
  const s1 = path.join(dir, 'disk@s1.qcow2');
  const model = Buffer.alloc(SIZE);

  await ok(t, ['create', base, '--size', String(SIZE)]);
  await writeThroughVblk(t, base, model, [['write', 0, 4 * MiB, 0x01], ['write', 8 * MiB, 2 * MiB, 0x02]]);
  await ok(t, ['create', disk, '--backing', base]);
  await writeThroughVblk(t, disk, model, [
    ['write', 1_000_000, 500_000, 0x11],
    ['zero', 3 * MiB, 512 * KiB],
    ['discard', 8 * MiB, MiB],
    ['write', 10 * MiB - 100, 200, 0x12],
  ]);
  const atS1 = Buffer.from(model);
  t.match(await ok(t, ['snapshot', 'create', disk, 's1']), /disk@s1\.qcow2/);
  await writeThroughVblk(t, disk, model, [
    ['write', 3200 * KiB, 100 * KiB, 0x21],
    ['write', 11 * MiB, MiB, 0x22],
    ['zero', 0, 64 * KiB],
    ['write', 1_200_000, 7, 0x23],
  ]);
  await qemuCheck(t, [disk, s1]);

  const info = await must(t, 'qemu-img', ['info', '--backing-chain', '--output=json', disk]);
  const chain = JSON.parse(info.stdout) as { filename: string; format: string; 'virtual-size': number; 'backing-filename'?: string; 'backing-filename-format'?: string; 'format-specific'?: { data: { corrupt?: boolean } } }[];
  t.same(
    chain.map((l) => [path.basename(l.filename), l.format, l['virtual-size'], l['backing-filename'], l['backing-filename-format']]),
    [
      ['disk.qcow2', 'qcow2', SIZE, 'disk@s1.qcow2', 'qcow2'],
      ['disk@s1.qcow2', 'qcow2', SIZE, 'base.raw', 'raw'],
      ['base.raw', 'raw', SIZE, undefined, undefined],
    ],
    'qemu-img info --backing-chain: three files, their formats and backing names',
  );
  t.same(chain.slice(0, 2).map((l) => l['format-specific']?.data.corrupt), [false, false], 'neither overlay is marked corrupt');

  const topRuns = runs(model);
  t.ok(topRuns.length >= 10, `premise: the top reads ${topRuns.length} different runs`);
  const top = await qemuReads(disk, 'qcow2', topRuns);
  t.ok(top.ok, 'qemu-io read -P verifies every run of the top', { stdout: top.stdout, stderr: top.stderr });
  const snap = await qemuReads(s1, 'qcow2', runs(atS1));
  t.ok(snap.ok, 'and of the snapshot, which lacks what came after it', { stdout: snap.stdout, stderr: snap.stderr });
  const wrong = await qemuReads(disk, 'qcow2', [[0x22, 3200 * KiB, 100 * KiB]]);
  t.notOk(wrong.ok, 'negative control: a wrong pattern does not verify');

  t.ok((await qemuRaw(t, disk, 'qcow2', path.join(dir, 'top.raw'))).equals(model), 'qemu-img convert -O raw of the top is the model, byte for byte');
  t.ok((await qemuRaw(t, s1, 'qcow2', path.join(dir, 's1.raw'))).equals(atS1), 'and of the snapshot');

  // qemu-img commit: the top into the snapshot, then the snapshot into the raw base.
  await must(t, 'qemu-img', ['commit', '-f', 'qcow2', disk]);
  t.ok((await qemuRaw(t, s1, 'qcow2', path.join(dir, 's1-after.raw'))).equals(model), 'after qemu-img commit the snapshot reads as the top did');
  t.ok((await qemuRaw(t, disk, 'qcow2', path.join(dir, 'top-after.raw'))).equals(model), 'and the top still reads the same');
  await qemuCheck(t, [disk, s1]);
  await must(t, 'qemu-img', ['commit', '-f', 'qcow2', s1]);
  t.ok(fs.readFileSync(base).equals(model), 'after committing again the raw base holds exactly the model');
  await qemuCheck(t, [disk, s1]);

  // And vblk reads the chain QEMU rewrote.
  fs.writeFileSync(path.join(dir, 'model.raw'), model);
  const served = await serve(t, [disk, '--read-only']);
  await identical(t, { file: served.uri(), format: 'raw' }, { file: path.join(dir, 'model.raw'), format: 'raw' }, 'vblk serving the committed chain');
  await served.stop();
});

for (const { cluster, size } of [
  { cluster: 512, size: 6 * MiB + 1536 },
  { cluster: 2 * MiB, size: 40 * MiB + 4096 },
]) {
  t.test(`an overlay with ${cluster >= MiB ? `${cluster / MiB} MiB` : `${cluster}-byte`} clusters, written through vblk, read by QEMU`, async (t) => {
    const dir = tempDir(t);
    const base = path.join(dir, 'base.qcow2');
    const top = path.join(dir, 'top.qcow2');
    // The base: QEMU's own, with its default clusters, partly written.
    await must(t, 'qemu-img', ['create', '-q', '-f', 'qcow2', base, String(size)]);
    await qemuIo(t, base, 'qcow2', [`write -P 0x41 0 ${size / 2}`, `write -P 0x42 ${size - 1024 * 1024} 1M`]);
    await ok(t, ['create', top, '--backing', base, '--cluster-size', String(cluster)]);
    const before = await qemuRaw(t, top, 'qcow2', path.join(dir, 'before.raw'));
    const seed = 0x5eed0100 + Math.log2(cluster);
    t.comment(`seed 0x${seed.toString(16)}`);
    const w = makeWorkload(seed, size, cluster, 24);
    const model = applyWorkload(before, w, cluster);
    const served = await serve(t, [top]);
    await replay(t, served.uri(), w, dir);
    t.same(await served.stop(), { code: 0, signal: null }, 'vblk stops cleanly');
    await qemuCheck(t, [top]);
    t.ok((await qemuRaw(t, top, 'qcow2', path.join(dir, 'after.raw'))).equals(model), 'qemu-img convert -O raw is the model, byte for byte');
    const info = JSON.parse((await must(t, 'qemu-img', ['info', '--output=json', top])).stdout) as { 'cluster-size': number };
    t.equal(info['cluster-size'], cluster, `QEMU sees ${cluster}-byte clusters`);
    const sample = runs(model).filter((r) => r[2] >= 4096).slice(0, 30);
    const read = await qemuReads(top, 'qcow2', sample);
    t.ok(read.ok, 'qemu-io read -P verifies the longer runs', { stdout: read.stdout, stderr: read.stderr });
  });
}
