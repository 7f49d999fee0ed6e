// Persistent dirty bitmaps (the bitmaps extension of qcow2.txt): vblk does
// not keep them up to date, so before its first write it marks every one
// in_use, which is what QEMU itself leaves after a crash: QEMU then treats
// them as inconsistent and will not trust them, while their clusters stay
// referenced, so `qemu-img check` finds no leak. Clearing the autoclear
// bit instead (what a program that knows nothing of bitmaps does) makes
// QEMU ignore the whole extension and count the bitmaps' clusters as
// leaked; that remains the fallback for a directory vblk cannot parse.

import { EXT_BITMAPS, type Header } from './format.js';
import type { ImageFile } from '../image-file.js';

const MAX_DIRECTORY = 64 << 20;
const FLAG_IN_USE = 1;

/** Where the bitmap directory is, or null when the extension is missing or implausible. */
function directory(h: Header): { offset: number; size: number; count: number } | null {
  const ext = h.extensions.find((e) => e.type === EXT_BITMAPS);
  if (!ext || ext.data.length < 24) return null;
  const count = ext.data.readUInt32BE(0);
  const size = ext.data.readBigUInt64BE(8);
  const offset = ext.data.readBigUInt64BE(16);
  if (count === 0 || size === 0n || size > BigInt(MAX_DIRECTORY) || offset === 0n) return null;
  if (offset % BigInt(2 ** h.clusterBits) !== 0n || offset > BigInt(Number.MAX_SAFE_INTEGER)) return null;
  return { offset: Number(offset), size: Number(size), count };
}

/**
 * Marks every bitmap in_use and writes the directory back (synced).
 * Returns false if the directory could not be parsed; nothing was written then.
 */
export async function markBitmapsInUse(file: ImageFile, h: Header): Promise<boolean> {
  const where = directory(h);
  if (!where) return false;
  const dir = Buffer.from(await file.read(where.offset, where.size));
  const entries: number[] = [];
  let p = 0;
  for (let i = 0; i < where.count; i++) {
    if (p + 24 > dir.length) return false;
    const nameSize = dir.readUInt16BE(p + 18);
    const extra = dir.readUInt32BE(p + 20);
    const length = Math.ceil((24 + extra + nameSize) / 8) * 8;
    if (p + 24 + extra + nameSize > dir.length) return false;
    entries.push(p);
    p += length;
  }
  let changed = false;
  for (const e of entries) {
    const flags = dir.readUInt32BE(e + 12);
    if (flags & FLAG_IN_USE) continue;
    dir.writeUInt32BE((flags | FLAG_IN_USE) >>> 0, e + 12);
    changed = true;
  }
  if (changed) {
    await file.write(dir, where.offset);
    await file.sync();
  }
  return true;
}
