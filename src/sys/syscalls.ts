// The few system calls Node's fs lacks, bound with koffi: lseek with
// SEEK_DATA/SEEK_HOLE (sparse maps), fallocate (punch holes, zero ranges),
// posix_fadvise (read-ahead for CACHE), fcntl(F_NOCACHE) (macOS's
// direct I/O), ioctl(FICLONE) and copy_file_range (vblk clone),
// setsockopt(SO_SNDBUF) (Node sets no socket buffer sizes), getsockopt
// and fcntl(FD_CLOEXEC) for sockets vblk inherits (sys/socket-info.ts),
// getrlimit(RLIMIT_NOFILE) (how many connections fit). They
// are synchronous: each is a metadata operation of microseconds (a
// copy goes in bounded chunks), cheaper than a hop to a
// worker thread. Failures throw an Error carrying the errno name in
// `code`, like Node's own fs errors. Where libc or a call is missing (not
// Linux, no koffi), the call throws ENOSYS and callers fall back. libc
// itself is loaded by libc.ts, shared with the other bindings in sys/.

import { errno, errnoName, koffi, libc, optionalFunc, systemError, unavailable } from './libc.js';

const SEEK_END = 2;
const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const POSIX_FADV_WILLNEED = 3;

export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;

type Fn = (...args: number[]) => number;

/** struct flock; koffi copies it in and, for F_OFD_GETLK, back out. */
interface Flock {
  l_type: number;
  l_whence: number;
  l_start: number;
  l_len: number;
  l_pid: number;
}

/** struct rlimit; a value past 2^53 (RLIM_INFINITY) comes back as a bigint. */
interface Rlimit {
  rlim_cur: number | bigint;
  rlim_max: number | bigint;
}

interface Bindings {
  lseek: Fn;
  fallocate: Fn | null;
  fadvise: Fn | null;
  fcntl: Fn | null;
  fcntlLock: ((fd: number, cmd: number, lock: Flock) => number) | null;
  mallopt: Fn | null;
  mallocTrim: Fn | null;
  setsockopt: ((fd: number, level: number, name: number, value: number[], size: number) => number) | null;
  getsockopt: ((fd: number, level: number, name: number, value: number[], size: number[]) => number) | null;
  ioctl: Fn | null;
  read: ((fd: number, buffer: Buffer, count: number) => number) | null;
  copyFileRange: ((fdIn: number, offIn: number[], fdOut: number, offOut: number[], len: number, flags: number) => number) | null;
  getrlimit: ((resource: number, limit: Partial<Rlimit>) => number) | null;
  errno: () => number;
}

function load(): Bindings | null {
  if (!koffi || !libc) return null;
  try {
    const optional = (proto: string): Fn | null => optionalFunc<Fn>(proto);
    return {
      lseek: libc.func('int64_t lseek(int fd, int64_t offset, int whence)') as Fn,
      fallocate: optional('int fallocate(int fd, int mode, int64_t offset, int64_t len)'),
      fadvise: optional('int posix_fadvise(int fd, int64_t offset, int64_t len, int advice)'),
      fcntl: optional('int fcntl(int fd, int cmd, int arg)'),
      mallopt: optional('int mallopt(int param, int value)'),
      mallocTrim: optional('int malloc_trim(size_t pad)'),
      setsockopt: optional('int setsockopt(int fd, int level, int name, _In_ int *value, uint32_t size)') as Bindings['setsockopt'],
      getsockopt: optional(
        'int getsockopt(int fd, int level, int name, _Out_ int *value, _Inout_ uint32_t *size)',
      ) as Bindings['getsockopt'],
      fcntlLock: (() => {
        try {
          const flock = koffi.struct('flock', {
            l_type: 'short',
            l_whence: 'short',
            l_start: 'int64_t',
            l_len: 'int64_t',
            l_pid: 'int',
          });
          return libc.func('fcntl', 'int', ['int', 'int', koffi.inout(koffi.pointer(flock))]) as Bindings['fcntlLock'];
        } catch {
          return null;
        }
      })(),
      ioctl: optional('int ioctl(int fd, unsigned long request, int arg)'),
      read: optional('long read(int fd, void *buffer, size_t count)') as Bindings['read'],
      copyFileRange: optional(
        'int64_t copy_file_range(int fd_in, _Inout_ int64_t *off_in, int fd_out, _Inout_ int64_t *off_out, size_t len, unsigned int flags)',
      ) as Bindings['copyFileRange'],
      getrlimit: (() => {
        try {
          const rlimit = koffi.struct('rlimit', { rlim_cur: 'uint64_t', rlim_max: 'uint64_t' });
          return libc.func('getrlimit', 'int', ['int', koffi.out(koffi.pointer(rlimit))]) as Bindings['getrlimit'];
        } catch {
          return null;
        }
      })(),
      errno,
    };
  } catch {
    return null;
  }
}

