// The transmission phase of one NBD connection. Requests are decoded off
// the input queue and run concurrently; replies go out as each finishes,
// in any order. Reading stops (the socket is paused) while the requests
// in flight, the bytes they hold, or the replies queued for a slow client
// reach their bounds, and resumes as they drain. A WRITE payload is
// taken as a view when it arrived in one piece; otherwise it is put
// together in a buffer the device provides (aligned for direct I/O), from
// what the input queue holds and then straight from the socket. Read data
// and payload buffers go back to the device once used (the read's once
// its reply is written). An oversized WRITE payload is skipped without
// being stored and answered EINVAL; an absurd one ends the connection.
//
// With extended headers requests are 32 bytes and a payload follows any
// request flagged PAYLOAD_LEN (taken the same way as a WRITE's; one past
// the maximum payload ends the connection, as the protocol asks); every
// reply is a chunk with the 32-byte header, a success without data a
// NONE chunk.

import type { Logger } from 'pino';
import type { Gateway } from '../../device/gateway.js';
import { DeviceError, toDeviceError } from '../../device/errors.js';
import type { DirtyRun } from '../../device/dirty-bitmap.js';
import { findDirtyBitmap, type NamedBitmap } from '../../device/filters/dirty.js';
import type { ReadSegment, Result } from '../../device/types.js';
import { blockStatusPayload, checkRequest, commandName, type TransmissionTerms } from '../../protocol/nbd/commands.js';
import { CMD, CMD_FLAG, EXTENDED_REQUEST_MAGIC, EXTENDED_REQUEST_SIZE, NBD_ERR, REQUEST_MAGIC, REQUEST_SIZE } from '../../protocol/nbd/constants.js';
import { nbdErrno } from '../../protocol/nbd/errors.js';
import type { Agreement, MetaContext } from '../../protocol/nbd/handshake.js';
import { blockStatusChunks, dirtyBitmapOf, errorChunk, noneChunk, readChunks, simpleReply, type Frame, type ReplyTo } from '../../protocol/nbd/replies.js';
import { decodeExtendedRequest, decodeRequest, type RequestHeader } from '../../protocol/nbd/transmission-codec.js';
import type { BusyPoll } from '../busy-poll.js';
import type { ByteQueue } from '../byte-queue.js';
import type { FilePart, ReplyWriter } from './reply-writer.js';

export interface SessionLimits {
  /** Requests in flight before reading stops. */
  maxInflight: number;
  /** Payload and reply bytes held by requests in flight before reading stops. */
  maxInflightBytes: number;
  /** Reply bytes queued on a slow client's socket before reading stops. */
  maxBacklogBytes: number;
  /** Largest oversized WRITE payload skipped and answered EINVAL; beyond it, hang up. */
  maxSkippedPayload: number;
}

export interface ConnectionStats {
  requests: Record<string, number>;
  errors: number;
  bytesRead: number;
  bytesWritten: number;
}

/** Most runs of a dirty bitmap in one reply (QEMU's limit: 1 MiB of descriptors). */
const MAX_DIRTY_RUNS = 1 << 17;

/** What the session needs from the connection that owns the socket. */
export interface SessionHost {
  readonly input: ByteQueue;
  /** Server-wide: told when requests start and end, so it polls only while waiting for clients. */
  readonly busyPoll: BusyPoll;
  /** Reads bytes still in the kernel, past all of `input`, into target; 0 when there are none. */
  readInto(target: Buffer): number;
  readonly writer: ReplyWriter;
  pauseInput(): void;
  resumeInput(): void;
  /** Close gracefully: pending replies are flushed first. */
  finish(reason: string): void;
  /**
   * At shutdown, called whenever no request is running (none start from
   * then on): close gracefully once the client has sent nothing for a
   * moment, or once a short grace has passed whatever it sends.
   */
  finishWhenQuiet(reason: string): void;
  /** Hard disconnect after a protocol violation. */
  abort(reason: string): void;
}

