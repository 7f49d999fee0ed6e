// Writes replies to a socket, corking it for the rest of the current tick
// so that every reply produced in one turn of the event loop (a header
// and its payload, or many small completions) leaves in one writev.
// Writes to a socket that has gone away are dropped: the client can no
// longer read them and the connection is already closing. Once replies
// are out, the event loop polls for the client's next request a while
// (see busy-poll.ts).

import type { Socket } from 'node:net';
import type { BusyPoll } from '../busy-poll.js';

export class ReplyWriter {
  private corked = false;
  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
    this.poll.touch();
  };

  constructor(
    private readonly socket: Socket,
    private readonly poll: BusyPoll,
  ) {}

  /** Bytes written but not yet taken by the kernel. */
  get backlog(): number {
    return this.socket.writableLength;
  }

  /** Queues a reply; `written` runs once the kernel has taken all of it (or the socket failed). */
  send(first: Buffer, second?: Buffer | null, written?: () => void): void {
    if (!this.socket.writable) return;
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(this.uncork);
    }
    if (second && second.length > 0) {
      this.socket.write(first);
      this.socket.write(second, written);
    } else {
      this.socket.write(first, written);
    }
  }
}
