// Image locking that QEMU understands. QEMU marks what an open image
// uses and what it lets others do with open-file-description read locks
// on single bytes of the image file: byte 100 + i when it holds
// permission i, byte 200 + i when it does not share permission i (the
// bits: 0 consistent read, 1 write, 2 write unchanged, 3 resize). Opening
// takes our bytes first, then looks for others' conflicting bytes: for a
// permission we hold, nobody may hold 200 + i; for one we do not share,
// nobody may hold 100 + i. So a vblk serving an image writable and a QEMU
// writing it refuse each other, and readers that do not share writes
// (qemu-img without -U, vblk's backing files) keep writers out.
//
// A writable open holds read, write and write-unchanged and shares read
// and write-unchanged, like a QEMU guest disk; a read-only open holds read
// and shares the same. Locks live as long as the descriptor. Where the
// host has no OFD locks (macOS), images are not locked, as in QEMU.

import { lockedByOthers, ofdLocksAvailable, sharedLock } from '../../sys/syscalls.js';

const PERM_BASE = 100;
const SHARED_BASE = 200;

const PERMISSIONS = ['consistent read', 'write', 'write unchanged', 'resize'] as const;
const READ = 1 << 0;
const WRITE = 1 << 1;
const WRITE_UNCHANGED = 1 << 2;
const ALL = (1 << PERMISSIONS.length) - 1;

export type LockMode = 'read' | 'write';

interface Permissions {
  held: number;
  shared: number;
}

const MODES: Record<LockMode, Permissions> = {
  read: { held: READ, shared: READ | WRITE_UNCHANGED },
  write: { held: READ | WRITE | WRITE_UNCHANGED, shared: READ | WRITE_UNCHANGED },
};

export class ImageLockedError extends Error {
  constructor(path: string, permission: string, sharedOnly: boolean) {
    super(
      `${path}: failed to get ${sharedOnly ? 'shared ' : ''}"${permission}" lock: ` +
        'another process (QEMU, or another vblk) is using the image',
    );
    this.name = 'ImageLockedError';
  }
}

/** Locks the image open on `fd` for `mode`; throws ImageLockedError on a conflict. */
export function lockImage(fd: number, path: string, mode: LockMode): void {
  if (!ofdLocksAvailable) return;
  const { held, shared } = MODES[mode];
  for (let bit = 0; bit < PERMISSIONS.length; bit++) {
    if (held & (1 << bit)) take(fd, path, PERM_BASE + bit);
    if (~shared & ALL & (1 << bit)) take(fd, path, SHARED_BASE + bit);
  }
  for (let bit = 0; bit < PERMISSIONS.length; bit++) {
    if (held & (1 << bit) && lockedByOthers(fd, SHARED_BASE + bit, 1)) {
      throw new ImageLockedError(path, PERMISSIONS[bit], false);
    }
    if (~shared & ALL & (1 << bit) && lockedByOthers(fd, PERM_BASE + bit, 1)) {
      throw new ImageLockedError(path, PERMISSIONS[bit], true);
    }
  }
}

/** Locks an image as QEMU would for this open, unless forceShare asks not to (read-only only). */
export function lockFor(fd: number, path: string, options: { readOnly: boolean; forceShare?: boolean }): void {
  if (options.forceShare) {
    if (!options.readOnly) throw new Error(`${path}: sharing an image without locks needs read-only`);
    return;
  }
  lockImage(fd, path, options.readOnly ? 'read' : 'write');
}

function take(fd: number, path: string, byte: number): void {
  try {
    sharedLock(fd, byte, 1);
  } catch (err) {
    // Only an exclusive lock on the byte blocks ours; QEMU never keeps one.
    if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
    throw new ImageLockedError(path, PERMISSIONS[(byte % 100) as 0 | 1 | 2 | 3], byte >= SHARED_BASE);
  }
}
