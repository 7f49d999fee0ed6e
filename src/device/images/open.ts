// Opening an image by what it is: raw, or qcow2 with its backing chain.
// A qcow2 image's backing file is found relative to the image's own
// directory, in the format its header names (or, as QEMU does when the
// header says nothing, the format it looks like). Backing files open
// read-only. Chains deeper than MAX_CHAIN are refused as loops. An rbd:
// name (an image in a Ceph cluster, rbd-name.ts) is a raw image wherever
// a file could be, a backing file of a qcow2 overlay included.

import fs from 'node:fs';
import path from 'node:path';
import type { IoEngine } from '../../io/engine.js';
import type { BlockDevice } from '../types.js';
import { decodeHeader, QCOW2_MAGIC } from './qcow2/format.js';
import { Qcow2Image } from './qcow2/qcow2-image.js';
import { lockFor } from './lock.js';
import { openImageFile, RawImage } from './raw.js';
import { openRbd, type RbdLockMode } from './rbd.js';
import type { CephOptions } from './rbd-cluster.js';
import { isRbdName } from './rbd-name.js';

export type Format = 'raw' | 'qcow2';
const MAX_CHAIN = 64;

export function detectFormat(file: string): Format {
  if (isRbdName(file)) return 'raw';
  const fd = fs.openSync(file, 'r');
  try {
    const head = Buffer.alloc(4);
    return fs.readSync(fd, head, 0, 4, 0) === 4 && head.readUInt32BE(0) === QCOW2_MAGIC ? 'qcow2' : 'raw';
  } finally {
    fs.closeSync(fd);
  }
}

export interface OpenOptions {
  readOnly: boolean;
  engine: IoEngine;
  direct?: boolean;
  /** Open without QEMU-compatible image locks (like qemu-img -U); read-only only. */
  forceShare?: boolean;
  /** Told when write-back to the image file first fails (see image-file.ts). */
  onWritebackError?: (file: string, err: Error) => void;
  /** How rbd: images reach their cluster. */
  ceph?: CephOptions;
  /** What a writable rbd: image does when another client holds its lock (default fail). */
  rbdLock?: RbdLockMode;
  /** Told when rbdLock 'wait' starts waiting. */
  onRbdLockWait?: (image: string, owners: string[]) => void;
  /** Told once when an rbd: image finds vblk blocklisted (another client broke its lock). */
  onRbdFenced?: (image: string) => void;
}

/** The layers of a chain, top first: each file and its format. */
export function backingChain(file: string): { file: string; format: Format }[] {
  const chain: { file: string; format: Format }[] = [];
  let current: { file: string; format: Format } | null = { file, format: detectFormat(file) };
  while (current) {
    if (chain.length >= MAX_CHAIN) throw new Error(`${file}: backing chain deeper than ${MAX_CHAIN} (a loop?)`);
    chain.push(current);
    current = current.format === 'qcow2' ? backingOf(current.file) : null;
  }
  return chain;
}

function backingOf(file: string): { file: string; format: Format } | null {
  const fd = fs.openSync(file, 'r');
  let header;
  try {
    const buf = Buffer.alloc(2 << 20);
    header = decodeHeader(buf.subarray(0, fs.readSync(fd, buf, 0, buf.length, 0)));
  } finally {
    fs.closeSync(fd);
  }
  if (!header.backingFile) return null;
  if (isRbdName(header.backingFile)) {
    if (header.backingFormat && header.backingFormat !== 'raw') throw new Error(`${file}: backing format '${header.backingFormat}' of ${header.backingFile} is not supported (RBD images are raw)`);
    return { file: header.backingFile, format: 'raw' };
  }
  const below = path.resolve(path.dirname(file), header.backingFile);
  const format = header.backingFormat ?? detectFormat(below);
  if (format !== 'raw' && format !== 'qcow2') throw new Error(`${file}: backing format '${format}' is not supported`);
  return { file: below, format };
}

export async function openImage(file: string, options: OpenOptions): Promise<BlockDevice> {
  const chain = backingChain(file);
  let below: BlockDevice | null = null;
  try {
    for (let i = chain.length - 1; i >= 0; i--) {
      const layer = chain[i];
      const readOnly = i > 0 || options.readOnly;
      if (isRbdName(layer.file)) {
        below = await openRbd(layer.file, rbdOptions(layer.file, { ...options, readOnly }));
      } else if (layer.format === 'raw') {
        below = RawImage.open(layer.file, { ...options, readOnly });
      } else {
        below = await openQcow2(layer.file, { ...options, readOnly }, below);
      }
    }
  } catch (err) {
    await below?.close();
    throw err;
  }
  return below!;
}

function rbdOptions(name: string, options: OpenOptions): Parameters<typeof openRbd>[1] {
  const { readOnly, ceph, rbdLock: lock, onRbdLockWait, onRbdFenced } = options;
  return {
    readOnly,
    ceph,
    lock,
    onLockWait: onRbdLockWait && ((owners) => onRbdLockWait(name, owners)),
    onFenced: onRbdFenced && (() => onRbdFenced(name)),
  };
}

async function openQcow2(file: string, options: OpenOptions, backing: BlockDevice | null): Promise<Qcow2Image> {
  const fd = openImageFile(file, options.readOnly, options.direct === true);
  try {
    lockFor(fd, file, options);
    const { readOnly, engine, onWritebackError } = options;
    return await Qcow2Image.open(file, { readOnly, engine, backing, fd, onWritebackError: (err) => onWritebackError?.(file, err) });
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
}

/** One layer alone, read-only, without its backing file (reads of what it lacks are zeroes). */
export async function openLayer(file: string, engine: IoEngine, forceShare = false, ceph?: CephOptions): Promise<BlockDevice> {
  if (isRbdName(file)) return openRbd(file, { readOnly: true, ceph });
  if (detectFormat(file) === 'raw') return RawImage.open(file, { readOnly: true, engine, forceShare });
  return openQcow2(file, { readOnly: true, engine, forceShare }, null);
}
