// System tools for tests that need root: mount, losetup, mkfs. They live
// in sbin, which TOOL_ENV may lack. Such tests skip only where this host
// cannot mount a loop device at all (cannotMount says why).

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { TOOL_ENV } from './tools.js';

export const SYS_ENV = { ...TOOL_ENV, PATH: `/usr/sbin:/sbin:${TOOL_ENV.PATH}` };

/** Runs a system tool to completion: its exit code and its stdout and stderr together. */
export function sys(cmd: string, args: string[]): { code: number | null; out: string } {
  const r = spawnSync(cmd, args, { env: SYS_ENV, encoding: 'utf8' });
  return { code: r.error ? -1 : r.status, out: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error?.message ?? ''}` };
}

/** Why this host cannot mount a loop device, or null when it can try. */
export function cannotMount(): string | null {
  if (process.getuid?.() !== 0) return 'not root, so no loop mount';
  if (!fs.existsSync('/dev/loop-control') && !fs.existsSync('/dev/loop0')) return 'no loop devices (/dev/loop-control)';
  if (sys('losetup', ['-f']).code !== 0) return 'no free loop device (losetup -f)';
  return null;
}