interface PendingWrite {
  header: RequestHeader;
  payload: Buffer;
  filled: number;
}

interface SkippedWrite {
  header: RequestHeader;
  left: number;
}

export class TransmissionSession {
  private readonly terms: TransmissionTerms;
  private readonly extended: boolean;
  private readonly headerSize: number;
  private readonly maxPayload: number;
  private readonly debug: boolean;
  private inflight = 0;
  private inflightBytes = 0;
  private pending: PendingWrite | null = null;
  private skipped: SkippedWrite | null = null;
  /** DISC or end of input: answer what is in flight, then close. */
  private draining: string | null = null;
  private shuttingDown = false;
  private stopped = false;
  private pumping = false;
  /**
   * The selected qemu:dirty-bitmap contexts and their bitmaps as they were
   * when transmission began (undefined: dropped before then): a bitmap
   * dropped later, or started again under its name, answers an error.
   */
  private readonly dirtyContexts: { id: number; name: string; bitmap: NamedBitmap | undefined }[];

  constructor(
    private readonly host: SessionHost,
    private readonly agreement: Agreement,
    private readonly gateway: Gateway,
    private readonly limits: SessionLimits,
    readonly stats: ConnectionStats,
    private readonly log: Logger,
  ) {
    this.terms = {
      flags: agreement.flags,
      structuredReplies: agreement.structuredReplies,
      extendedHeaders: agreement.extendedHeaders,
      metaContextCount: agreement.metaContexts.length,
    };
    this.extended = agreement.extendedHeaders;
    this.headerSize = this.extended ? EXTENDED_REQUEST_SIZE : REQUEST_SIZE;
    this.maxPayload = agreement.export.capabilities.blockSizes.maximum;
    this.dirtyContexts = agreement.metaContexts.flatMap((c) => {
      const name = dirtyBitmapOf(c.name);
      return name === null ? [] : [{ id: c.id, name, bitmap: findDirtyBitmap(gateway.device, name) }];
    });
    this.debug = log.isLevelEnabled('debug');
  }

  /** Decodes and starts whatever the input holds, up to the bounds. */
  pump(): void {
    if (this.pumping || this.stopped) return;
    this.pumping = true;
    try {
      while (!this.stopped && !this.draining) {
        if (this.pending) {
          if (!this.fillPayload(this.pending)) break;
          continue;
        }
        if (this.skipped) {
          if (!this.skipPayload(this.skipped)) break;
          continue;
        }
        if (this.atBound()) break;
        const bytes = this.host.input.take(this.headerSize);
        if (!bytes) break;
        this.onHeader(this.extended ? decodeExtendedRequest(bytes)! : decodeRequest(bytes)!);
      }
    } finally {
      this.pumping = false;
    }
    if (this.draining || this.atBound()) this.host.pauseInput();
    else this.host.resumeInput();
    this.finishIfIdle();
  }

  /** The client sent EOF: what is in flight still gets its reply. */
  endOfInput(): void {
    if (!this.draining) this.draining = this.pending || this.skipped ? 'client closed mid-request' : 'client closed';
    this.finishIfIdle();
  }

  /** Server shutdown: new requests get ESHUTDOWN; close once idle. */
  beginShutdown(): void {
    this.shuttingDown = true;
    this.finishIfIdle();
  }

  /** The socket is gone: finish quietly, sending nothing more. */
  stop(): void {
    this.stopped = true;
  }

  /** No request running and none half received. */
  get idle(): boolean {
    return this.inflight === 0 && !this.pending && !this.skipped;
  }

  private atBound(): boolean {
    return (
      this.inflight >= this.limits.maxInflight ||
      this.inflightBytes >= this.limits.maxInflightBytes ||
      this.host.writer.backlog >= this.limits.maxBacklogBytes
    );
  }

  private finishIfIdle(): void {
    if (this.stopped || this.inflight > 0) return;
    if (this.draining) this.host.finish(this.draining);
    else if (this.shuttingDown) this.host.finishWhenQuiet('server shutdown');
  }

