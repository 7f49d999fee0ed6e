// A raw image: the export's bytes are the file's (or block device's)
// bytes. Sparseness is the file system's: SEEK_DATA/SEEK_HOLE tell where
// data is, so block status is exact (reads find their zero blocks in what
// they read, see zero-blocks.ts); TRIM punches holes; write-zeroes punches or, with
// noHole, zeroes the range in place (FALLOC_FL_ZERO_RANGE); where neither
// works it says ENOTSUP and the gateway writes zero buffers. FUA writes go
// through a second descriptor opened O_DSYNC, so one write does not force
// out everything else that is dirty in the file.

import fs from 'node:fs';
import { dirname } from 'node:path';
import { promisify } from 'node:util';
import type { IoEngine } from '../../io/engine.js';
import { DIRECT_ALIGNMENT } from '../../io/probe.js';
import {
  adviseWillNeed,
  fallocate,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  seek,
  setNoCache,
} from '../../sys/syscalls.js';
import { inPageCache, sendFileAvailable } from '../../sys/send-file.js';
import { DeviceError } from '../errors.js';
import { withoutZeroBlocks } from '../zero-blocks.js';
import { consecutive, fileSize, ImageFile } from './image-file.js';
import { lockFor } from './lock.js';
import type { BlockDevice, Capabilities, Extent, ReadSegment, Request } from '../types.js';

/**
 * Reads this large, asked for with sendFile, are answered with file
 * segments when their data is in the page cache: the front end sends them
 * from there. Server CPU per random read at depth 8 here, copied / sent
 * from the file: 64 KiB 73-86 / 44-47 µs, 1 MiB about 375 / 190 µs (and
 * the reply leaves twice as fast); but 16 KiB 23 / 38 µs, so smaller
 * reads are copied. (Measured on the server alone: the client's side is
 * why sending from files is opt-in, see reply-writer.ts.)
 */
export const SEND_FILE_MIN = 64 << 10;
/** Most data and hole runs a read sent from the file may have; a more fragmented range is read instead. */
const MAX_SENT_RUNS = 64;

/** Most extents one block-status reply describes; the client asks again for the rest. */
export const MAX_EXTENTS = 1024;
const QCOW2_MAGIC = 0x514649fb;

const close = promisify(fs.close);

interface Run {
  offset: number;
  length: number;
  hole: boolean;
}

function isUnsupported(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'EOPNOTSUPP' || code === 'ENOTSUP' || code === 'ENOSYS';
}

export interface RawOptions {
  readOnly: boolean;
  engine: IoEngine;
  /** Bypass the page cache: O_DIRECT on Linux, F_NOCACHE on macOS. */
  direct?: boolean;
  /** Skip the QEMU-compatible image lock (like qemu-img -U); read-only opens only. */
  forceShare?: boolean;
  /** Told when write-back to the file first fails (see image-file.ts). */
  onWritebackError?: (path: string, err: Error) => void;
}

/**
 * What another event loop needs to serve a raw image through the same
 * descriptors (server/nbd/loops.ts): plain data, for postMessage. The
 * descriptors stay the sharing image's, and so does the lock on them.
 */
export interface RawShare {
  path: string;
  fd: number;
  dsyncFd: number;
  size: number;
  readOnly: boolean;
  sparse: boolean;
  punch: boolean;
  direct: boolean;
  /** The write-back failure mark, in shared memory (image-file.ts). */
  failedCell: Int32Array;
}

export class RawImage implements BlockDevice {
  readonly capabilities: Capabilities;
  readonly description: string;
  private zeroRangeWorks = true;
  /** Whether reads may be answered with file segments (false once cachestat turned out to be missing). */
  private sendFromFile = sendFileAvailable;

  private constructor(
    readonly path: string,
    private readonly fd: number,
    private readonly dsyncFd: number,
    readonly size: number,
    /** Reads (with direct I/O, an unaligned tail too) and the engine writes and syncs go through. */
    private readonly file: ImageFile,
    readOnly: boolean,
    sparse: boolean,
    private readonly punch: boolean,
    readonly direct: boolean,
    /** Whether close() closes the descriptors: false for an image adopted from a share. */
    private readonly ownsFds = true,
  ) {
    this.description = `raw image ${path}${readOnly ? ' (read-only)' : ''}${direct ? ' (direct I/O)' : ''}`;
    this.capabilities = {
      readOnly,
      flush: !readOnly,
      trim: !readOnly && punch,
      zero: !readOnly && punch,
      fastZero: !readOnly && punch,
      cache: true,
      extents: sparse,
      multiConn: true,
      blockSizes: { minimum: 1, preferred: 4096, maximum: 32 << 20 },
    };
  }

