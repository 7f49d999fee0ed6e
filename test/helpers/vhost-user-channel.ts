// The front end's end of a vhost-user socket, for test drivers: sends
// messages (with file descriptors over SCM_RIGHTS) and waits for their
// replies, one exchange at a time as the protocol is. Node's stream is
// only used to connect; the descriptor is taken from it (as the server
// does) so descriptors can travel. Whatever goes wrong surfaces as an
// Error and never as a hang: a reply that does not come within the
// timeout, one for another request, a malformed one, or the back end
// hanging up (which also ends every wait and tells `onClose`).

import fs from 'node:fs';
import net from 'node:net';
import { requireNative, type FdWatch } from '../../src/io/native.js';
import { FLAG_NEED_REPLY, FLAG_REPLY, HEADER_SIZE, VERSION, requestName } from '../../src/protocol/vhost-user/constants.js';
import { decodeMessage, decodeU64, encodeMessage, isMalformed, type Message } from '../../src/protocol/vhost-user/messages.js';
import { socketFd } from '../../src/server/socket-fd.js';
import { recvWithFds, sendWithFds } from '../../src/sys/fd-passing.js';
import { duplicateFd } from '../../src/sys/syscalls.js';

export interface Reply extends Message {
  /** Descriptors that came with it, now the caller's. */
  fds: number[];
}

export interface SendOptions {
  fds?: number[];
  /** Header flags; VERSION unless given (hostile tests send anything). */
  flags?: number;
}

interface Waiter {
  request: number;
  resolve(reply: Reply): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

const READ_SIZE = 64 * 1024;

export class VhostUserChannel {
  /** Set once the connection is gone: why. */
  closedBy: Error | null = null;
  private readonly watch: FdWatch;
  private incoming = Buffer.alloc(0);
  private incomingFds: number[] = [];
  private waiter: Waiter | null = null;
  /** The exchange in progress: the next one waits for it. */
  private turn: Promise<unknown> = Promise.resolve();
  private readonly closeListeners: ((err: Error) => void)[] = [];

  private constructor(
    private readonly fd: number,
    readonly timeoutMs: number,
  ) {
    this.watch = requireNative('vhost-user test driver').watchFd(fd, () => this.readable());
  }

