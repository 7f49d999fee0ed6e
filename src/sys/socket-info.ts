// What a descriptor vblk did not open itself is (a listening socket a
// service manager passed, the socket a client started vblk on): its
// family, whether it is a listening stream socket, the path a UNIX
// socket is bound to (getsockname), and dup2 (to put /dev/null on stdout
// once the connection on it is taken); getsockopt and close-on-exec are
// syscalls.ts's. Linux's constants; where a call is missing (not Linux,
// no koffi) it throws ENOSYS.

import { errno, optionalFunc, systemError, unavailable } from './libc.js';
import { socketOption } from './syscalls.js';

const SO_TYPE = 3;
const SO_ACCEPTCONN = 30;
const SO_DOMAIN = 39;
const SOCK_STREAM = 1;
const FAMILIES: Record<number, SocketFamily> = { 1: 'unix', 2: 'inet', 10: 'inet6' };
/** sizeof(struct sockaddr_un): the family, then up to 108 bytes of path. */
const SOCKADDR_UN_SIZE = 110;

export type SocketFamily = 'unix' | 'inet' | 'inet6' | 'other';

export interface SocketInfo {
  family: SocketFamily;
  stream: boolean;
  listening: boolean;
  /** A UNIX socket's path in the file system; null for an unbound or abstract one, and for other families. */
  path: string | null;
}

type GetSockName = (fd: number, addr: Buffer, size: number[]) => number;
type Dup2 = (from: number, to: number) => number;

const getsockname = optionalFunc<GetSockName>('int getsockname(int fd, _Out_ void *addr, _Inout_ uint32_t *size)');
const dup2 = optionalFunc<Dup2>('int dup2(int oldfd, int newfd)');

function unixPath(fd: number): string | null {
  if (!getsockname) throw unavailable('getsockname');
  const addr = Buffer.alloc(SOCKADDR_UN_SIZE);
  const size = [SOCKADDR_UN_SIZE];
  if (getsockname(fd, addr, size) !== 0) throw systemError('getsockname', errno());
  // Unbound (size 2) or abstract (a leading NUL): no path to print.
  if (size[0] <= 2 || addr[2] === 0) return null;
  const end = addr.indexOf(0, 2);
  return addr.toString('utf8', 2, end < 0 || end > size[0] ? size[0] : end);
}

/** What socket `fd` is; throws ENOTSOCK for a descriptor that is not a socket, EBADF for one not open. */
export function socketInfo(fd: number): SocketInfo {
  const family = FAMILIES[socketOption(fd, SO_DOMAIN)] ?? 'other';
  return {
    family,
    stream: socketOption(fd, SO_TYPE) === SOCK_STREAM,
    listening: socketOption(fd, SO_ACCEPTCONN) !== 0,
    path: family === 'unix' ? unixPath(fd) : null,
  };
}

/** Makes `to` a copy of `from` (closing what `to` was). */
export function duplicateOnto(from: number, to: number): void {
  if (!dup2) throw unavailable('dup2');
  if (dup2(from, to) < 0) throw systemError('dup2', errno());
}