const bindings = load();

/** Why the bindings are missing, or null when they loaded. */
export const syscallsUnavailable: string | null = bindings ? null : 'koffi or libc could not be loaded';

const WHENCE = { end: SEEK_END, data: SEEK_DATA, hole: SEEK_HOLE };

/**
 * lseek: the next offset at or after `offset` where data ('data') or a
 * hole ('hole') starts, or `offset` from the end ('end'). Returns null
 * when there is no data at or after `offset` (ENXIO). Every file ends in
 * a virtual hole at its size.
 */
export function seek(fd: number, offset: number, whence: keyof typeof WHENCE): number | null {
  if (!bindings) throw unavailable('lseek');
  const r = bindings.lseek(fd, offset, WHENCE[whence]);
  if (r >= 0) return Number(r);
  const errno = bindings.errno();
  if (errnoName(errno) === 'ENXIO') return null;
  throw systemError('lseek', errno);
}

export function fallocate(fd: number, mode: number, offset: number, length: number): void {
  if (!bindings?.fallocate) throw unavailable('fallocate');
  if (bindings.fallocate(fd, mode, offset, length) !== 0) throw systemError('fallocate', bindings.errno());
}

export function adviseWillNeed(fd: number, offset: number, length: number): void {
  if (!bindings?.fadvise) throw unavailable('posix_fadvise');
  // posix_fadvise returns the error number instead of setting errno.
  const r = bindings.fadvise(fd, offset, length, POSIX_FADV_WILLNEED);
  if (r !== 0) throw systemError('posix_fadvise', r);
}

const F_NOCACHE = 48;
const F_DUPFD_CLOEXEC = process.platform === 'darwin' ? 67 : 1030;

/** A second descriptor for the same open file (close-on-exec). */
export function duplicateFd(fd: number): number {
  if (!bindings?.fcntl) throw unavailable('fcntl(F_DUPFD_CLOEXEC)');
  const copy = bindings.fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy === -1) throw systemError('fcntl', bindings.errno());
  return copy;
}

const F_GETFD = 1;
const F_SETFD = 2;
const FD_CLOEXEC = 1;

/** Keeps `fd` from being inherited by programs this process starts. */
export function setCloseOnExec(fd: number): void {
  if (!bindings?.fcntl) throw unavailable('fcntl(F_SETFD)');
  const flags = bindings.fcntl(fd, F_GETFD, 0);
  if (flags < 0 || bindings.fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0) throw systemError('fcntl', bindings.errno());
}

/** macOS: bypass the unified buffer cache for this descriptor. */
export function setNoCache(fd: number): void {
  if (process.platform !== 'darwin' || !bindings?.fcntl) throw unavailable('fcntl(F_NOCACHE)');
  if (bindings.fcntl(fd, F_NOCACHE, 1) === -1) throw systemError('fcntl', bindings.errno());
}

const FICLONE = 0x40049409;

/** Linux: make dst share src's extents (a reflink) on XFS, btrfs and the like. */
export function ficlone(dstFd: number, srcFd: number): void {
  if (!bindings?.ioctl || process.platform !== 'linux') throw unavailable('ioctl(FICLONE)');
  if (bindings.ioctl(dstFd, FICLONE, srcFd) === -1) throw systemError('ioctl(FICLONE)', bindings.errno());
}

/**
 * Linux: copy up to `length` bytes from src at srcOffset to dst at
 * dstOffset inside the kernel; returns the bytes copied (0 at src's end).
 */
export function copyFileRange(srcFd: number, srcOffset: number, dstFd: number, dstOffset: number, length: number): number {
  if (!bindings?.copyFileRange) throw unavailable('copy_file_range');
  const r = bindings.copyFileRange(srcFd, [srcOffset], dstFd, [dstOffset], length, 0);
  if (r < 0) throw systemError('copy_file_range', bindings.errno());
  return Number(r);
}

// Open-file-description locks (Linux): owned by the open file, not the
// process, so two opens in one process conflict like two processes do,
// and closing the descriptor releases them.
const F_OFD_GETLK = 36;
const F_OFD_SETLK = 37;
const F_RDLCK = 0;
const F_WRLCK = 1;
const F_UNLCK = 2;
const SEEK_SET = 0;

/** Whether this host has open-file-description locks. */
export const ofdLocksAvailable = process.platform === 'linux' && bindings?.fcntlLock != null;

function ofdLock(fd: number, cmd: number, type: number, start: number, length: number): Flock {
  if (!ofdLocksAvailable) throw unavailable('fcntl(F_OFD_SETLK)');
  const lock: Flock = { l_type: type, l_whence: SEEK_SET, l_start: start, l_len: length, l_pid: 0 };
  if (bindings!.fcntlLock!(fd, cmd, lock) === -1) throw systemError('fcntl', bindings!.errno());
  return lock;
}

