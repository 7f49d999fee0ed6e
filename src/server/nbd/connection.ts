// One client connection, from greeting to close. It owns the socket and
// the input queue, frames the handshake (client flags, option headers,
// option data) for the Handshake state table, and hands the socket to a
// TransmissionSession once an export is chosen. Option data beyond
// MAX_OPTION_DATA is skipped unread and answered TOO_BIG; beyond
// MAX_OPTION_SKIP the client is cut off. A client that does not finish
// the handshake in time is cut off too, and so is one that sends more
// options than maxOptions allows.
//
// The handshake has back-pressure as the transmission phase does: no
// further option is read while the replies queued for the client reach
// MAX_HANDSHAKE_BACKLOG, so a client that sends options and never reads
// the replies stalls itself instead of growing the server.
//
// STARTTLS: the table's step says so; the connection writes the ACK in
// plain text and from then on speaks through a TLS stream over the same
// socket (tls.ts): its listeners, the reply writer and back-pressure all
// move to that stream, and the session's fast path (reading a WRITE
// payload from the descriptor, socket-fd.ts) is off, since the
// descriptor carries ciphertext. Bytes the client sent after STARTTLS
// before it could have seen the ACK are a violation (it MUST wait for the
// reply, and they are neither plain options nor TLS): hard disconnect. A
// TLS handshake that fails ends the connection with the reason logged;
// one that stalls is cut by the handshake timeout, which runs on until an
// export is chosen. No option is read before the handshake is done (and
// the client certificate checked).
//
// Closing gracefully (finish) ends the server's side and closes the socket
// once the last reply is with the kernel, without waiting for the client
// to close its end. At shutdown a connection closes once nothing is
// running and the client has been quiet for QUIET_MS, so requests already
// on the wire get ESHUTDOWN rather than a cut; however much the client
// keeps sending, that wait ends SHUTDOWN_GRACE_MS after it began.
//
// With connection loops (--threads, loops.ts) a connection whose export
// they serve may leave for a worker loop when transmission starts
// (handOff): this object stays behind as its stand-in, and the worker
// makes a connection of its own over the same socket (adopt), which runs
// the transmission phase there. A connection that is on TLS, or still has
// handshake replies queued in the stream, stays here.

import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { IHAVEOPT, OPTION_HEADER_SIZE } from '../../protocol/nbd/constants.js';
import { decodeClientFlags, decodeOptionHeader, type OptionHeader } from '../../protocol/nbd/handshake-codec.js';
import { Handshake, type Step } from '../../protocol/nbd/handshake.js';
import type { BusyPoll } from '../busy-poll.js';
import { ByteQueue } from '../byte-queue.js';
import type { ExportRegistry } from '../exports.js';
import { ReplyWriter } from './reply-writer.js';
import { readInto, socketFd, widenSendBuffer } from '../socket-fd.js';
import type { Connection, FrontEnd } from '../connection.js';
import { exportUri, isUnixEndpoint } from '../listeners.js';
import { TransmissionSession, type ConnectionStats, type SessionHost, type SessionLimits } from './transmission-session.js';
import type { NbdTls, TlsUpgrade } from './tls.js';
import type { Agreement } from '../../protocol/nbd/handshake.js';
import { duplicateFd } from '../../sys/syscalls.js';
import type { ConnectionLoops, LoopWorker, RemoteConnection } from './loops.js';

export const MAX_OPTION_DATA = 64 << 10;
export const MAX_OPTION_SKIP = 16 << 20;
/**
 * Reply bytes queued for a client before the handshake reads its next
 * option. Replies to options are small (a LIST reply is the largest, and
 * it is sent whole however large), and real clients read each before
 * sending the next option, so they never come near it.
 */
export const MAX_HANDSHAKE_BACKLOG = 1 << 20;

/**
 * Options one connection may send before it is cut off. Real clients send
 * a few per export they look at: nbdinfo --list (libnbd 1.14, measured)
 * sends STRUCTURED_REPLY and LIST, then INFO and LIST_META_CONTEXT for
 * every export on the same connection, then ABORT; qemu sends about four
 * in all. Four per export covers INFO, both META_CONTEXT options and GO
 * for each one, and 64 leaves room for anything else (nbdkit once stopped
 * at 32 in all, which nbdinfo --list outgrows past 15 exports). Memory is
 * bounded by back-pressure anyway; this bounds the work one connection
 * can make the server do.
 */
