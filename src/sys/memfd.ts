// memfd_create(2): an anonymous file in memory, the way vhost-user front
// ends share guest RAM. vblk's tests play the front end with it; size it
// with fs.ftruncateSync and close it with fs.closeSync.

import { errno, optionalFunc, systemError, unavailable } from './libc.js';

export const MFD_CLOEXEC = 0x1;

type Create = (name: string, flags: number) => number;
const create = process.platform === 'linux' ? optionalFunc<Create>('int memfd_create(const char *name, unsigned int flags)') : null;

/** A new empty memfd (close-on-exec unless `flags` says otherwise); `name` shows in /proc/PID/fd. */
export function memfdCreate(name: string, flags = MFD_CLOEXEC): number {
  if (!create) throw unavailable('memfd_create');
  const fd = create(name, flags);
  if (fd < 0) throw systemError('memfd_create', errno());
  return fd;
}
