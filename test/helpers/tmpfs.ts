// A directory on tmpfs, for tests of file systems without non-blocking
// reads. /dev/shm is tmpfs on most Linux machines; where it is not, or it
// is too small (a container's is often 64 MiB), the directory gets a tmpfs
// of its own, which needs root. Anything else fails with the reason: a
// test that silently ran on another file system would prove nothing.
// test/engine-matrix.mjs uses makeTmpfsDir for its TMPDIR pass.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const TMPFS_MAGIC = 0x01021994;
const SHM = '/dev/shm';
/** Free space /dev/shm must have to be used: the interop suite's images run to a few hundred MiB. */
const MIN_FREE = 1 << 30;
/** mount and umount live in sbin, which a non-root PATH may lack. */
const SYSTEM_PATH = `/usr/sbin:/sbin:/usr/bin:/bin:${process.env.PATH ?? ''}`;

export function isTmpfs(dir: string): boolean {
  return fs.statfsSync(dir).type === TMPFS_MAGIC;
}

function freeBytes(dir: string): number {
  const s = fs.statfsSync(dir);
  return s.bavail * s.bsize;
}

function system(cmd: string, args: string[]): { ok: boolean; out: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: { ...process.env, PATH: SYSTEM_PATH } });
  return { ok: r.status === 0, out: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error?.message ?? ''}`.trim() };
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
  const mount = system('mount', ['-t', 'tmpfs', '-o', 'mode=0755', 'vblk-test', dir]);
  if (!mount.ok) {
    fs.rmdirSync(dir);
    throw new Error(`no tmpfs to test on: ${SHM} ${shm}, and mount -t tmpfs failed: ${mount.out}`);
  }
  return {
    dir,
    remove: () => {
      const umount = system('umount', [dir]);
      if (!umount.ok) throw new Error(`umount ${dir} failed: ${umount.out}`);
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