/** Takes a shared (read) lock on [start, start + length); throws EAGAIN when another holds it exclusively. */
export function sharedLock(fd: number, start: number, length: number): void {
  ofdLock(fd, F_OFD_SETLK, F_RDLCK, start, length);
}

/** Releases this descriptor's lock on [start, start + length). */
export function unlock(fd: number, start: number, length: number): void {
  ofdLock(fd, F_OFD_SETLK, F_UNLCK, start, length);
}

/** Whether another open file holds any lock on [start, start + length) (it would block an exclusive one). */
export function lockedByOthers(fd: number, start: number, length: number): boolean {
  return ofdLock(fd, F_OFD_GETLK, F_WRLCK, start, length).l_type !== F_UNLCK;
}

/**
 * read(2) on a non-blocking descriptor straight into `buffer`: the bytes
 * read, 0 when none are waiting (EAGAIN) or at end of file. Other errors
 * throw.
 */
export function readNow(fd: number, buffer: Buffer): number {
  if (!bindings?.read) throw unavailable('read');
  const n = Number(bindings.read(fd, buffer, buffer.length));
  if (n >= 0) return n;
  const errno = bindings.errno();
  const code = errnoName(errno);
  if (code === 'EAGAIN' || code === 'EWOULDBLOCK' || code === 'EINTR') return 0;
  throw systemError('read', errno);
}

const SOL_SOCKET = process.platform === 'darwin' ? 0xffff : 1;
const SO_SNDBUF = process.platform === 'darwin' ? 0x1001 : 7;

/**
 * Asks for a socket send buffer of `bytes`; the kernel caps the request
 * at net.core.wmem_max (and Linux doubles it for its bookkeeping).
 * Returns the size the socket has afterwards.
 */
export function setSendBuffer(fd: number, bytes: number): number {
  if (!bindings?.setsockopt) throw unavailable('setsockopt');
  if (bindings.setsockopt(fd, SOL_SOCKET, SO_SNDBUF, [bytes], 4) !== 0) throw systemError('setsockopt', bindings.errno());
  return socketOption(fd, SO_SNDBUF);
}

/** An integer socket option at the SOL_SOCKET level (SO_SNDBUF, SO_TYPE, ...). */
export function socketOption(fd: number, name: number): number {
  if (!bindings?.getsockopt) throw unavailable('getsockopt');
  const value = [0];
  if (bindings.getsockopt(fd, SOL_SOCKET, name, value, [4]) !== 0) throw systemError('getsockopt', bindings.errno());
  return value[0];
}

// glibc malloc: allocations above M_MMAP_THRESHOLD (128 KiB at first)
// get pages of their own from mmap and give them back on free, so every
// large read buffer costs a page fault per 4 KiB when first touched.
// Raising the threshold to glibc's maximum (32 MiB, the largest request),
// and the trim threshold above it, keeps such buffers in the heap, where
// freed memory is reused: a quarter less CPU per 1 MiB read here.
// One arena for every thread: a thread's own arena (glibc gives worker
// threads theirs) is never trimmed from the top under that trim
// threshold, not even by malloc_trim, so the large buffers of a
// connection loop (--threads) stayed resident after its thread had ended
// (+32 MB idle after 4 heavy connections, against +2 MB with one loop
// and with M_ARENA_MAX 1). Returns false where there is no glibc.
const M_TRIM_THRESHOLD = -1;
const M_MMAP_THRESHOLD = -3;
const M_ARENA_MAX = -8;

export function keepLargeAllocationsInHeap(): boolean {
  if (process.platform !== 'linux' || !bindings?.mallopt) return false;
  return (
    bindings.mallopt(M_MMAP_THRESHOLD, 32 << 20) === 1 &&
    bindings.mallopt(M_TRIM_THRESHOLD, 128 << 20) === 1 &&
    bindings.mallopt(M_ARENA_MAX, 1) === 1
  );
}

/** Gives the heap's free memory back to the system (malloc_trim); false where there is no glibc. */
export function trimHeap(): boolean {
  if (!bindings?.mallocTrim) return false;
  bindings.mallocTrim(0);
  return true;
}

const RLIMIT_NOFILE = process.platform === 'darwin' ? 8 : 7;

/** How many descriptors this process may have open (the soft limit; Node raises it to the hard one at start). Infinity when unlimited. */
export function openFileLimit(): number {
  if (!bindings?.getrlimit) throw unavailable('getrlimit');
  const limit: Partial<Rlimit> = {};
  if (bindings.getrlimit(RLIMIT_NOFILE, limit) !== 0) throw systemError('getrlimit', bindings.errno());
  return typeof limit.rlim_cur === 'number' ? limit.rlim_cur : Infinity;
}
