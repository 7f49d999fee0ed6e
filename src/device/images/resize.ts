// Changing an image's virtual size while nothing serves it (the image is
// locked for writing as QEMU would lock it). A raw image is truncated; it
// shrinks only when asked, since what lies past the new end is lost. A
// qcow2 image grows (its L1 table moves to a larger one when needed) and
// never shrinks. Backing files are not touched: an overlay larger than
// its backing file reads zeroes past the backing file's end.

import fs from 'node:fs';
import type { IoEngine } from '../../io/engine.js';
import { lockFor } from './lock.js';
import { detectFormat, openImage } from './open.js';
import { Qcow2Image } from './qcow2/qcow2-image.js';
import { openImageFile } from './raw.js';

export interface Resized {
  format: 'raw' | 'qcow2';
  from: number;
  to: number;
}

/** The new size, given the current virtual size. */
export type NewSize = (current: number) => number;

export async function resizeImage(file: string, newSize: NewSize, engine: IoEngine, options: { shrink?: boolean } = {}): Promise<Resized> {
  if (detectFormat(file) === 'raw') return resizeRaw(file, newSize, options.shrink === true);
  const image = await openImage(file, { readOnly: false, engine });
  try {
    if (!(image instanceof Qcow2Image)) throw new Error(`${file}: not a qcow2 image`);
    const from = image.size;
    const size = checked(file, newSize(from));
    await image.grow(size);
    return { format: 'qcow2', from, to: size };
  } finally {
    await image.close();
  }
}

function checked(file: string, size: number): number {
  if (!Number.isSafeInteger(size) || size <= 0) throw new Error(`${file}: the new size must be a whole number of bytes above 0, not ${size}`);
  return size;
}

function resizeRaw(file: string, newSize: NewSize, shrink: boolean): Resized {
  const fd = openImageFile(file, false, false);
  try {
    lockFor(fd, file, { readOnly: false });
    const stat = fs.fstatSync(fd);
    if (!stat.isFile()) throw new Error(`${file} is not a regular file; a block device has the size it has`);
    const size = checked(file, newSize(stat.size));
    if (size < stat.size && !shrink) {
      throw new Error(`${file}: ${size} bytes is smaller than its ${stat.size}; pass --shrink to cut off the end (its data is lost)`);
    }
    fs.ftruncateSync(fd, size);
    fs.fsyncSync(fd);
    return { format: 'raw', from: stat.size, to: size };
  } finally {
    fs.closeSync(fd);
  }
}
