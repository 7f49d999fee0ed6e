// Read replies sent from a file (sendfile) hold their range in the
// gateway until the client has read them: the file's pages went into the
// socket by reference, so a write to them before the client reads would
// change what it reads, and a write that came after the read in the
// gateway's order must not show in it. The kernel does not say when a
// given byte was read, only how much is still unread on the socket
// (SIOCOUTQ); when nothing is, every reply sent so far has been read and
// all holds end. That is checked whenever a reply goes out from a file,
// whenever the client sends something, and every few milliseconds while
// holds remain. Holds are bounded: past MAX_HOLDS the session reads into
// buffers instead, so a client that never lets its socket drain only
// loses the zero-copy path, and the gateway's list of ranges stays short.

import { unreadBytes } from '../../sys/send-file.js';

/** Replies from files a connection may have unread before it stops sending from files. */
export const MAX_HOLDS = 64;
const CHECK_MS = 2;

export class UnreadReplies {
  private holds: (() => void)[] = [];
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly fd: number) {}

  /** Whether another reply may be sent from a file. */
  get room(): boolean {
    return this.holds.length < MAX_HOLDS;
  }

  /** A reply from a file is in the socket: `release` runs once the client has read it. */
  hold(release: () => void): void {
    this.holds.push(release);
    if (!this.timer) {
      this.timer = setInterval(() => this.check(), CHECK_MS);
      this.timer.unref();
    }
  }

  /** Ends every hold if the client has read everything sent. */
  check(): void {
    if (this.holds.length === 0) return;
    let unread = 0;
    try {
      unread = unreadBytes(this.fd);
    } catch {
      // The socket is gone: nobody will read what it held.
    }
    if (unread === 0) this.releaseAll();
  }

  /** The connection is closed: nothing it sent can be read any more. */
  releaseAll(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    const holds = this.holds;
    this.holds = [];
    for (const release of holds) release();
  }
}
