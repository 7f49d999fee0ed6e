// Sparse images with a known layout, shared by the interop tests that
// compare a client's view of allocation (qemu-img map, nbdinfo --map,
// nbdsh block_status) with what the file really holds.
//
// The file is created by truncation, so it starts as one hole; data is
// then written at chosen offsets. ext4 (and tmpfs) allocate whole 4 KiB
// blocks, so a write of any size turns every block it touches into data:
// the expected layout rounds each write out to 4 KiB boundaries.

import { randomBytes } from 'node:crypto';
import fs from 'node:fs';

export const BLOCK = 4096;

export interface Range {
  offset: number;
  length: number;
}

export interface Extent extends Range {
  data: boolean;
}

/**
 * Creates FILE as a sparse file of SIZE bytes with random data written at
 * each range. Returns the bytes written, to compare reads against.
 */
export function makeSparse(file: string, size: number, writes: Range[]): Buffer {
  const content = Buffer.alloc(size);
  const fd = fs.openSync(file, 'wx');
  try {
    fs.ftruncateSync(fd, size);
    for (const w of writes) {
      const data = randomBytes(w.length);
      // No byte of data is zero, so a read of zeroes can never pass for data.
      for (let i = 0; i < data.length; i++) if (data[i] === 0) data[i] = 1;
      data.copy(content, w.offset);
      fs.writeSync(fd, data, 0, data.length, w.offset);
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  return content;
}

/** The layout of a file of SIZE bytes with WRITES, at BLOCK granularity, adjacent extents merged. */
export function expectedLayout(size: number, writes: Range[], block = BLOCK): Extent[] {
  const regions = writes
    .map((w) => ({
      offset: Math.floor(w.offset / block) * block,
      end: Math.min(size, Math.ceil((w.offset + w.length) / block) * block),
    }))
    .sort((a, b) => a.offset - b.offset);
  const out: Extent[] = [];
  let pos = 0;
  for (const r of regions) {
    if (r.offset > pos) out.push({ offset: pos, length: r.offset - pos, data: false });
    const start = Math.max(pos, r.offset);
    if (r.end > start) out.push({ offset: start, length: r.end - start, data: true });
    pos = Math.max(pos, r.end);
  }
  if (pos < size) out.push({ offset: pos, length: size - pos, data: false });
  return mergeExtents(out);
}

/** Joins neighbouring extents of the same kind; the protocol allows a server to split them. */
export function mergeExtents(extents: Extent[]): Extent[] {
  const out: Extent[] = [];
  for (const e of extents) {
    const last = out[out.length - 1];
    if (last && last.data === e.data && last.offset + last.length === e.offset) last.length += e.length;
    else out.push({ ...e });
  }
  return out;
}

/** Bytes the file system has allocated to FILE (st_blocks is in 512-byte units). */
export function allocatedBytes(file: string): number {
  return fs.statSync(file).blocks * 512;
}

/** Total length of the data extents. */
export function dataBytes(layout: Extent[]): number {
  return layout.filter((e) => e.data).reduce((n, e) => n + e.length, 0);
}

/** LENGTH bytes of FILE from OFFSET. */
export function readRange(file: string, offset: number, length: number): Buffer {
  const buf = Buffer.alloc(length);
  const fd = fs.openSync(file, 'r');
  try {
    let done = 0;
    while (done < length) {
      const n = fs.readSync(fd, buf, done, length - done, offset + done);
      if (n === 0) break;
      done += n;
    }
    return buf.subarray(0, done);
  } finally {
    fs.closeSync(fd);
  }
}

/** A layout with data at the start, an unaligned write inside one block, a run across a block boundary and data up to the end. */
export function standardWrites(size: number): Range[] {
  const MiB = 1 << 20;
  return [
    { offset: 0, length: BLOCK },
    { offset: MiB + 100, length: 50 },
    { offset: 5 * MiB - 10, length: 3 * MiB + 10 },
    { offset: size - 6000, length: 6000 },
  ];
}
