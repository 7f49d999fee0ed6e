// Cloning a whole image file. First the reflink: ioctl(FICLONE) makes DST
// share SRC's extents, O(1) on XFS and btrfs. Where the file system (or
// the pair of them) cannot, the copy walks SRC's data extents with
// SEEK_DATA/SEEK_HOLE and copies each with copy_file_range, so holes stay
// holes and the kernel moves the bytes; where copy_file_range cannot
// either (SRC and DST on different kinds of file system), the extents go
// through pread/pwrite instead. DST is created exclusively and removed
// if the clone fails; with `force` an existing DST is replaced by a
// temporary file renamed over it once whole, so a failure leaves it be.
// A qcow2 file is copied as it is, so its backing name stays what it
// was: a relative name that would point elsewhere (or nowhere) from DST's
// directory is refused before anything is written.

import fs from 'node:fs';
import path from 'node:path';
import { copyFileRange, ficlone, seek } from '../../sys/syscalls.js';
import { lockImage } from './lock.js';
import { decodeHeader, INCOMPAT, QCOW2_MAGIC } from './qcow2/format.js';

/** How far the copy has got: bytes of data copied out of the bytes SRC holds. */
export type CloneProgress = (done: number, total: number) => void;

export interface CloneOptions {
  /** Replace an existing DST. */
  force?: boolean;
  /** Called during a copy (never for a reflink). */
  progress?: CloneProgress;
  /** Skip the reflink and copy (for tests of the copy on a reflink file system). */
  noReflink?: boolean;
}

/** How DST was made; for a copy, `reason` says why not by reflink (null: not tried). */
export type CloneResult =
  | { method: 'reflink'; size: number }
  | { method: 'copy_file_range' | 'read/write'; size: number; copied: number; reason: string | null };

/** Errors of FICLONE that mean "not here", as opposed to a real failure. */
const NO_REFLINK: Record<string, string> = {
  EOPNOTSUPP: 'the file system cannot share extents',
  ENOTSUP: 'the file system cannot share extents',
  EXDEV: 'SRC and DST are on different file systems',
  EINVAL: 'the file system refused to share these extents',
  ENOTTY: 'the file system has no FICLONE',
  ENOSYS: 'ioctl(FICLONE) is not available on this host',
};

/** Errors of copy_file_range after which pread/pwrite still can copy. */
const NO_COPY_RANGE = new Set(['EXDEV', 'EOPNOTSUPP', 'ENOTSUP', 'EINVAL', 'ENOSYS']);

const CHUNK = 32 << 20;

function code(err: unknown): string {
  return String((err as NodeJS.ErrnoException).code ?? '');
}

/**
 * The backing file name a qcow2 header records, or null (raw, or no
 * backing file). Throws for a qcow2 file whose clone would share data
 * with it (an external data file) or whose header cannot be read.
 */
export function backingName(file: string): string | null {
  const fd = fs.openSync(file, 'r');
  let header;
  try {
    const head = Buffer.alloc(2 << 20);
    const n = fs.readSync(fd, head, 0, head.length, 0);
    if (n < 4 || head.readUInt32BE(0) !== QCOW2_MAGIC) return null;
    try {
      header = decodeHeader(head.subarray(0, n));
    } catch (err) {
      throw new Error(`${file}: cannot read its qcow2 header (${(err as Error).message}), so its backing file is unknown`);
    }
  } finally {
    fs.closeSync(fd);
  }
  if (header.incompatible & INCOMPAT.DATA_FILE) {
    throw new Error(`${file} keeps its data in an external data file; a copy of it would share that file`);
  }
  return header.backingFile;
}

function sameFile(a: string, b: string): boolean {
  try {
    const x = fs.statSync(a);
    const y = fs.statSync(b);
    return x.dev === y.dev && x.ino === y.ino;
  } catch {
    return false;
  }
}

/**
 * Throws when SRC's backing name, read from DST's directory, would not
 * name the file it names from SRC's directory.
 */
export function checkBacking(src: string, dst: string): void {
  const name = backingName(src);
  if (name === null || path.isAbsolute(name)) return;
  const fromSrc = path.resolve(path.dirname(src), name);
  const fromDst = path.resolve(path.dirname(dst), name);
  if (fromSrc === fromDst || sameFile(fromSrc, fromDst)) return;
  const there = fs.existsSync(fromDst) ? `a different file, ${fromDst}` : `${fromDst}, which does not exist`;
  throw new Error(
    `${src} has the relative backing file '${name}' (${fromSrc}); from ${dst} it would name ${there}. ` +
      `Clone into ${path.dirname(path.resolve(src))} (or wherever '${name}' names the same file), ` +
      `or make an overlay instead: vblk create ${dst} --backing ${fromSrc}`,
  );
}

