// Do vblk's maps of a qcow2 chain say what QEMU's say? `vblk map --output
// json` against `qemu-img map --output=json` (host offsets aside), and
// through vblk serve, nbdinfo's base:allocation and qemu:allocation-depth
// maps against the same maps from qemu-nbd serving the same image, for
// the overlay, the layer below it alone and the raw base (whose depth
// qemu-nbd reports as 1 throughout, holes included).
//
// The chain: a sparse raw base with 4 KiB-grained data; a vblk overlay
// written through vblk; vblk's top overlay, larger than the chain below,
// written through vblk with data, zeroes (with and without NO_HOLE) and
// discards; once with 64 KiB clusters on top, once with 4 KiB.

import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { serve, tempDir, vblk } from '../helpers/server.js';
import { run, type RunResult } from '../helpers/tools.js';
import { KiB, MiB, mapRuns, nbdinfoRuns, out, qemuCheck, qemuIo, qemuNbd, joinRuns, type ImgMapEntry, type Run } from './qcow2-helpers.js';

async function ok(t: Test, args: string[]): Promise<string> {
  const r = await vblk(args);
  t.equal(r.code, 0, `vblk ${args.join(' ')}`, { stderr: r.stderr });
  return r.stdout;
}

/** Writes through vblk: serves `file`, runs qemu-io on the NBD URI, stops. */
async function writeThroughVblk(t: Test, file: string, commands: string[]): Promise<void> {
  const served = await serve(t, [file]);
  await qemuIo(t, served.uri(), 'raw', commands);
  t.same(await served.stop(), { code: 0, signal: null }, 'vblk stops cleanly');
}

async function chain(t: Test, dir: string, topCluster: number): Promise<{ base: string; mid: string; top: string }> {
  const base = path.join(dir, 'base.raw');
  const mid = path.join(dir, 'mid.qcow2');
  const top = path.join(dir, 'top.qcow2');
  const fd = fs.openSync(base, 'w');
  fs.ftruncateSync(fd, 20 * MiB);
  // Data in 4 KiB pieces, some inside a 64 KiB cluster, some across cluster boundaries.
  for (const [offset, length] of [[0, MiB], [3 * MiB + 4 * KiB, 8 * KiB], [5 * MiB - 12 * KiB, 24 * KiB], [9 * MiB, 2 * MiB], [20 * MiB - 4 * KiB, 4 * KiB]]) {
    fs.writeSync(fd, Buffer.alloc(length, 0xb0), 0, length, offset);
  }
  fs.closeSync(fd);
  await ok(t, ['create', mid, '--backing', base]);
  await writeThroughVblk(t, mid, [
    'write -P 0x21 512k 1M',
    'write -z 9M 512k',
    'write -z -u 10M 256k',
    'discard 3M 1M',
    'write -P 0x22 14M 100k',
    'write -P 0 16M 64k',
  ]);
  await ok(t, ['create', top, '--backing', mid, '--size', String(24 * MiB), '--cluster-size', String(topCluster)]);
  await writeThroughVblk(t, top, [
    'write -P 0x31 0 64k',
    'write -P 0x32 700k 10k',
    'write -z 9472k 128k',
    'write -z -u 2M 1M',
    'discard 14M 64k',
    'write -P 0x33 19M 2M',
    'write -z -u 22M 64k',
    'write -P 0x34 23M 4k',
  ]);
  await qemuCheck(t, [mid, top]);
  return { base, mid, top };
}

async function imgMap(t: Test, args: string[], cmd: 'qemu-img' | 'vblk'): Promise<ImgMapEntry[]> {
  const r: RunResult = cmd === "vblk" ? { ...(await vblk(["map", ...args, "--output", "json"])), signal: null } : await run("qemu-img", ["map", "--output=json", ...args]);
  t.equal(r.code, 0, `${cmd} map ${args.join(' ')}`, out(r));
  return JSON.parse(r.stdout) as ImgMapEntry[];
}

/**
 * What qemu:allocation-depth should say, from a qemu-img map of a chain of
 * `layers` files: depth + 1 where present; where not present, the search
 * ended either at the bottom (absent: 0) or at a layer whose backing file
 * is shorter, whose zeroes QEMU counts as allocated in that backing file.
 */
function depthsOf(entries: ImgMapEntry[], layers: number): Run[] {
  const value = (e: ImgMapEntry): number => (e.present ? e.depth + 1 : e.depth < layers - 1 ? e.depth + 2 : 0);
  return joinRuns(entries.map((e) => ({ start: e.start, length: e.length, value: String(value(e)) })));
}

/** base:allocation and qemu:allocation-depth through vblk and through qemu-nbd, equal. */
async function nbdMapsAgree(t: Test, file: string, format: string, dir: string, label: string): Promise<{ alloc: Run[]; depth: Run[] }> {
  const served = await serve(t, [file, '--read-only']);
  const peer = await qemuNbd(t, file, format, dir, `peer-${label}`);
  const alloc = await nbdinfoRuns(t, served.uri());
  t.same(alloc, await nbdinfoRuns(t, peer.uri), `${label}: base:allocation through vblk is what qemu-nbd says`);
  const depth = await nbdinfoRuns(t, served.uri(), 'qemu:allocation-depth');
  t.same(depth, await nbdinfoRuns(t, peer.uri, 'qemu:allocation-depth'), `${label}: qemu:allocation-depth through vblk is what qemu-nbd says`);
  await served.stop();
  await peer.stop();
  return { alloc, depth };
}

