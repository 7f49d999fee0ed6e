// New qcow2 version 3 images, laid out as qemu-img lays them out: the
// header in cluster 0, the refcount table in cluster 1, one refcount
// block in cluster 2, the L1 table from cluster 3. Everything after that
// is allocated as the guest writes.

import fs from 'node:fs';
import path from 'node:path';
import { encodeEntry, encodeHeader, writeRefcount } from './format.js';

export interface NewQcow2 {
  size: number;
  /** log2 of the cluster size; 16 (64 KiB) unless given. */
  clusterBits?: number;
  /** The backing file as it should be recorded (relative to the new image's directory). */
  backingFile?: string;
  backingFormat?: string;
}

export function createQcow2(file: string, spec: NewQcow2): void {
  const bits = spec.clusterBits ?? 16;
  if (bits < 9 || bits > 21) throw new Error('cluster size must be a power of two from 512 bytes to 2 MiB');
  const cs = 2 ** bits;
  const l1Size = Math.max(1, Math.ceil(spec.size / (cs * (cs / 8))));
  const l1Clusters = Math.ceil((l1Size * 8) / cs);
  const used = 3 + l1Clusters;
  if (used > (cs * 8) / 16) throw new Error('virtual size too large for this cluster size');
  const image = Buffer.alloc(used * cs);
  encodeHeader(image.subarray(0, cs), {
    clusterBits: bits,
    size: spec.size,
    l1Size,
    l1TableOffset: 3 * cs,
    refcountTableOffset: cs,
    refcountTableClusters: 1,
    backingFile: spec.backingFile ?? null,
    backingFormat: spec.backingFormat ?? null,
  });
  encodeEntry(image, cs, 2 * cs, false);
  const block = image.subarray(2 * cs, 3 * cs);
  for (let c = 0; c < used; c++) writeRefcount(block, c, 4, 1);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const fd = fs.openSync(file, 'wx');
  try {
    fs.writeSync(fd, image, 0, image.length, 0);
    fs.fsyncSync(fd);
  } catch (err) {
    fs.closeSync(fd);
    fs.rmSync(file, { force: true });
    throw err;
  }
  fs.closeSync(fd);
}
