// Small file systems and loop devices for tests that need a full disk or
// failing write-back. They need root (CI runs as root); each is undone
// when the test ends.

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

interface Teardown {
  teardown(fn: () => unknown): void;
}

/** Mounts a tmpfs of `size` (like '1M') on a new directory under `parent`. */
export function mountTmpfs(t: Teardown, parent: string, size: string): string {
  const dir = fs.mkdtempSync(path.join(parent, 'tmpfs-'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir]);
  t.teardown(() => execFileSync('umount', ['-l', dir]));
  return dir;
}

/** Attaches `file` to a free loop device and returns its path (/dev/loopN). */
export function loopDevice(t: Teardown, file: string): string {
  const dev = execFileSync('losetup', ['--find', '--show', file], { encoding: 'utf8' }).trim();
  t.teardown(() => execFileSync('losetup', ['-d', dev]));
  return dev;
}