export function maxOptions(exportCount: number): number {
  return 64 + 4 * exportCount;
}

/** At shutdown: how long the client must have been silent before its connection closes. */
const QUIET_MS = 100;
/** At shutdown: the longest a client's input can hold its connection open once nothing is running. */
const SHUTDOWN_GRACE_MS = 2000;

export interface ConnectionOptions {
  handshakeTimeoutMs: number;
  limits: SessionLimits;
  /** Shared by every connection: keeps the event loop polling after activity. */
  busyPoll: BusyPoll;
  /** STARTTLS: offered or required with these credentials; absent, TLS is off. */
  tls?: NbdTls;
  /** --send-file: large reads from the page cache may leave from the file (reply-writer.ts). */
  sendFile?: boolean;
  /** --threads: the loops transmissions may move to; absent, every connection stays on this loop. */
  loops?: ConnectionLoops;
}

/** The NBD front end: a connection per accepted socket, one URI per export. */
export function nbdFrontEnd(registry: ExportRegistry, options: ConnectionOptions): FrontEnd {
  return {
    protocol: 'nbd',
    connect(socket, endpoint, log, closed) {
      if (isUnixEndpoint(endpoint)) log.debug({ sendBuffer: widenSendBuffer(socket) }, 'send buffer');
      return new NbdConnection(socket, registry, options, log, closed);
    },
    addresses: (address) => registry.list().map((e) => exportUri(address, e.name, options.tls !== undefined)),
    close: () => options.loops?.close() ?? Promise.resolve(),
  };
}

export class NbdConnection implements SessionHost, Connection {
  readonly input = new ByteQueue();
  writer: ReplyWriter;
  readonly busyPoll: BusyPoll;
  /** The socket's descriptor while it carries plain NBD; null once TLS runs over it. */
  private fd: number | null;
  /** Set at STARTTLS; `secure` once the TLS handshake is done and the client accepted. */
  private tls: { upgrade: TlsUpgrade; secure: boolean } | null = null;
  private readonly handshake: Handshake;
  private session: TransmissionSession | null = null;
  /** Waiting for the loop it moves to: nothing is read or answered meanwhile. */
  private moving = false;
  /** Handed off: the connection runs on another loop, reached through this. */
  private remote: RemoteConnection | null = null;
  /** Counted as one of this loop's transmissions (--threads) until it closes. */
  private leaveLoop: (() => void) | null = null;
  private option: OptionHeader | null = null;
  private optionSkip = 0;
  private optionCount = 0;
  private readonly maxOptions: number;
  private handshakeTimer: NodeJS.Timeout | null = null;
  private quietTimer: NodeJS.Timeout | null = null;
  private graceEnds: number | null = null;
  private lastInput = 0;
  private closing = false;
  private gone = false;
  private exportName: string | null = null;
  private readonly opened = Date.now();
  private readonly stats: ConnectionStats = { requests: {}, errors: 0, bytesRead: 0, bytesWritten: 0 };
  private closeReason = 'client disconnected';

  constructor(
    private socket: Socket,
    private readonly registry: ExportRegistry,
    private readonly options: ConnectionOptions,
    private readonly log: Logger,
    private readonly onClosed: (conn: NbdConnection) => void,
  ) {
    this.busyPoll = options.busyPoll;
    this.fd = socketFd(socket);
    this.writer = new ReplyWriter(socket, options.busyPoll, this.fd, options.sendFile ?? false);
    this.handshake = new Handshake(registry, options.tls?.policy ?? 'off');
    this.maxOptions = maxOptions(registry.list().length);
  }

  get busy(): boolean {
    return this.session !== null || this.remote !== null;
  }

  start(): void {
    const { socket } = this;
    socket.setNoDelay?.(true);
    this.listen(socket);
    this.handshakeTimer = setTimeout(
      () => this.abort(this.tls && !this.tls.secure ? 'TLS handshake timed out' : 'handshake timed out'),
      this.options.handshakeTimeoutMs,
    );
    this.log.info({ remote: socket.remoteAddress ?? 'unix' }, 'connection opened');
    socket.write(this.handshake.greeting());
  }

