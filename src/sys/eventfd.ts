// eventfd(2): the kick (front end -> vblk) and call (vblk -> front end)
// notifications of vhost-user. A counter read and written 8 bytes at a
// time; fs.readSync/writeSync do that, only the creation needs koffi.

import fs from 'node:fs';
import { errno, optionalFunc, systemError, unavailable } from './libc.js';

export const EFD_NONBLOCK = 0x800;
export const EFD_CLOEXEC = 0x80000;

type Create = (initval: number, flags: number) => number;
const create = process.platform === 'linux' ? optionalFunc<Create>('int eventfd(unsigned int initval, int flags)') : null;

/** A new eventfd; non-blocking and close-on-exec unless `flags` says otherwise. */
export function eventfd(initval = 0, flags = EFD_NONBLOCK | EFD_CLOEXEC): number {
  if (!create) throw unavailable('eventfd');
  const fd = create(initval, flags);
  if (fd < 0) throw systemError('eventfd', errno());
  return fd;
}

const scratch = Buffer.alloc(8);

/**
 * Takes the counter (resetting it to 0; with EFD_SEMAPHORE, 0x1, takes 1):
 * the value, or 0 when it was already 0. The descriptor must be
 * non-blocking (eventfd() makes it so, and so does watchFd), or a read
 * of a zero counter would block the event loop. A value above 2^53 is
 * rounded. Throws when the descriptor gives anything but 8 bytes.
 */
export function eventfdRead(fd: number): number {
  let n;
  try {
    n = fs.readSync(fd, scratch, 0, 8, null);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EAGAIN') return 0;
    throw err;
  }
  // Anything else a front end passed off as an eventfd: a pipe at its end, a socket.
  if (n !== 8) throw new Error(`read ${n} bytes from descriptor ${fd}, not an eventfd's 8`);
  return Number(scratch.readBigUInt64LE(0));
}

/** Adds `value` (default 1) to the counter, waking whoever polls it. */
export function eventfdWrite(fd: number, value = 1): void {
  scratch.writeBigUInt64LE(BigInt(value), 0);
  fs.writeSync(fd, scratch, 0, 8, null);
}
