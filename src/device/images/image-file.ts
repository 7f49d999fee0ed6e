// Byte access to an image file through the I/O engine, for qcow2's data
// and metadata alike, and for raw images' reads.
//
// With direct I/O (a descriptor opened O_DIRECT) the engine is wrapped in
// DirectIo, which widens every transfer to aligned blocks; a widened read
// must not cross the end of the file, where the engine fails. A writable
// file is therefore kept a multiple of the alignment long: it is extended
// (with zeroes, which nothing references) before a write that ends past
// it. A read-only file cannot be extended, so the unaligned tail past its
// last whole block is read through a second, buffered descriptor.
//
// Metadata writes (table entries of 8 bytes, refcounts of 2, new tables)
// sit on the allocation path, one after another under the image's
// metadata mutex. Through a ring each would cost a completion round trip
// (a buffered io_uring write goes to a kernel worker: about 70 µs here,
// against 3 µs for pwrite), and every allocation waits for two of them.
// So without direct I/O they are plain synchronous pwrites into the page
// cache; the order of writes, and what reaches the file before the call
// returns, are the same. Cluster data goes through the engine.
//
// Write-back errors are sticky. Linux reports a failed write-back once
// per open file description, and every connection to an export shares
// this one: after one FLUSH got EIO, the next would return 0 while the
// data it covers is gone. So the first failed sync (any error) or failed
// durable write (EIO: an O_DSYNC write's ENOSPC is a full disk, not lost
// data) marks the file, and from then on every sync and durable write
// fails with EIO until the image is opened again, as qemu-nbd and nbdkit
// do. Plain writes go on: they promise nothing until a FLUSH.

import fs from 'node:fs';
import { constants as osConstants } from 'node:os';
import type { IoEngine } from '../../io/engine.js';
import { DeviceError } from '../errors.js';
import { scatterSegments, totalLength } from '../types.js';
import { DIRECT_ALIGNMENT, directEngine } from '../../io/probe.js';
import { errnoName } from '../../sys/libc.js';
import { seek } from '../../sys/syscalls.js';

/** One operation per buffer, at consecutive positions from `offset`. */
export function consecutive<T>(buffers: Buffer[], offset: number, op: (buffer: Buffer, position: number) => T): T[] {
  const ops: T[] = [];
  let position = offset;
  for (const buffer of buffers) {
    ops.push(op(buffer, position));
    position += buffer.length;
  }
  return ops;
}

/** The length of a file, or of a block device (whose stat size is 0). */
export function fileSize(fd: number): number {
  const stat = fs.fstatSync(fd);
  return stat.isBlockDevice() ? (seek(fd, 0, 'end') ?? 0) : stat.size;
}

/** Told once, when an image file's write-back first fails (for the log). */
export type WritebackReport = (err: Error) => void;

export class ImageFile {
  /** The engine transfers go through: wrapped in DirectIo for an O_DIRECT descriptor. */
  readonly engine: IoEngine;
  /** Direct I/O: the file's length as extended so far (writable) or as it is (read-only). */
  private size = 0;
  private tailFd: number | null = null;

  constructor(
    readonly fd: number,
    engine: IoEngine,
    private readonly direct: { writable: boolean } | null = null,
    private readonly onWritebackError?: WritebackReport,
    /** 0, or the errno of the write-back failure (see above); shared by every ImageFile over `fd`. */
    readonly failedCell: Int32Array = new Int32Array(new SharedArrayBuffer(4)),
  ) {
    this.engine = direct ? directEngine(engine) : engine;
    if (direct) {
      this.size = fileSize(fd);
      if (direct.writable) this.extendTo(this.size);
    }
  }