  private readonly onData = (chunk: Buffer): void => {
    if (this.closing) return;
    this.lastInput = Date.now();
    this.busyPoll.touch();
    this.writer.clientActive();
    this.input.push(chunk);
    // Nothing the client sends counts before its TLS handshake is done.
    if (this.tls && !this.tls.secure) return;
    this.pump();
  };

  private readonly onEnd = (): void => {
    if (this.session) this.session.endOfInput();
    else this.finish('client closed during the handshake');
  };

  private readonly onDrain = (): void => this.pump();

  private readonly onError = (err: NodeJS.ErrnoException): void => {
    if (this.tls && !this.tls.secure && !this.closing) {
      this.closeReason = `TLS handshake failed: ${err.code ?? err.message}`;
      const identity = this.tls.upgrade.pskIdentity;
      this.log.warn({ reason: err.message, ...(identity === null ? {} : { pskIdentity: identity }) }, 'TLS handshake failed');
      return;
    }
    this.closeReason = `socket error: ${err.code ?? err.message}`;
  };

  private readonly onClose = (): void => this.closed();

  /** The listeners of whichever stream carries NBD now: the accepted socket, then the TLS stream over it. */
  private listen(stream: Socket): void {
    stream.on('data', this.onData);
    stream.on('end', this.onEnd);
    stream.on('drain', this.onDrain);
    stream.on('error', this.onError);
    stream.on('close', this.onClose);
  }

  /** Stops hearing from a stream that no longer carries this connection here; its errors still name the close reason. */
  private unlisten(stream: Socket): void {
    stream.off('data', this.onData);
    stream.off('end', this.onEnd);
    stream.off('drain', this.onDrain);
    stream.off('close', this.onClose);
  }

  beginShutdown(): void {
    if (this.remote) this.remote.shutdown();
    else if (this.session) this.session.beginShutdown();
    else this.handshake.shuttingDown = true;
  }

  destroy(reason: string): void {
    if (this.remote) return this.remote.destroy(reason);
    this.closeReason = reason;
    this.socket.destroy();
  }

  readInto(target: Buffer): number {
    // Bytes the stream has read but not yet delivered (a paused socket
    // keeps them in its buffer) come first: only past them is the
    // descriptor next in line.
    if (this.fd === null || this.closing || this.socket.readableLength > 0) return 0;
    const n = readInto(this.fd, target);
    // Bytes read here count as input like the stream's do (see finishWhenQuiet).
    if (n > 0) this.lastInput = Date.now();
    return n;
  }

  pauseInput(): void {
    this.socket.pause();
  }

  resumeInput(): void {
    if (!this.closing && !this.moving) this.socket.resume();
  }

  finish(reason: string): void {
    if (this.closing) return;
    this.closing = true;
    this.closeReason = reason;
    this.session?.stop();
    // Everything the client is owed has been written: once the kernel has
    // it, close, whether or not the client ever closes its end.
    this.writer.flush();
    this.socket.end(() => this.socket.destroy());
  }

  finishWhenQuiet(reason: string): void {
    if (this.quietTimer || this.closing || !this.session) return;
    const session = this.session;
    const graceEnds = (this.graceEnds ??= Date.now() + SHUTDOWN_GRACE_MS);
    const check = (): void => {
      this.quietTimer = null;
      const now = Date.now();
      const quietFor = now - this.lastInput;
      if (now >= graceEnds || (quietFor >= QUIET_MS && session.idle)) {
        this.finish(reason);
        return;
      }
      this.quietTimer = setTimeout(check, Math.min(quietFor < QUIET_MS ? QUIET_MS - quietFor : QUIET_MS, graceEnds - now));
    };
    this.quietTimer = setTimeout(check, Math.min(QUIET_MS, graceEnds - Date.now()));
  }

  abort(reason: string): void {
    this.hangUp(reason, 'closing connection: protocol violation');
  }

  private hangUp(reason: string, message: string): void {
    if (this.closing) return;
    this.closing = true;
    this.log.warn({ reason }, message);
    this.session?.stop();
    this.destroy(reason);
  }