for (const topCluster of [64 * KiB, 4 * KiB]) {
  t.test(`maps of a three-layer chain, ${topCluster / KiB} KiB clusters on top`, async (t) => {
    const dir = tempDir(t);
    const { base, mid, top } = await chain(t, dir, topCluster);

    const qemuMap = await imgMap(t, [top], 'qemu-img');
    const ours = await imgMap(t, [top], 'vblk');
    t.same(mapRuns(ours), mapRuns(qemuMap), 'vblk map says what qemu-img map says', { qemu: mapRuns(qemuMap) });
    // The chain is not trivial: every kind of run is in it.
    const kinds = new Set(mapRuns(qemuMap).map((r) => r.value));
    for (const k of [
      'depth=0 present=true zero=false data=true',
      'depth=0 present=true zero=true data=false',
      'depth=1 present=true zero=false data=true',
      'depth=1 present=true zero=true data=false',
      'depth=2 present=true zero=false data=true',
      'depth=2 present=true zero=true data=false',
      'depth=0 present=false zero=true data=false',
    ]) {
      t.ok(kinds.has(k), `the map has a run with ${k}`);
    }
    t.same(mapRuns(await imgMap(t, [mid], 'vblk')), mapRuns(await imgMap(t, [mid], 'qemu-img')), 'the same for the layer below');

    const topMaps = await nbdMapsAgree(t, top, 'qcow2', dir, 'top');
    t.same(topMaps.depth, depthsOf(qemuMap, 3), 'qemu:allocation-depth agrees with the depths of qemu-img map');
    t.same([...new Set(topMaps.depth.map((r) => r.value))].sort(), ['1', '2', '3'], 'depths 1 to 3 all occur', { depth: topMaps.depth });
    t.ok(new Set(topMaps.alloc.map((r) => r.value)).size >= 2, 'data and holes both occur', { alloc: topMaps.alloc });
    await nbdMapsAgree(t, mid, 'qcow2', dir, 'mid');
    const raw = await nbdMapsAgree(t, base, 'raw', dir, 'raw-base');
    t.same(raw.depth, [{ start: 0, length: 20 * MiB, value: '1' }], 'a raw export has depth 1 throughout, holes too');
    await qemuCheck(t, [mid, top]);
  });
}

t.test('layers shorter than the ones above them, down to a qcow2 image without backing file', async (t) => {
  // What lies past a short backing file reads as zeroes. qemu-img map
  // reports it as not present, at the depth of the layer whose backing file
  // ended; qemu:allocation-depth counts it as allocated in the short layer.
  const dir = tempDir(t);
  const base = path.join(dir, 'base.qcow2');
  const mid = path.join(dir, 'mid.qcow2');
  const top = path.join(dir, 'top.qcow2');
  await ok(t, ['create', base, '--size', '4M']);
  await writeThroughVblk(t, base, ['write -P 0x11 0 1M', 'write -z 2M 64k']);
  await ok(t, ['create', mid, '--backing', base, '--size', '6M']);
  await writeThroughVblk(t, mid, ['write -P 0x21 5M 64k', 'write -P 0x22 3M 4k']);
  await ok(t, ['create', top, '--backing', mid, '--size', '8M']);
  await writeThroughVblk(t, top, ['write -P 0x31 7M 64k', 'write -P 0x32 512k 64k']);
  const qemuMap = mapRuns(await imgMap(t, [top], 'qemu-img'));
  t.same(mapRuns(await imgMap(t, [top], 'vblk')), qemuMap, 'vblk map says what qemu-img map says');
  for (const k of ['depth=2 present=false zero=true data=false', 'depth=1 present=false zero=true data=false', 'depth=0 present=false zero=true data=false']) {
    t.ok(qemuMap.some((r) => r.value === k), `premise: qemu-img map has a run with ${k}`, { qemuMap });
  }
  const topMaps = await nbdMapsAgree(t, top, 'qcow2', dir, 'top');
  t.same(topMaps.depth, depthsOf(await imgMap(t, [top], 'qemu-img'), 3), 'qemu:allocation-depth agrees with the depths of qemu-img map');
  t.ok(topMaps.depth.some((r) => r.value === '0'), 'some of it is absent', { depth: topMaps.depth });
  await nbdMapsAgree(t, mid, 'qcow2', dir, 'mid');
  await nbdMapsAgree(t, base, 'qcow2', dir, 'base');
  await qemuCheck(t, [base, mid, top]);
});

t.test('negative control: a map that differs is told apart', async (t) => {
  const dir = tempDir(t);
  const { top } = await chain(t, dir, 64 * KiB);
  const before = mapRuns(await imgMap(t, [top], 'vblk'));
  // One more cluster written by QEMU changes qemu-img's map; vblk's must follow.
  await qemuIo(t, top, 'qcow2', ['write -P 0x77 12M 64k']);
  const after = mapRuns(await imgMap(t, [top], 'qemu-img'));
  t.notSame(before, after, 'the old map no longer matches');
  t.same(mapRuns(await imgMap(t, [top], 'vblk')), after, 'and vblk map follows');
  await qemuCheck(t, [top]);
});