  private onHeader(h: RequestHeader): void {
    if (h.magic !== (this.extended ? EXTENDED_REQUEST_MAGIC : REQUEST_MAGIC)) {
      this.host.abort(`bad request magic 0x${(h.magic >>> 0).toString(16)}${this.extended ? ' (extended headers were negotiated)' : ''}`);
      this.stopped = true;
      return;
    }
    const name = commandName(h.type);
    this.stats.requests[name] = (this.stats.requests[name] ?? 0) + 1;
    if (this.debug) this.log.debug({ cmd: name, flags: h.flags, offset: h.offset, length: h.length }, 'request');
    if (h.type === CMD.DISC) {
      this.draining = 'client sent NBD_CMD_DISC';
      return;
    }
    const hasPayload = this.extended ? (h.flags & CMD_FLAG.PAYLOAD_LEN) !== 0 : h.type === CMD.WRITE;
    if (!hasPayload) return this.dispatch(h);
    if (h.length > this.maxPayload) {
      if (this.extended || h.length > this.limits.maxSkippedPayload) {
        this.host.abort(`payload of ${h.length} bytes is beyond ${this.extended ? 'the maximum' : 'any limit'}`);
        this.stopped = true;
        return;
      }
      this.skipped = { header: h, left: h.length };
      return;
    }
    const whole = this.host.input.length >= h.length ? this.host.input.take(h.length) : null;
    if (whole) return this.dispatch(h, whole);
    const payload = this.gateway.payloadBuffer(h.length);
    this.pending = { header: h, payload, filled: 0 };
    this.inflightBytes += h.length;
  }

  private fillPayload(p: PendingWrite): boolean {
    p.filled += this.host.input.copyInto(p.payload, p.filled, p.payload.length - p.filled);
    // The queue is empty now: the rest goes from the socket straight into the payload.
    while (p.filled < p.payload.length) {
      const n = this.host.readInto(p.payload.subarray(p.filled));
      if (n === 0) break;
      p.filled += n;
    }
    if (p.filled < p.payload.length) return false;
    this.pending = null;
    this.inflightBytes -= p.payload.length;
    this.dispatch(p.header, p.payload);
    return true;
  }

  private skipPayload(s: SkippedWrite): boolean {
    s.left -= this.host.input.skip(s.left);
    if (s.left > 0) return false;
    this.skipped = null;
    const max = this.maxPayload;
    this.replyError(s.header, NBD_ERR.EINVAL, `write of ${s.header.length} bytes exceeds the maximum payload of ${max}`);
    return true;
  }

  private dispatch(h: RequestHeader, payload?: Buffer): void {
    if (this.shuttingDown) return this.replyError(h, NBD_ERR.ESHUTDOWN, 'the server is shutting down');
    let contexts = this.agreement.metaContexts;
    if (payload && h.type !== CMD.WRITE) {
      // Only BLOCK_STATUS takes a payload other than data: the effect length and the contexts to answer.
      const form = h.type === CMD.BLOCK_STATUS ? blockStatusPayload(payload, contexts) : null;
      this.gateway.recycle(payload);
      payload = undefined;
      if (form && 'errno' in form) return this.replyError(h, form.errno, form.message);
      if (form) {
        h = { ...h, length: form.length };
        contexts = form.contexts;
      }
    }
    const checked = checkRequest(h, this.terms);
    if ('errno' in checked) return this.replyError(h, checked.errno, checked.message);
    const req = checked.request;
    if (payload) req.data = payload;
    if (h.type === CMD.READ && this.host.writer.sendsFiles) req.sendFile = true;
    const bytes = h.type === CMD.READ || h.type === CMD.WRITE ? h.length : 0;
    this.inflight++;
    this.host.busyPoll.begin();
    this.inflightBytes += bytes;
    // A read the page cache holds is answered in this turn (dispatch runs inside pump, whose loop goes on after it).
    const now = h.type === CMD.READ ? this.gateway.tryExecute(req) : null;
    if (now) return this.complete(h, bytes, now, contexts, payload);
    this.gateway.execute(req).then(
      (result) => this.complete(h, bytes, result, contexts, payload),
      (err: unknown) => this.complete(h, bytes, toDeviceError(err), contexts, payload),
    );
  }