  private pump(): void {
    if (this.moving) return;
    if (this.session) return this.session.pump();
    while (!this.closing && !this.session && !this.moving && (!this.tls || this.tls.secure)) {
      if (this.socket.writableLength >= MAX_HANDSHAKE_BACKLOG) {
        // The client is not reading its replies; 'drain' brings us back.
        this.pauseInput();
        return;
      }
      if (this.handshake.phase === 'client-flags') {
        const bytes = this.input.take(4);
        if (!bytes) break;
        this.apply(this.handshake.receiveClientFlags(decodeClientFlags(bytes)!));
      } else if (!this.readOption()) {
        break;
      }
    }
    if (this.session) (this.session as TransmissionSession).pump();
    else this.resumeInput();
  }

  /** Frames one option; false when it needs more bytes. */
  private readOption(): boolean {
    if (!this.option) {
      const bytes = this.input.take(OPTION_HEADER_SIZE);
      if (!bytes) return false;
      const header = decodeOptionHeader(bytes)!;
      if (header.magic !== IHAVEOPT) {
        this.abort(`bad option magic 0x${header.magic.toString(16)}`);
        return false;
      }
      if (header.length > MAX_OPTION_SKIP) {
        this.abort(`option ${header.option} with ${header.length} bytes of data`);
        return false;
      }
      if (++this.optionCount > this.maxOptions) {
        this.hangUp(`client sent more than ${this.maxOptions} options`, 'closing connection: too many options');
        return false;
      }
      this.option = header;
      this.optionSkip = header.length > MAX_OPTION_DATA ? header.length : 0;
    }
    const { option, length } = this.option;
    if (this.optionSkip > 0) {
      this.optionSkip -= this.input.skip(this.optionSkip);
      if (this.optionSkip > 0) return false;
      this.option = null;
      this.apply(this.handshake.receiveOption(option, null));
      return true;
    }
    const payload = this.input.take(length);
    if (!payload) return false;
    this.option = null;
    this.apply(this.handshake.receiveOption(option, payload));
    return true;
  }

  private apply(step: Step): void {
    if (step.startTls) return this.startTls(step.send);
    const placement = step.phase === 'transmission' ? this.place(step.agreement!) : null;
    if (placement && !placement.here) return this.move(placement.worker, step.agreement!, step.send);
    // One write a step: a flood of small replies queues as few buffers as it can.
    if (step.send.length > 0) this.socket.write(step.send.length === 1 ? step.send[0] : Buffer.concat(step.send));
    if (step.phase === 'closed') {
      this.finish(step.reason ?? 'handshake closed');
      return;
    }
    if (step.phase !== 'transmission') return;
    this.leaveLoop = placement?.here ? placement.leave : null;
    this.beginTransmission(step.agreement!);
  }

  /** Where the transmission runs (--threads): null when nothing can move it, as on TLS or with replies still queued. */
  private place(agreement: Agreement): ReturnType<ConnectionLoops['place']> {
    const { loops } = this.options;
    if (!loops || this.fd === null || this.tls || this.socket.writableLength > 0) return null;
    return loops.place(agreement.export.name);
  }

  /**
   * Moves the connection to another loop once that loop is ready (its
   * thread starts with the first connection placed on it); until then
   * nothing is read or answered. If the loop cannot take it, the
   * connection stays and its transmission starts here.
   */
  private move(worker: LoopWorker, agreement: Agreement, reply: Buffer[]): void {
    this.clearHandshakeTimer();
    this.moving = true;
    this.pauseInput();
    void worker.whenReady().then((ready) => {
      this.moving = false;
      if (this.closing) return;
      try {
        if (ready && this.handOff(worker, agreement, reply)) {
          // A shutdown that began while it waited reaches it there.
          if (this.handshake.shuttingDown) this.remote!.shutdown();
          return;
        }
        this.socket.write(Buffer.concat(reply));
        this.beginTransmission(agreement);
        if (this.handshake.shuttingDown) this.session!.beginShutdown();
        this.resumeInput();
        this.pump();
      } catch (err) {
        this.hangUp(`moving to loop ${worker.loop} failed: ${(err as Error).message}`, 'closing connection: internal error');
      }
    });
  }

