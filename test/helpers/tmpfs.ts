// A directory on tmpfs, for tests of file systems without non-blocking
// reads. /dev/shm is tmpfs on most Linux machines; where it is not, or it
// is too small (a container's is often 64 MiB), the directory gets a tmpfs
// of its own, which needs root. Anything else fails with the reason: a
// test that silently ran on another file system would prove nothing.
// test/engine-matrix.mjs uses makeTmpfsDir for its TMPDIR pass.

import fs from 'node:fs';
import path from 'node:path';
import { sys } from './system.js';

const TMPFS_MAGIC = 0x01021994;
const SHM = '/dev/shm';
/** Free space /dev/shm must have to be used: the interop suite's images run to a few hundred MiB. */
const MIN_FREE = 1 << 30;

export function isTmpfs(dir: string): boolean {
  return fs.statfsSync(dir).type === TMPFS_MAGIC;
}

function freeBytes(dir: string): number {
  const s = fs.statfsSync(dir);
  return s.bavail * s.bsize;
}

export interface TmpfsDir {
  dir: string;
  /** Removes the directory (and unmounts the tmpfs it had of its own). */
  remove(): void;
}

/** A fresh directory on tmpfs; throws with the reason where there can be none. */
export function makeTmpfsDir(prefix = 'vblk-tmpfs-'): TmpfsDir {
  let shm = 'is missing';
  if (fs.existsSync(SHM)) {
    if (!isTmpfs(SHM)) shm = 'is not tmpfs';
    else if (freeBytes(SHM) < MIN_FREE) shm = `has only ${freeBytes(SHM) >> 20} MiB free`;
    else {
      const dir = fs.mkdtempSync(path.join(SHM, prefix));
      return { dir, remove: () => fs.rmSync(dir, { recursive: true, force: true }) };
    }
  }
  if (process.getuid?.() !== 0) throw new Error(`no tmpfs to test on: ${SHM} ${shm}, and mounting one needs root`);
  const dir = fs.mkdtempSync(path.join(fs.realpathSync('/tmp'), prefix));
  const mount = sys('mount', ['-t', 'tmpfs', '-o', 'mode=0755', 'vblk-test', dir]);
  if (mount.code !== 0) {
    fs.rmdirSync(dir);
    throw new Error(`no tmpfs to test on: ${SHM} ${shm}, and mount -t tmpfs failed: ${mount.out}`);
  }
  return {
    dir,
    remove: () => {
      const umount = sys('umount', [dir]);
      if (umount.code !== 0) throw new Error(`umount ${dir} failed: ${umount.out}`);
      fs.rmdirSync(dir);
    },
  };
}

/** A fresh directory on tmpfs, removed when the test ends. */
export function tmpfsDir(t: { teardown(fn: () => unknown): void }, prefix?: string): string {
  const { dir, remove } = makeTmpfsDir(prefix);
  t.teardown(remove);
  return dir;
}
