// What Node's net.Socket does not offer, done on its descriptor: a
// larger send buffer for UNIX connections, and reading a WRITE payload
// straight into its buffer. Both are optional: without a descriptor (a
// socket Node wraps differently) or the system calls, they do nothing
// and the stream's own reads carry the bytes.

import type net from 'node:net';
import { readNow, setSendBuffer } from '../sys/syscalls.js';

/** The socket's descriptor, where Node has one (UNIX and TCP sockets on POSIX). */
export function socketFd(socket: net.Socket): number | null {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : null;
}

/**
 * The send buffer a UNIX connection asks for. A UNIX socket's default
 * (net.core.wmem_default, 208 KiB) takes a 1 MiB read reply in five
 * writev calls, each waiting for the client to drain a quarter of the
 * buffer and the event loop to come round again; with room for the whole
 * reply it leaves in one (1 MiB sequential reads: 3.1 -> 4.2 GB/s here).
 * The kernel caps the request at net.core.wmem_max.
 */
export const UNIX_SEND_BUFFER = 4 << 20;

/** Gives an accepted UNIX connection a larger send buffer; returns its size, or null if it could not. */
export function widenSendBuffer(socket: net.Socket): number | null {
  const fd = socketFd(socket);
  if (fd === null) return null;
  try {
    return setSendBuffer(fd, UNIX_SEND_BUFFER);
  } catch {
    return null;
  }
}

/**
 * Reads whatever the kernel holds for the socket straight into `target`,
 * without waiting: the bytes read (0 when nothing is waiting, at end of
 * input, or on an error, which the stream then reports itself). The
 * stream reads from the same descriptor in 64 KiB chunks that are copied
 * again into a payload; reading into the payload saves that copy and
 * most of the read calls. The caller must make sure the stream holds
 * nothing it has read but not yet delivered (a paused socket keeps such
 * bytes in its buffer): only then are the descriptor's bytes the next
 * ones, and the order is kept.
 */
export function readInto(fd: number, target: Buffer): number {
  try {
    return readNow(fd, target);
  } catch {
    return 0;
  }
}