  /**
   * Hands the connection to another loop (see the top of this file): it
   * reads no more here, and what it had read past GO goes along, with
   * the reply to GO, which the loop sends. False when the descriptor
   * cannot be duplicated: the connection then stays.
   */
  private handOff(worker: LoopWorker, agreement: Agreement, reply: Buffer[]): boolean {
    const socket = this.socket;
    let fd: number;
    try {
      fd = duplicateFd(this.fd!);
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'transmission stays on the main loop: the socket cannot be duplicated');
      return false;
    }
    this.unlisten(socket);
    socket.pause();
    for (let chunk: Buffer | null; (chunk = socket.read() as Buffer | null) !== null; ) this.input.push(chunk);
    const input = this.input.take(this.input.length) ?? Buffer.alloc(0);
    this.exportName = agreement.export.name;
    const { export: exp, ...terms } = agreement;
    this.remote = worker.serve(
      {
        type: 'serve',
        id: this.options.loops!.connectionId(),
        fd,
        reply: Uint8Array.from(Buffer.concat(reply)),
        input: Uint8Array.from(input),
        agreement: { ...terms, exportName: exp.name },
        bindings: this.log.bindings(),
      },
      () => this.remoteClosed(),
    );
    this.log.debug({ export: exp.name, loop: worker.loop }, 'transmission moved to another loop');
    socket.destroy();
    return true;
  }

  /** The loop that ran this connection says it has closed (and logged how). */
  private remoteClosed(): void {
    this.gone = true;
    this.closing = true;
    this.onClosed(this);
  }

  /**
   * Runs the transmission phase of a connection another loop negotiated
   * (handOff): sends the reply to GO, then serves what the client sent
   * after it.
   */
  adopt(agreement: Agreement, reply: Buffer, pending: Buffer): void {
    this.socket.setNoDelay?.(true);
    this.listen(this.socket);
    this.socket.write(reply);
    if (pending.length > 0) this.input.push(pending);
    this.beginTransmission(agreement);
    this.pump();
  }

  private beginTransmission(agreement: Agreement): void {
    const served = this.registry.find(agreement.export.name)!;
    this.clearHandshakeTimer();
    this.exportName = served.name;
    const log = this.log.child({ export: served.name });
    this.session = new TransmissionSession(this, agreement, served.gateway, this.options.limits, this.stats, log);
    log.info(
      {
        tls: this.tls !== null,
        structured: agreement.structuredReplies,
        extended: agreement.extendedHeaders,
        flags: agreement.flags,
        metaContexts: agreement.metaContexts.map((c) => c.name),
      },
      'transmission started',
    );
  }

  /** Sends STARTTLS's ACK in plain text and puts the TLS stream in the socket's place. */
  private startTls(ack: Buffer[]): void {
    const tls = this.options.tls!;
    const plain = this.socket;
    const early = this.input.length + plain.readableLength;
    if (early > 0) {
      // Sent before the client could have seen the ACK: neither options nor TLS.
      this.abort(`${early} bytes sent after NBD_OPT_STARTTLS before its reply`);
      return;
    }
    plain.write(Buffer.concat(ack));
    this.unlisten(plain);
    // The plain socket's own errors still name the reason; the TLS stream reports its close.
    this.fd = null;
    const upgrade = tls.upgrade(plain);
    this.tls = { upgrade, secure: false };
    this.socket = upgrade.socket;
    this.writer = new ReplyWriter(upgrade.socket, this.busyPoll);
    this.listen(upgrade.socket);
    upgrade.socket.once('secure', () => this.tlsEstablished());
  }

  private tlsEstablished(): void {
    const tls = this.tls!;
    if (this.closing) return;
    const verdict = this.options.tls!.established(tls.upgrade);
    if (!verdict.ok) {
      this.hangUp(verdict.reason, 'closing connection: TLS client refused');
      return;
    }
    tls.secure = true;
    this.log.info({ tls: this.options.tls!.kind, ...verdict.fields }, 'TLS established');
    this.pump();
  }

  private clearHandshakeTimer(): void {
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = null;
  }

  private closed(): void {
    if (this.gone) return;
    this.gone = true;
    this.closing = true;
    this.clearHandshakeTimer();
    if (this.quietTimer) clearTimeout(this.quietTimer);
    this.session?.stop();
    this.writer.close();
    this.leaveLoop?.();
    this.log.info(
      {
        export: this.exportName,
        reason: this.closeReason,
        durationMs: Date.now() - this.opened,
        requests: this.stats.requests,
        errors: this.stats.errors,
        bytesRead: this.stats.bytesRead,
        bytesWritten: this.stats.bytesWritten,
      },
      'connection closed',
    );
    this.onClosed(this);
  }
}