  /** Where the read-only direct tail starts: reads ending past it take the buffered path. */
  private get alignedEnd(): number {
    return this.direct && !this.direct.writable ? Math.floor(this.size / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT : Infinity;
  }

  /** Reads into `buffers`, laid one after another from `offset`: straight in, except for a read-only direct tail. */
  async readInto(buffers: Buffer[], offset: number): Promise<void> {
    const length = totalLength(buffers);
    if (offset + length <= this.alignedEnd) {
      return this.engine.submit(consecutive(buffers, offset, (buffer, position) => ({ kind: 'read', fd: this.fd, buffer, position }) as const));
    }
    scatterSegments(offset, buffers, [{ offset, length, data: await this.read(offset, length) }]);
  }

  /** A read done now, without waiting (IoEngine.tryRead), or null when it must go through read(). */
  tryRead(offset: number, length: number): Buffer | null {
    if (!this.engine.tryRead || offset + length > this.alignedEnd) return null;
    const buffer = this.engine.allocate(length);
    let done = false;
    try {
      done = this.engine.tryRead({ kind: 'read', fd: this.fd, buffer, position: offset });
    } finally {
      if (!done) this.engine.release(buffer);
    }
    return done ? buffer : null;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const buffer = this.engine.allocate(length);
    const aligned = this.alignedEnd;
    if (offset + length <= aligned) {
      await this.engine.submit([{ kind: 'read', fd: this.fd, buffer, position: offset }]);
      return buffer;
    }
    // Read-only direct I/O: the part in whole blocks directly, the tail buffered.
    const head = Math.max(0, aligned - offset);
    if (head > 0) await this.engine.submit([{ kind: 'read', fd: this.fd, buffer: buffer.subarray(0, head), position: offset }]);
    this.tailFd ??= fs.openSync(`/proc/self/fd/${this.fd}`, 'r');
    const n = fs.readSync(this.tailFd, buffer, head, length - head, offset + head);
    if (n < length - head) throw Object.assign(new Error(`unexpected end of file at byte ${offset + head + n}`), { code: 'EIO' });
    return buffer;
  }

  write(buffer: Buffer, offset: number): Promise<void> {
    if (this.direct) this.extendTo(offset + buffer.length);
    return this.engine.submit([{ kind: 'write', fd: this.fd, buffer, position: offset, buffered: !this.direct }]);
  }

  /** A metadata write, done before it returns when the page cache takes it (see above). */
  writeMeta(buffer: Buffer, offset: number): Promise<void> {
    if (this.direct) return this.write(buffer, offset);
    try {
      for (let done = 0; done < buffer.length; ) {
        done += fs.writeSync(this.fd, buffer, done, buffer.length - done, offset + done);
      }
    } catch (err) {
      return Promise.reject(err);
    }
    return Promise.resolve();
  }

  /** fdatasync; from its first failure on, every sync fails (see above). */
  sync(): Promise<void> {
    return this.guard(() => this.engine.submit([{ kind: 'sync', fd: this.fd, dataOnly: true }]), () => true);
  }

  /**
   * Runs a write that is on stable storage when it succeeds (through an
   * O_DSYNC descriptor): refused after a write-back failure; its own EIO
   * is one.
   */
  durableWrite(write: () => Promise<void>): Promise<void> {
    return this.guard(write, (err) => err.code === 'EIO');
  }

  private guard(transfer: () => Promise<void>, losesData: (err: NodeJS.ErrnoException) => boolean): Promise<void> {
    const failed = Atomics.load(this.failedCell, 0);
    if (failed !== 0) {
      return Promise.reject(
        new DeviceError(
          'EIO',
          `an earlier write-back to this image failed (${errnoName(failed)}): data may be lost, so FLUSH and FUA writes fail until the image is opened again`,
        ),
      );
    }
    return transfer().catch((err: NodeJS.ErrnoException) => {
      if (losesData(err)) this.failWriteback(err);
      throw err;
    });
  }

  private failWriteback(err: NodeJS.ErrnoException): void {
    // EIO when the error names no errno; only the first failure is told.
    const errno = (osConstants.errno as Record<string, number>)[err.code ?? ''] ?? osConstants.errno.EIO;
    if (Atomics.compareExchange(this.failedCell, 0, 0, errno) === 0) this.onWritebackError?.(err);
  }

  /** Closes the extra descriptor, if one was opened (the caller owns `fd`). */
  close(): void {
    if (this.tailFd !== null) fs.closeSync(this.tailFd);
    this.tailFd = null;
  }

  /** Grows the file to a whole number of blocks covering `end` (never shrinks it). */
  private extendTo(end: number): void {
    const target = Math.ceil(end / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT;
    if (target <= this.size && this.size % DIRECT_ALIGNMENT === 0) return;
    const size = Math.max(target, Math.ceil(this.size / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT);
    fs.ftruncateSync(this.fd, size);
    this.size = size;
  }
}
