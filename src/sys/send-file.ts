// What sending a read's bytes straight from the page cache to a socket
// takes (server/nbd/file-reply.ts): sendfile(2), write(2) for the header
// before it, ioctl(SIOCOUTQ) for how much of what was sent the peer has
// not read yet, and cachestat(2) (Linux 6.5) for whether a range is in
// the page cache, so that a send never waits for the disk in the event
// loop. Linux only; elsewhere, or without koffi, `sendFileAvailable` is
// false and the calls throw ENOSYS.

import { errno, errnoName, optionalFunc, systemError, unavailable } from './libc.js';

type SendFile = (outFd: number, inFd: number, offset: number[], count: number) => number;
type Write = (fd: number, buffer: Buffer, count: number) => number;
type IoctlOut = (fd: number, request: number, value: number[]) => number;
type CacheStat = (nr: number, fd: number, range: Buffer, stat: Buffer, flags: number) => number;

const linux = process.platform === 'linux';
const sendfile = linux ? optionalFunc<SendFile>('int64_t sendfile(int out_fd, int in_fd, _Inout_ int64_t *offset, size_t count)') : null;
const write = linux ? optionalFunc<Write>('int64_t write(int fd, void *buffer, size_t count)') : null;
const ioctlOut = linux ? optionalFunc<IoctlOut>('int ioctl(int fd, unsigned long request, _Out_ int *value)') : null;
// cachestat has no libc wrapper yet: syscall(2) with its number (the same on x86-64 and arm64).
const syscall = linux ? optionalFunc<CacheStat>('long syscall(long nr, int fd, void *range, void *stat, unsigned int flags)') : null;
const SYS_CACHESTAT = 451;
const SIOCOUTQ = 0x5411;

function retry(code: string): boolean {
  return code === 'EAGAIN' || code === 'EWOULDBLOCK' || code === 'EINTR';
}

/** sendfile: bytes of `inFd` from `position` sent to the non-blocking socket `outFd`; 0 when it has no room (EAGAIN). */
export function sendFile(outFd: number, inFd: number, position: number, count: number): number {
  if (!sendfile) throw unavailable('sendfile');
  const n = Number(sendfile(outFd, inFd, [position], count));
  if (n >= 0) return n;
  const e = errno();
  if (retry(errnoName(e))) return 0;
  throw systemError('sendfile', e);
}

/** write(2) to a non-blocking descriptor: the bytes taken, 0 when it has no room (EAGAIN). */
export function writeNow(fd: number, buffer: Buffer): number {
  if (!write) throw unavailable('write');
  const n = Number(write(fd, buffer, buffer.length));
  if (n >= 0) return n;
  const e = errno();
  if (retry(errnoName(e))) return 0;
  throw systemError('write', e);
}

/** How much of what was sent on a socket the peer has not read yet (SIOCOUTQ); 0 means it has read everything. */
export function unreadBytes(fd: number): number {
  if (!ioctlOut) throw unavailable('ioctl');
  const value = [0];
  if (ioctlOut(fd, SIOCOUTQ, value) !== 0) throw systemError('ioctl(SIOCOUTQ)', errno());
  return value[0];
}

const range = Buffer.alloc(16);
const stat = Buffer.alloc(40);

/** Whether every page of [offset, offset + length) of the file is in the page cache (cachestat); throws where it cannot tell. */
export function inPageCache(fd: number, offset: number, length: number, pageSize = 4096): boolean {
  if (!syscall) throw unavailable('cachestat');
  range.writeBigUInt64LE(BigInt(offset), 0);
  range.writeBigUInt64LE(BigInt(length), 8);
  if (Number(syscall(SYS_CACHESTAT, fd, range, stat, 0)) !== 0) throw systemError('cachestat', errno());
  const pages = Math.ceil((offset + length) / pageSize) - Math.floor(offset / pageSize);
  return Number(stat.readBigUInt64LE(0)) >= pages;
}

/** Whether this host has what sending from files takes (cachestat is checked when first used). */
export const sendFileAvailable = sendfile !== null && write !== null && ioctlOut !== null && syscall !== null;