  /** Creates a sparse raw image of `size` bytes; never replaces an existing file. */
  static create(path: string, size: number): void {
    fs.mkdirSync(dirname(path), { recursive: true });
    const fd = fs.openSync(path, 'wx');
    try {
      fs.ftruncateSync(fd, size);
    } finally {
      fs.closeSync(fd);
    }
  }

  static open(path: string, options: RawOptions): RawImage {
    const direct = options.direct === true;
    const fd = openImageFile(path, options.readOnly, direct);
    try {
      // Before the lock, so that a host without direct I/O fails without
      // taking it. Never extended: a writable file must already be whole
      // blocks long (checked below), a read-only one has its tail read buffered.
      const file = new ImageFile(fd, options.engine, direct ? { writable: false } : null, (err) => options.onWritebackError?.(path, err));
      const stat = fs.fstatSync(fd);
      if (!stat.isFile() && !stat.isBlockDevice()) throw new Error(`${path} is neither a file nor a block device`);
      refuseQcow2(path);
      lockFor(fd, path, options);
      const size = fileSize(fd);
      if (direct && !options.readOnly && size % DIRECT_ALIGNMENT !== 0) {
        throw new Error(
          `${path}: --direct needs a writable raw image to be a multiple of ${DIRECT_ALIGNMENT} bytes long, not ${size} (read-only ones may have any size)`,
        );
      }
      const sparse = probe(() => seek(fd, 0, 'hole'));
      // Punching a hole past the end of the file changes nothing and tells
      // whether the file system can punch at all.
      const punch = !options.readOnly && probe(() => fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, size, 4096));
      const dsyncFd = options.readOnly ? fd : openImageFile(path, false, direct, fs.constants.O_DSYNC);
      return new RawImage(path, fd, dsyncFd, size, file, options.readOnly, sparse, punch, direct);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
  }

  share(): RawShare {
    const { path, fd, dsyncFd, size, direct, punch } = this;
    return { path, fd, dsyncFd, size, readOnly: this.capabilities.readOnly, sparse: this.capabilities.extents, punch, direct, failedCell: this.file.failedCell };
  }

  /** The image another loop shared, with this loop's engine; its close() leaves the descriptors open. */
  static adopt(share: RawShare, engine: IoEngine, onWritebackError?: (path: string, err: Error) => void): RawImage {
    const { path, fd, dsyncFd, size, readOnly, sparse, punch, direct } = share;
    const file = new ImageFile(fd, engine, direct ? { writable: false } : null, (err) => onWritebackError?.(path, err), share.failedCell);
    return new RawImage(path, fd, dsyncFd, size, file, readOnly, sparse, punch, direct, false);
  }

  async read(req: Request): Promise<ReadSegment[]> {
    if (req.length === 0) return [];
    return this.fileSegments(req) ?? this.segments(req, await this.file.read(req.offset, req.length));
  }

  tryRead(req: Request): ReadSegment[] | null {
    if (req.length === 0) return [];
    const inFile = this.fileSegments(req);
    if (inFile) return inFile;
    const data = this.file.tryRead(req.offset, req.length);
    return data && this.segments(req, data);
  }

  private segments(req: Request, data: Buffer): ReadSegment[] {
    return req.df ? [{ offset: req.offset, length: req.length, data }] : withoutZeroBlocks(req.offset, data);
  }

  readInto(req: Request, into: Buffer[]): Promise<void> {
    return this.file.readInto(into, req.offset);
  }

  payloadBuffer(size: number): Buffer {
    return this.file.engine.allocate(size);
  }

  recycle(buffer: Buffer): void {
    this.file.engine.release(buffer);
  }

  write(req: Request): Promise<void> {
    return this.writeFrom(req, [req.data!]);
  }

  /** A write from one or more buffers (guest memory): one engine operation each, in one batch. */
  writeFrom(req: Request, from: Buffer[]): Promise<void> {
    const { engine } = this.file;
    const fd = req.fua ? this.dsyncFd : this.fd;
    const buffered = !req.fua && !this.direct;
    const ops = consecutive(from, req.offset, (buffer, position) => ({ kind: 'write', fd, buffer, position, buffered }) as const);
    return req.fua ? this.file.durableWrite(() => engine.submit(ops)) : engine.submit(ops);
  }

  flush(): Promise<void> {
    return this.file.sync();
  }