  private complete(h: RequestHeader, bytes: number, outcome: Result | DeviceError, contexts: MetaContext[], payload?: Buffer): void {
    if (payload) this.gateway.recycle(payload);
    if (outcome instanceof DeviceError) this.replyError(h, nbdErrno(outcome.code), outcome.message);
    else this.replyResult(h, outcome, contexts);
    this.inflight--;
    this.host.busyPoll.end();
    this.inflightBytes -= bytes;
    if (this.draining || this.shuttingDown) this.finishIfIdle();
    else this.pump();
  }

  private replyTo(h: RequestHeader): ReplyTo {
    return { cookie: h.cookie, offset: h.exactOffset ?? h.offset, extended: this.extended };
  }

  private replyResult(h: RequestHeader, result: Result, contexts: MetaContext[]): void {
    if (result.op === 'read' && result.release) return this.replyFromFile(h, result.segments, result.release);
    if (result.op === 'read') {
      this.stats.bytesRead += h.length;
      // Once the last frame is written, the read's buffers may be reused.
      const written = (): void => {
        for (const s of result.segments) if (s.data) this.gateway.recycle(s.data);
      };
      if (!this.agreement.structuredReplies) {
        return this.send(simpleReply(h.cookie, 0, result.segments[0]?.data ?? undefined), written);
      }
      const frames = readChunks(this.replyTo(h), result.segments);
      frames.forEach((frame, i) => this.send(frame, i === frames.length - 1 ? written : undefined));
      return;
    }
    if (result.op === 'blockStatus') {
      const dirty = new Map<number, DirtyRun[]>();
      for (const c of this.dirtyContexts) {
        if (!contexts.some((s) => s.id === c.id)) continue;
        if (!c.bitmap || c.bitmap.dropped) return this.replyError(h, NBD_ERR.EINVAL, `dirty bitmap '${c.name}' was dropped`);
        dirty.set(c.id, c.bitmap.runs(h.offset, h.length, h.flags & CMD_FLAG.REQ_ONE ? 1 : MAX_DIRTY_RUNS));
      }
      for (const frame of blockStatusChunks(this.replyTo(h), contexts, result.extents, dirty)) this.send(frame);
      return;
    }
    if (result.op === 'write') this.stats.bytesWritten += h.length;
    this.send(this.extended ? noneChunk(this.replyTo(h)) : simpleReply(h.cookie, 0));
  }

  /** A read whose data the device left in its file: headers and holes as usual, the data sent from the file. */
  private replyFromFile(h: RequestHeader, segments: ReadSegment[], release: () => void): void {
    if (this.stopped) return release();
    this.stats.bytesRead += h.length;
    const parts: (Buffer | FilePart)[] = [];
    const frames = this.agreement.structuredReplies ? readChunks(this.replyTo(h), segments) : [simpleReply(h.cookie, 0)];
    frames.forEach(([header, payload], i) => {
      parts.push(header);
      if (payload) parts.push(payload);
      const file = segments[i]?.file;
      if (file) parts.push({ ...file, length: segments[i].length });
    });
    this.host.writer.sendFromFile(parts, release);
  }

  private replyError(h: RequestHeader, errno: number, message: string): void {
    this.stats.errors++;
    if (this.debug) this.log.debug({ cmd: commandName(h.type), errno, message }, 'request failed');
    if (this.agreement.structuredReplies) this.send(errorChunk(this.replyTo(h), errno, message));
    else this.send(simpleReply(h.cookie, errno));
  }

  private send([header, payload]: Frame, written?: () => void): void {
    if (!this.stopped) this.host.writer.send(header, payload, written);
  }
}
