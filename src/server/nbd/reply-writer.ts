// Writes replies to a socket, gathering them for the rest of the current
// tick so that every reply produced in one turn of the event loop (a
// header and its payload, or many small completions) leaves in one
// writev. Where the socket has a descriptor of its own (no TLS) and the
// native addon is there, that writev is made on the descriptor directly
// whenever the stream holds nothing before it: Node's Writable (cork,
// write requests, callbacks on later ticks) cost about as much user time
// per reply as the rest of a 4 KiB read, and whatever the kernel does not
// take still goes through the stream, in order. Elsewhere the socket is
// corked for the tick instead. Writes to a socket that has gone away are
// dropped: the client can no longer read them and the connection is
// already closing. Once replies are out, the event loop polls for the
// client's next request a while (see busy-poll.ts).
//
// With --send-file, a read reply whose data is in the page cache can go
// out from the file itself (sendFromFile): the replies before it are
// flushed, and if the stream then holds nothing, the headers are written
// and the data sent with sendfile on the socket's descriptor, in order,
// without a copy in user space. Whatever the socket has no room for,
// and everything after it, goes through the stream, the file's bytes
// read into a buffer. It is off by default because the client pays for
// it: receiving the file's pages cost fio more than the copy saved vblk
// (README).

import fs from 'node:fs';
import os from 'node:os';
import type { Socket } from 'node:net';
import type { BusyPoll } from '../busy-poll.js';
import { native } from '../../io/native.js';
import { sendFile, sendFileAvailable, writeNow } from '../../sys/send-file.js';
import { systemError } from '../../sys/libc.js';
import { socketInfo } from '../../sys/socket-info.js';
import { UnreadReplies } from './unread-replies.js';

const EAGAIN = -(os.constants.errno.EAGAIN as number);

/** Bytes of a reply that lie in a file. */
export interface FilePart {
  fd: number;
  position: number;
  length: number;
}

