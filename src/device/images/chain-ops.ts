// Operations on backing chains that move data between layers: streaming a
// layer's own clusters up into the overlay above it (so the layer can be
// dropped), committing an overlay down into its backing file, and
// pointing a qcow2 image at a different backing file. They open images
// writable, so QEMU-style locks keep them off images in use.

import fs from 'node:fs';
import path from 'node:path';
import type { IoEngine } from '../../io/engine.js';
import { joinSegments, request, type BlockDevice } from '../types.js';
import { imageMap, type MapEntry } from './map.js';
import { backingChain, openImage, openLayer, type Format } from './open.js';
import type { CephOptions } from './rbd-cluster.js';
import { decodeHeader, encodeHeader } from './qcow2/format.js';

export type Progress = (done: number, total: number) => void;

const CHUNK = 4 << 20;

/**
 * Copies into `target` (the top of an open chain) every range the chain
 * layer at `depth` (0 = target) holds itself: data is written, zeroes
 * are written as zeroes. Returns the bytes moved.
 */
async function copyLayer(source: BlockDevice, target: BlockDevice, map: MapEntry[], depth: number, progress?: Progress): Promise<number> {
  const ranges = map.filter((e) => e.present && e.depth === depth);
  const total = ranges.reduce((n, e) => n + e.length, 0);
  let done = 0;
  for (const e of ranges) {
    for (let off = e.start; off < e.start + e.length; off += CHUNK) {
      const length = Math.min(CHUNK, e.start + e.length - off);
      if (e.data) {
        const data = joinSegments(off, length, await source.read(request('read', off, length)));
        await target.write(request('write', off, length, { data }));
      } else {
        await target.writeZeroes(request('writeZeroes', off, length));
      }
      done += length;
      progress?.(done, total);
    }
  }
  await target.flush();
  return total;
}

/** Rewrites a qcow2 image's backing file reference (null: no backing file). */
export function setBacking(image: string, backing: { file: string; format: Format } | null): void {
  const fd = fs.openSync(image, 'r+');
  try {
    const head = Buffer.alloc(2 << 20);
    const h = decodeHeader(head.subarray(0, fs.readSync(fd, head, 0, head.length, 0)));
    const cluster = Buffer.alloc(2 ** h.clusterBits);
    const relative = backing ? path.relative(path.dirname(path.resolve(image)), backing.file) : null;
    encodeHeader(cluster, { ...h, backingFile: relative, backingFormat: backing?.format ?? null });
    // Fields encodeHeader leaves at zero but the image may have set.
    head.copy(cluster, 72, 72, 100);
    fs.writeSync(fd, cluster, 0, cluster.length, 0);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Streams the clusters of `layer` (a file in `top`'s chain, not top itself)
 * up into the image directly above it, then makes that image skip `layer`:
 * afterwards `layer` can be deleted without changing what `top` reads.
 */
export async function streamOut(top: string, layer: string, engine: IoEngine, progress?: Progress): Promise<void> {
  const chain = backingChain(top);
  const at = chain.findIndex((l) => path.resolve(l.file) === path.resolve(layer));
  if (at <= 0) throw new Error(`${layer} is not below ${top} in its backing chain`);
  const above = chain[at - 1];
  const device = await openImage(above.file, { readOnly: false, engine });
  try {
    const map = await imageMap(device);
    await copyLayer(device, device, map, 1, progress);
  } finally {
    await device.close();
  }
  const below = chain[at + 1] ?? null;
  setBacking(above.file, below && { file: below.file, format: below.format });
}

/**
 * Commits `top` into its backing file: every range top holds itself is
 * written into the backing image. Returns the backing file and the bytes
 * moved. The caller decides whether to empty `top` afterwards.
 */
export async function commitDown(top: string, engine: IoEngine, progress?: Progress, ceph?: CephOptions): Promise<{ backing: string; bytes: number }> {
  const chain = backingChain(top);
  if (chain.length < 2) throw new Error(`${top} has no backing file to commit into`);
  const whole = await openImage(top, { readOnly: true, engine, ceph });
  const map = await imageMap(whole).finally(() => whole.close());
  // top alone, so that its backing file is not open read-only while it is written.
  const source = await openLayer(top, engine);
  try {
    const target = await openImage(chain[1].file, { readOnly: false, engine, ceph });
    try {
      return { backing: chain[1].file, bytes: await copyLayer(source, target, map, 0, progress) };
    } finally {
      await target.close();
    }
  } finally {
    await source.close();
  }
}