/** SRC's data extents, [offset, end) pairs, in order. Without SEEK_DATA the whole file is one extent. */
export function dataExtents(fd: number, size: number): [number, number][] {
  const out: [number, number][] = [];
  try {
    let offset = seek(fd, 0, 'data');
    while (offset !== null && offset < size) {
      const end = Math.min(size, seek(fd, offset, 'hole') ?? size);
      out.push([offset, end]);
      offset = end < size ? seek(fd, end, 'data') : null;
    }
    return out;
  } catch (err) {
    if (code(err) !== 'ENOSYS' && code(err) !== 'EINVAL') throw err;
    return size > 0 ? [[0, size]] : [];
  }
}

function readWrite(src: number, dst: number, offset: number, length: number, buf: Buffer): number {
  const n = fs.readSync(src, buf, 0, Math.min(length, buf.length), offset);
  let done = 0;
  while (done < n) done += fs.writeSync(dst, buf, done, n - done, offset + done);
  return n;
}

/** Copies SRC's data extents into DST (already SRC's size, all hole). */
function sparseCopy(src: number, dst: number, size: number, progress?: CloneProgress): { copied: number; method: 'copy_file_range' | 'read/write' } {
  const extents = dataExtents(src, size);
  const total = extents.reduce((n, [a, b]) => n + b - a, 0);
  let method: 'copy_file_range' | 'read/write' = 'copy_file_range';
  let buf: Buffer | null = null;
  let copied = 0;
  progress?.(0, total);
  for (const [start, end] of extents) {
    let offset = start;
    while (offset < end) {
      const want = Math.min(CHUNK, end - offset);
      let n = 0;
      if (method === 'copy_file_range') {
        try {
          n = copyFileRange(src, offset, dst, offset, want);
        } catch (err) {
          if (!NO_COPY_RANGE.has(code(err)) || copied > 0) throw err;
          method = 'read/write';
        }
      }
      if (method === 'read/write') n = readWrite(src, dst, offset, want, (buf ??= Buffer.allocUnsafe(1 << 20)));
      if (n === 0) throw new Error(`the source became shorter during the copy (at ${offset} of ${size} bytes)`);
      offset += n;
      copied += n;
      progress?.(copied, total);
    }
  }
  return { copied, method };
}

/** Throws when another process has FILE open with QEMU-style locks that keep writers out. */
function refuseInUse(file: string): void {
  const fd = fs.openSync(file, 'r+');
  try {
    lockImage(fd, file, 'write');
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Clones SRC to DST: a reflink where the file system can, a sparse copy
 * otherwise. DST gets SRC's permission bits. SRC is locked for reading
 * as QEMU would lock it, so an image a VM or vblk serve is writing is
 * refused rather than copied half-written; so is replacing a DST in use.
 */
export function cloneImage(src: string, dst: string, options: CloneOptions = {}): CloneResult {
  const st = fs.statSync(src, { throwIfNoEntry: false });
  if (!st) throw new Error(`${src} does not exist`);
  if (!st.isFile()) throw new Error(`${src} is not a regular file`);
  const existing = fs.statSync(dst, { throwIfNoEntry: false });
  if (existing) {
    if (existing.dev === st.dev && existing.ino === st.ino) throw new Error(`${src} and ${dst} are the same file`);
    if (!options.force) throw new Error(`${dst} exists already; use --force to replace it`);
    if (existing.isDirectory()) throw new Error(`${dst} is a directory`);
    refuseInUse(dst);
  }
  checkBacking(src, dst);

  // With force, the old DST stays until the new one is whole.
  const target = existing ? path.join(path.dirname(dst), `.${path.basename(dst)}.clone-${process.pid}`) : dst;
  const srcFd = fs.openSync(src, 'r');
  let dstFd: number | null = null;
  let created = false;
  try {
    lockImage(srcFd, src, 'read');
    try {
      dstFd = fs.openSync(target, 'wx', st.mode & 0o777);
    } catch (err) {
      if (code(err) === 'EEXIST') throw new Error(`${target} exists already${target === dst ? '; use --force to replace it' : ''}`);
      throw err;
    }
    created = true;
    fs.fchmodSync(dstFd, st.mode & 0o777);
    let result: CloneResult;
    let reason: string | null = null;
    let cloned = false;
    if (!options.noReflink) {
      try {
        ficlone(dstFd, srcFd);
        cloned = true;
      } catch (err) {
        const why = NO_REFLINK[code(err)];
        if (!why) throw err;
        reason = `${code(err)}, ${why}`;
      }
    }
    if (cloned) {
      result = { method: 'reflink', size: st.size };
    } else {
      fs.ftruncateSync(dstFd, st.size);
      const { copied, method } = sparseCopy(srcFd, dstFd, st.size, options.progress);
      result = { method, size: st.size, copied, reason };
    }
    fs.fsyncSync(dstFd);
    fs.closeSync(dstFd);
    dstFd = null;
    if (target !== dst) fs.renameSync(target, dst);
    return result;
  } catch (err) {
    // Only a file this call created is removed.
    if (dstFd !== null) fs.closeSync(dstFd);
    if (created) fs.rmSync(target, { force: true });
    throw err;
  } finally {
    fs.closeSync(srcFd);
  }
}
