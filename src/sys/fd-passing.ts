// File descriptors passed over a UNIX stream socket (SCM_RIGHTS), which
// Node's net module cannot do: vhost-user front ends send guest memory,
// kick and call eventfds this way. recvmsg/sendmsg through koffi, on
// Linux only (the msghdr and cmsghdr layouts are Linux's).
//
// On a stream socket the descriptors travel with the first byte of the
// sendmsg that carried them, and the kernel never merges bytes sent with
// descriptors into a read together with later bytes that bring their own.
// Still, reading more than one message's header at once can hand over a
// later message's descriptors with it, so a vhost-user reader asks for
// exactly the 12 header bytes (which carry the descriptors) and then the
// payload. Received descriptors are close-on-exec (MSG_CMSG_CLOEXEC).
// Neither call waits: the socket is read and written with MSG_DONTWAIT.

import fs from 'node:fs';
import { errno, errnoName, koffi, libc, systemError, unavailable } from './libc.js';

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const MSG_CTRUNC = 0x8;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const MSG_CMSG_CLOEXEC = 0x40000000;

/** The most descriptors Linux passes in one message (SCM_MAX_FD). */
export const MAX_FDS_PER_MESSAGE = 253;

interface Iovec {
  iov_base: Buffer;
  iov_len: number;
}

interface Msghdr {
  msg_name: null;
  msg_namelen: number;
  msg_iov: Iovec[];
  msg_iovlen: number;
  msg_control: Buffer | null;
  msg_controllen: number;
  msg_flags: number;
}

interface Bindings {
  recvmsg: (fd: number, msg: Msghdr, flags: number) => number;
  sendmsg: (fd: number, msg: Msghdr, flags: number) => number;
  socketpair: (domain: number, type: number, protocol: number, sv: Int32Array) => number;
  /** sizeof(size_t): the width of cmsg_len and of the alignment of control messages. */
  word: number;
}

function load(): Bindings | null {
  if (process.platform !== 'linux' || !koffi || !libc) return null;
  try {
    const iovec = koffi.struct({ iov_base: 'void *', iov_len: 'size_t' });
    const msghdr = koffi.struct({
      msg_name: 'void *',
      msg_namelen: 'uint32_t',
      msg_iov: koffi.pointer(iovec),
      msg_iovlen: 'size_t',
      msg_control: 'void *',
      msg_controllen: 'size_t',
      msg_flags: 'int',
    });
    return {
      recvmsg: libc.func('recvmsg', 'long', ['int', koffi.inout(koffi.pointer(msghdr)), 'int']) as Bindings['recvmsg'],
      sendmsg: libc.func('sendmsg', 'long', ['int', koffi.pointer(msghdr), 'int']) as Bindings['sendmsg'],
      socketpair: libc.func('int socketpair(int domain, int type, int protocol, int *sv)') as Bindings['socketpair'],
      word: koffi.sizeof('size_t'),
    };
  } catch {
    return null;
  }
}

const bindings = load();

/** Why descriptors cannot be passed here, or null when they can. */
export const fdPassingUnavailable: string | null = bindings
  ? null
  : process.platform !== 'linux'
    ? 'passing file descriptors is implemented for Linux only'
    : 'koffi or libc could not be loaded';

const align = (n: number, word: number) => Math.ceil(n / word) * word;
const cmsgHeader = (word: number) => align(word + 8, word);
/** CMSG_SPACE for `count` descriptors. */
const controlSpace = (count: number, word: number) => cmsgHeader(word) + align(4 * count, word);

function checkFds(fds: readonly number[], call: string): void {
  if (fds.length > MAX_FDS_PER_MESSAGE || !fds.every((fd) => Number.isInteger(fd) && fd >= 0 && fd <= 0x7fffffff)) {
    throw new RangeError(`${call}: up to ${MAX_FDS_PER_MESSAGE} descriptors, each an integer >= 0`);
  }
}

/** A msghdr over one buffer and an optional control area. */
function message(buffer: Buffer, control: Buffer | null): Msghdr {
  return {
    msg_name: null,
    msg_namelen: 0,
    msg_iov: [{ iov_base: buffer, iov_len: buffer.length }],
    msg_iovlen: 1,
    msg_control: control,
    msg_controllen: control?.length ?? 0,
    msg_flags: 0,
  };
}

export interface Received {
  /** Bytes read into the buffer; 0 means the peer closed the connection. */
  bytes: number;
  /** The descriptors that came with them, now owned by the caller. */
  fds: number[];
}

