// Small file systems and loop devices for tests that need a full disk or
// failing write-back. They need root (CI runs as root); each is undone
// when the test ends.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { sys } from './system.js';

interface Teardown {
  teardown(fn: () => unknown): void;
}

/**
 * Mounts a tmpfs of `size` (like '1M') on a mount point of its own (not
 * inside a tempDir(), whose removal would fail on a mount point);
 * unmounted and removed when the test ends.
 */
export function mountTmpfs(t: Teardown, size: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vblk-tmpfs-'));
  const mounted = sys('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir]);
  if (mounted.code !== 0) {
    fs.rmdirSync(dir);
    throw new Error(`mounting a tmpfs needs root: ${mounted.out}`);
  }
  t.teardown(() => {
    if (sys('umount', [dir]).code !== 0) sys('umount', ['-l', dir]);
    fs.rmdirSync(dir);
  });
  return dir;
}

/** Attaches `file` to a free loop device and returns its path (/dev/loopN). */
export function loopDevice(t: Teardown, file: string): string {
  const found = sys('losetup', ['--find', '--show', file]);
  if (found.code !== 0) throw new Error(`losetup ${file}: ${found.out}`);
  const dev = found.out.trim();
  t.teardown(() => sys('losetup', ['-d', dev]));
  return dev;
}

/**
 * A loop device of 64 MiB over a sparse file in a 1 MiB tmpfs: writes
 * land in its page cache, and the write-back of anything past the first
 * megabyte fails (ENOSPC in the backing file, EIO or ENOSPC to fsync).
 */
export function loopWithFailingWriteback(t: Teardown): string {
  const backing = path.join(mountTmpfs(t, '1M'), 'backing.img');
  fs.writeFileSync(backing, '');
  fs.truncateSync(backing, 64 << 20);
  return loopDevice(t, backing);
}