  async trim(req: Request): Promise<void> {
    if (req.length === 0) return;
    fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, req.offset, req.length);
    if (req.fua) await this.flush();
  }

  async writeZeroes(req: Request): Promise<void> {
    if (req.length === 0) return;
    if (!this.zeroInPlace(req)) {
      throw new DeviceError('ENOTSUP', 'this file system cannot zero a range without writing it');
    }
    if (req.fua) await this.flush();
  }

  async cache(req: Request): Promise<void> {
    if (req.length > 0) adviseWillNeed(this.fd, req.offset, req.length);
  }

  async blockStatus(req: Request): Promise<Extent[]> {
    const end = req.offset + req.length;
    if (!this.capabilities.extents) return [{ length: req.length, hole: false, zero: false }];
    return this.map(req.offset, end, req.reqOne ? 1 : MAX_EXTENTS).map((r) => ({
      length: r.length,
      hole: r.hole,
      zero: r.hole,
    }));
  }

  async close(): Promise<void> {
    this.file.close();
    if (!this.ownsFds) return;
    if (this.dsyncFd !== this.fd) await close(this.dsyncFd);
    await close(this.fd);
  }

  /**
   * A read as the file's data runs (to be sent from the file) and holes,
   * or null when some of its data is not in the page cache (sending it
   * would wait for the disk in the event loop; the engine reads it
   * instead), when the file is too fragmented to be worth it, or when
   * this host cannot tell what is cached.
   */
  private fileSegments(req: Request): ReadSegment[] | null {
    if (!req.sendFile || req.length < SEND_FILE_MIN || this.direct || !this.sendFromFile) return null;
    const end = req.offset + req.length;
    const runs = req.df || !this.capabilities.extents ? [{ offset: req.offset, length: req.length, hole: false }] : this.map(req.offset, end, MAX_SENT_RUNS);
    if (runs.reduce((n, r) => n + r.length, 0) < req.length) return null;
    try {
      if (runs.some((r) => !r.hole && !inPageCache(this.fd, r.offset, r.length))) return null;
    } catch {
      this.sendFromFile = false;
      return null;
    }
    return runs.map((r) => (r.hole ? { offset: r.offset, length: r.length, data: null } : { offset: r.offset, length: r.length, data: null, file: { fd: this.fd, position: r.offset } }));
  }

  /** Data and hole runs covering [offset, end), at most maxRuns of them. */
  private map(offset: number, end: number, maxRuns: number): Run[] {
    const runs: Run[] = [];
    let pos = offset;
    while (pos < end && runs.length < maxRuns) {
      const data = seek(this.fd, pos, 'data');
      if (data === null || data >= end) {
        runs.push({ offset: pos, length: end - pos, hole: true });
        break;
      }
      if (data > pos) {
        runs.push({ offset: pos, length: data - pos, hole: true });
        pos = data;
        continue;
      }
      const stop = Math.min(seek(this.fd, pos, 'hole') ?? end, end);
      runs.push({ offset: pos, length: stop - pos, hole: false });
      pos = stop;
    }
    return runs;
  }

  /** Zeroes the range without writing buffers; false when the file system cannot. */
  private zeroInPlace(req: Request): boolean {
    const modes = req.noHole ? [FALLOC_FL_ZERO_RANGE] : [FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE];
    for (const mode of modes) {
      if (mode === FALLOC_FL_ZERO_RANGE && !this.zeroRangeWorks) continue;
      if (mode === FALLOC_FL_PUNCH_HOLE && !this.capabilities.trim) continue;
      try {
        fallocate(this.fd, mode | FALLOC_FL_KEEP_SIZE, req.offset, req.length);
        return true;
      } catch (err) {
        if (!isUnsupported(err)) throw err;
        if (mode === FALLOC_FL_ZERO_RANGE) this.zeroRangeWorks = false;
      }
    }
    return false;
  }

}

function probe(call: () => unknown): boolean {
  try {
    call();
    return true;
  } catch {
    return false;
  }
}

/** Opens an image file for reading, or reading and writing, with direct I/O if asked. */
export function openImageFile(path: string, readOnly: boolean, direct: boolean, extraFlags = 0): number {
  const directFlag = direct && process.platform === 'linux' ? fs.constants.O_DIRECT : 0;
  const flags = (readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR) | directFlag | extraFlags;
  let fd: number;
  try {
    fd = fs.openSync(path, flags);
  } catch (err) {
    if (direct && (err as NodeJS.ErrnoException).code === 'EINVAL') {
      throw new Error(`${path}: this file system does not support direct I/O (O_DIRECT)`);
    }
    throw err;
  }
  if (direct && process.platform === 'darwin') setNoCache(fd);
  return fd;
}

function refuseQcow2(path: string): void {
  // A plain descriptor of its own: an O_DIRECT one reads only aligned blocks into aligned memory.
  const fd = fs.openSync(path, fs.constants.O_RDONLY);
  try {
    const magic = Buffer.alloc(4);
    if (fs.readSync(fd, magic, 0, 4, 0) === 4 && magic.readUInt32BE(0) === QCOW2_MAGIC) {
      throw new Error(`${path} is a qcow2 image; vblk serves raw images only for now`);
    }
  } finally {
    fs.closeSync(fd);
  }
}
