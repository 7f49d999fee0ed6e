// Writes replies to a socket, corking it for the rest of the current tick
// so that every reply produced in one turn of the event loop (a header
// and its payload, or many small completions) leaves in one writev.
// Writes to a socket that has gone away are dropped: the client can no
// longer read them and the connection is already closing.

import type { Socket } from 'node:net';

export class ReplyWriter {
  private corked = false;
  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
  };

  constructor(private readonly socket: Socket) {}

  /** Bytes written but not yet taken by the kernel. */
  get backlog(): number {
    return this.socket.writableLength;
  }

  send(first: Buffer, second?: Buffer | null): void {
    if (!this.socket.writable) return;
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(this.uncork);
    }
    this.socket.write(first);
    if (second && second.length > 0) this.socket.write(second);
  }
}