/**
 * recvmsg into `buffer` (up to its length) with room for `maxFds`
 * descriptors. Returns null when nothing is waiting (EAGAIN). When more
 * descriptors came than there was room for (MSG_CTRUNC), the kernel has
 * dropped the rest; this closes the ones that did arrive and throws an
 * error with code 'ERR_FDS_TRUNCATED' (its `bytes` says how much data
 * was consumed with them).
 */
export function recvWithFds(fd: number, buffer: Buffer, maxFds: number): Received | null {
  if (!bindings) throw unavailable('recvmsg');
  if (!Number.isInteger(maxFds) || maxFds < 0 || maxFds > MAX_FDS_PER_MESSAGE) {
    throw new RangeError(`recvWithFds: maxFds must be an integer from 0 to ${MAX_FDS_PER_MESSAGE}`);
  }
  const { word } = bindings;
  const control = maxFds > 0 ? Buffer.alloc(controlSpace(maxFds, word)) : null;
  const msg = message(buffer, control);
  let bytes: number;
  for (;;) {
    bytes = Number(bindings.recvmsg(fd, msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC));
    if (bytes >= 0) break;
    const e = errno();
    const code = errnoName(e);
    if (code === 'EINTR') continue;
    if (code === 'EAGAIN' || code === 'EWOULDBLOCK') return null;
    throw systemError('recvmsg', e);
  }
  const fds = control ? receivedFds(control, Number(msg.msg_controllen), word) : [];
  if (msg.msg_flags & MSG_CTRUNC) {
    for (const f of fds) closeQuietly(f);
    throw Object.assign(
      new Error(`recvmsg: more file descriptors came than the ${maxFds} there was room for (MSG_CTRUNC); all were closed`),
      { code: 'ERR_FDS_TRUNCATED', bytes, syscall: 'recvmsg' },
    );
  }
  return { bytes, fds };
}

/** The descriptors in the SCM_RIGHTS control messages of `control`. */
function receivedFds(control: Buffer, length: number, word: number): number[] {
  const fds: number[] = [];
  const header = cmsgHeader(word);
  for (let at = 0; at + header <= length; ) {
    const len = word === 8 ? Number(control.readBigUInt64LE(at)) : control.readUInt32LE(at);
    if (len < header || at + len > length) break;
    if (control.readInt32LE(at + word) === SOL_SOCKET && control.readInt32LE(at + word + 4) === SCM_RIGHTS) {
      for (let p = at + header; p + 4 <= at + len; p += 4) fds.push(control.readInt32LE(p));
    }
    at += align(len, word);
  }
  return fds;
}

function closeQuietly(fd: number): void {
  try {
    fs.closeSync(fd);
  } catch {
    // already closed: nothing to release
  }
}

/**
 * sendmsg of `buffer` with `fds` attached to its first byte. Returns the
 * bytes sent: possibly fewer than asked (send the rest without the
 * descriptors), and 0 when the socket's buffer is full (EAGAIN: nothing
 * was sent, descriptors included). The caller keeps its descriptors.
 */
export function sendWithFds(fd: number, buffer: Buffer, fds: readonly number[] = []): number {
  if (!bindings) throw unavailable('sendmsg');
  checkFds(fds, 'sendWithFds');
  if (buffer.length === 0) throw new RangeError('sendWithFds: descriptors travel with data; send at least one byte');
  const { word } = bindings;
  let control: Buffer | null = null;
  if (fds.length > 0) {
    control = Buffer.alloc(controlSpace(fds.length, word));
    const len = cmsgHeader(word) + 4 * fds.length;
    if (word === 8) control.writeBigUInt64LE(BigInt(len), 0);
    else control.writeUInt32LE(len, 0);
    control.writeInt32LE(SOL_SOCKET, word);
    control.writeInt32LE(SCM_RIGHTS, word + 4);
    fds.forEach((f, i) => control!.writeInt32LE(f, cmsgHeader(word) + 4 * i));
  }
  const msg = message(buffer, control);
  for (;;) {
    const sent = Number(bindings.sendmsg(fd, msg, MSG_DONTWAIT | MSG_NOSIGNAL));
    if (sent >= 0) return sent;
    const e = errno();
    const code = errnoName(e);
    if (code === 'EINTR') continue;
    if (code === 'EAGAIN' || code === 'EWOULDBLOCK') return 0;
    throw systemError('sendmsg', e);
  }
}

/** A connected pair of UNIX stream sockets, close-on-exec (blocking until a watch makes them non-blocking). */
export function socketPair(): [number, number] {
  if (!bindings) throw unavailable('socketpair');
  const sv = new Int32Array(2);
  if (bindings.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) !== 0) throw systemError('socketpair', errno());
  return [sv[0], sv[1]];
}