  static async connect(socketPath: string, timeoutMs = 10_000): Promise<VhostUserChannel> {
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect(socketPath);
      s.once('connect', () => resolve(s));
      s.once('error', reject);
    });
    const fd = socketFd(socket);
    if (fd === null) throw new Error(`vhost-user: the socket to ${socketPath} has no descriptor`);
    const own = duplicateFd(fd);
    socket.destroy();
    return new VhostUserChannel(own, timeoutMs);
  }

  onClose(listener: (err: Error) => void): void {
    this.closeListeners.push(listener);
  }

  /** Sends one message as is; nothing is awaited. */
  send(request: number, payload: Buffer = Buffer.alloc(0), options: SendOptions = {}): void {
    if (this.closedBy) throw this.closedBy;
    const message = encodeMessage(request, options.flags ?? VERSION, payload);
    let sent = 0;
    try {
      for (let spins = 0; sent < message.length; spins++) {
        if (spins > 100_000) throw new Error('the back end does not read');
        sent += sendWithFds(this.fd, message.subarray(sent), sent === 0 ? (options.fds ?? []) : []);
      }
    } catch (err) {
      throw new Error(`vhost-user: sending ${requestName(request)} failed: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Sends a message and resolves with its reply (after any exchange still in progress). */
  call(request: number, payload: Buffer = Buffer.alloc(0), options: SendOptions = {}): Promise<Reply> {
    const exchange = this.turn.then(() => this.exchange(request, payload, options));
    this.turn = exchange.catch(() => undefined);
    return exchange;
  }

  /** Sends with NEED_REPLY and checks the u64 ack is 0 (REPLY_ACK must be negotiated). */
  async acked(request: number, payload: Buffer = Buffer.alloc(0), fds: number[] = []): Promise<void> {
    const ack = await this.ack(request, payload, fds);
    if (ack !== 0n) throw new Error(`vhost-user: the back end refused ${requestName(request)} (ack ${ack})`);
  }

  /** Sends with NEED_REPLY and resolves with the ack value (0 is success). */
  async ack(request: number, payload: Buffer = Buffer.alloc(0), fds: number[] = []): Promise<bigint> {
    const reply = await this.call(request, payload, { fds, flags: VERSION | FLAG_NEED_REPLY });
    const value = decodeU64(reply.payload);
    if (isMalformed(value)) throw new Error(`vhost-user: the ack of ${requestName(request)} is malformed: ${value.malformed}`);
    return value;
  }

  /** Sends a message that has no reply, after any exchange in progress. */
  async post(request: number, payload: Buffer = Buffer.alloc(0), options: SendOptions = {}): Promise<void> {
    const sent = this.turn.then(() => this.send(request, payload, options));
    this.turn = sent.catch(() => undefined);
    return sent;
  }

  close(): void {
    if (!this.closedBy) this.hangUp(new Error('vhost-user: the front end closed the connection'), false);
  }

  private exchange(request: number, payload: Buffer, options: SendOptions): Promise<Reply> {
    if (this.closedBy) return Promise.reject(this.closedBy);
    return new Promise<Reply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        reject(new Error(`vhost-user: no reply to ${requestName(request)} within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.waiter = { request, resolve, reject, timer };
      try {
        this.send(request, payload, options);
      } catch (err) {
        clearTimeout(timer);
        this.waiter = null;
        reject(err as Error);
        return;
      }
      this.deliver();
    });
  }

  private readable(): void {
    for (;;) {
      const chunk = Buffer.alloc(READ_SIZE);
      let got;
      try {
        got = recvWithFds(this.fd, chunk, 8);
      } catch (err) {
        return this.hangUp(new Error(`vhost-user: receive failed: ${(err as Error).message}`), true);
      }
      if (got === null) break;
      if (got.bytes === 0) return this.hangUp(new Error('vhost-user: the back end closed the connection'), true);
      this.incoming = Buffer.concat([this.incoming, chunk.subarray(0, got.bytes)]);
      this.incomingFds.push(...got.fds);
    }
    this.deliver();
  }

  /** Hands a whole message to the waiter; a message nobody waits for is a protocol error. */
  private deliver(): void {
    if (this.incoming.length === 0) return;
    const decoded = decodeMessage(this.incoming);
    if (decoded === null) return;
    if (isMalformed(decoded)) return this.hangUp(new Error(`vhost-user: malformed message from the back end: ${decoded.malformed}`), true);
    const { header } = decoded;
    const reply: Reply = { header, payload: Buffer.from(decoded.payload), fds: this.incomingFds };
    this.incoming = this.incoming.subarray(HEADER_SIZE + header.size);
    this.incomingFds = [];
    const waiter = this.waiter;
    if (!waiter) {
      for (const fd of reply.fds) fs.closeSync(fd);
      return this.hangUp(new Error(`vhost-user: unexpected ${requestName(header.request)} message from the back end`), true);
    }
    this.waiter = null;
    clearTimeout(waiter.timer);
    if (header.request !== waiter.request || !(header.flags & FLAG_REPLY)) {
      for (const fd of reply.fds) fs.closeSync(fd);
      waiter.reject(
        new Error(`vhost-user: the reply to ${requestName(waiter.request)} is ${requestName(header.request)} with flags 0x${header.flags.toString(16)}`),
      );
      return;
    }
    waiter.resolve(reply);
    this.deliver();
  }

  private hangUp(err: Error, byPeer: boolean): void {
    if (this.closedBy) return;
    this.closedBy = err;
    this.watch.stop();
    fs.closeSync(this.fd);
    for (const fd of this.incomingFds) fs.closeSync(fd);
    this.incomingFds = [];
    if (this.waiter) {
      clearTimeout(this.waiter.timer);
      this.waiter.reject(err);
      this.waiter = null;
    }
    if (byPeer) for (const listener of this.closeListeners) listener(err);
  }
}