export class ReplyWriter {
  private corked = false;
  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
    this.poll.touch();
  };
  /** This tick's replies, for one writev on the descriptor (only with `direct`). */
  private gathered: Buffer[] = [];
  private gatheredBytes = 0;
  /** Callbacks of the gathered replies, each with where its reply ends in them. */
  private whenWritten: { end: number; written: () => void }[] = [];
  private flushQueued = false;
  private readonly flushTick = (): void => {
    this.flushQueued = false;
    this.flush();
    this.poll.touch();
  };
  /** Replies are written on the descriptor (see above). */
  private readonly direct: boolean;
  /** Replies sent from files that the client may not have read yet; null where replies cannot be sent so. */
  private readonly unread: UnreadReplies | null;

  /**
   * `fd`: the socket's descriptor, where Node has one and no TLS runs
   * over it; with `sendFiles` (--send-file), replies are sent from files
   * on a UNIX socket.
   */
  constructor(
    private readonly socket: Socket,
    private readonly poll: BusyPoll,
    private readonly fd: number | null = null,
    sendFiles = false,
  ) {
    this.direct = fd !== null && native !== null;
    this.unread = sendFiles && fd !== null && sendFileAvailable && unixStream(fd) ? new UnreadReplies(fd) : null;
  }

  /** Bytes written but not yet taken by the kernel. */
  get backlog(): number {
    return this.socket.writableLength + this.gatheredBytes;
  }

  /** Whether a reply may be sent from a file now. */
  get sendsFiles(): boolean {
    return this.unread?.room ?? false;
  }

  /** Queues a reply; `written` runs once the kernel has taken all of it (or the socket failed). */
  send(first: Buffer, second?: Buffer | null, written?: () => void): void {
    if (!this.socket.writable) return;
    if (this.direct) return this.gather(first, second, written);
    this.cork();
    if (second && second.length > 0) {
      this.socket.write(first);
      this.socket.write(second, written);
    } else {
      this.socket.write(first, written);
    }
  }

  /**
   * Sends a reply made of buffers and file bytes, in order (only when
   * sendsFiles said so). `release` runs once the client has read it.
   */
  sendFromFile(parts: (Buffer | FilePart)[], release: () => void): void {
    const fd = this.fd!;
    this.flush();
    if (!this.socket.writable) return release();
    this.unread!.check();
    if (this.corked) this.socket.uncork();
    else this.cork();
    // Only when the stream holds nothing are the descriptor's bytes next in line.
    let direct = this.socket.writableLength === 0;
    try {
      for (const part of parts) {
        const length = part.length;
        let done = 0;
        if (direct) {
          done = Buffer.isBuffer(part) ? writeNow(fd, part) : sendAll(fd, part);
          direct = done === length;
        }
        if (done === length) continue;
        this.socket.write(Buffer.isBuffer(part) ? part.subarray(done) : readPart(part, done));
      }
    } catch (err) {
      // A reply cut short leaves the stream unframed: the connection cannot go on.
      this.socket.destroy(err as Error);
      return release();
    }
    this.unread!.hold(release);
  }

  /**
   * Writes the gathered replies now: on the descriptor as far as the
   * kernel takes them when the stream holds nothing, the rest through the
   * stream. Before the stream is ended, so that nothing comes after it.
   */
  flush(): void {
    if (this.gatheredBytes === 0) return;
    const buffers = this.gathered;
    const callbacks = this.whenWritten;
    this.gathered = [];
    this.whenWritten = [];
    this.gatheredBytes = 0;
    const failed = (): void => callbacks.forEach((c) => c.written());
    if (!this.socket.writable) return failed();
    let taken = 0;
    if (this.socket.writableLength === 0) {
      const n = native!.writev(this.fd!, buffers);
      if (n < 0 && n !== EAGAIN) {
        // As a failed stream write would: the connection ends with the error.
        this.socket.destroy(systemError('writev', -n));
        return failed();
      }
      taken = Math.max(n, 0);
    }
    let c = 0;
    while (c < callbacks.length && callbacks[c].end <= taken) callbacks[c++].written();
    let at = 0;
    for (const buffer of buffers) {
      const end = at + buffer.length;
      if (end > taken) {
        const written = c < callbacks.length && callbacks[c].end === end ? callbacks[c++].written : undefined;
        this.socket.write(at >= taken ? buffer : buffer.subarray(taken - at), written);
      }
      at = end;
    }
  }

  /** The client sent something: it may have read replies too. */
  clientActive(): void {
    this.unread?.check();
  }

  /** The connection is closed: what it sent from files holds nothing any more. */
  close(): void {
    this.unread?.releaseAll();
  }

  private gather(first: Buffer, second: Buffer | null | undefined, written: (() => void) | undefined): void {
    this.gathered.push(first);
    this.gatheredBytes += first.length;
    if (second && second.length > 0) {
      this.gathered.push(second);
      this.gatheredBytes += second.length;
    }
    if (written) this.whenWritten.push({ end: this.gatheredBytes, written });
    if (this.flushQueued) return;
    this.flushQueued = true;
    process.nextTick(this.flushTick);
  }

  private cork(): void {
    if (this.corked) return;
    this.corked = true;
    this.socket.cork();
    process.nextTick(this.uncork);
  }
}

/**
 * Whether replies may be sent from files on the descriptor: only a UNIX
 * stream socket, where SIOCOUTQ counts what the client has not read. On
 * TCP it counts what the peer's kernel has not acknowledged, and over
 * loopback the acknowledged bytes may still be the file's pages in the
 * client's receive queue; a pipe (--stdio) cannot tell at all.
 */
function unixStream(fd: number): boolean {
  try {
    const info = socketInfo(fd);
    return info.family === 'unix' && info.stream;
  } catch {
    return false;
  }
}

/** Sends as much of a file part as the socket takes now. */
function sendAll(socketFd: number, part: FilePart): number {
  let done = 0;
  while (done < part.length) {
    const n = sendFile(socketFd, part.fd, part.position + done, part.length - done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

/** The rest of a file part from `from` on, read into a buffer for the stream. */
function readPart(part: FilePart, from: number): Buffer {
  const buffer = Buffer.alloc(part.length - from);
  let done = 0;
  while (done < buffer.length) {
    const n = fs.readSync(part.fd, buffer, done, buffer.length - done, part.position + from + done);
    if (n === 0) break; // past the end of the file: zeroes, as a hole reads
    done += n;
  }
  return buffer;
}
