// The device model every front end (NBD today, vhost-user later) speaks.
// A Request is one block operation in the spirit of virtio-blk; a
// BlockDevice executes requests against an image. Filters wrap a
// BlockDevice and pass through what they do not change. No wire constant
// of any protocol belongs here.

export type Op = 'read' | 'write' | 'flush' | 'trim' | 'writeZeroes' | 'cache' | 'blockStatus' | 'getId';

export interface Request {
  op: Op;
  offset: number;
  length: number;
  /** Payload of a write; its length equals `length`. */
  data?: Buffer;
  /**
   * A read's destination: buffers filled one after another, `length` bytes
   * in all (guest memory, for vhost-user). The result then holds no data.
   */
  into?: Buffer[];
  /** A write's payload as buffers one after another, `length` bytes in all, instead of `data` (guest memory). */
  from?: Buffer[];
  /** Persist before completing (data and whatever metadata reaches it). */
  fua: boolean;
  /** writeZeroes must leave the range allocated. */
  noHole: boolean;
  /** writeZeroes must fail with ENOTSUP unless it is faster than writing. */
  fastZero: boolean;
  /** blockStatus wants one extent only. */
  reqOne: boolean;
  /** read must come back as one contiguous buffer (no hole segments). */
  df: boolean;
  /**
   * The front end can send a read's bytes straight from a file (sendfile):
   * the device may answer with segments that name where the bytes lie
   * (`ReadSegment.file`) instead of reading them. With df, one segment.
   */
  sendFile?: boolean;
}

/** Where a read's bytes lie: a file descriptor and the position in it. */
export interface FileBytes {
  fd: number;
  position: number;
}

/** A piece of a read: bytes, or null for a range that reads as zeroes (unless `file` says where the bytes are). */
export interface ReadSegment {
  offset: number;
  length: number;
  data: Buffer | null;
  /** Only for a request with sendFile, and with data null: the bytes are in this file, to be sent from there. */
  file?: FileBytes;
}

/** A run of the device with one allocation state. */
export interface Extent {
  length: number;
  /** Not allocated in the backing store. */
  hole: boolean;
  /** Reads as zeroes. */
  zero: boolean;
  /**
   * Which layer of a backing chain holds the range: 1 the image itself,
   * 2 its backing file, and so on; 0 none (reads as zeroes). Absent means 1.
   */
  depth?: number;
}

export interface BlockSizes {
  minimum: number;
  preferred: number;
  /** Largest read or write payload accepted in one request. */
  maximum: number;
}

export interface Capabilities {
  readOnly: boolean;
  /** flush and fua reach stable storage (false: there is nothing to persist). */
  flush: boolean;
  trim: boolean;
  /** writeZeroes is done natively rather than by writing zero buffers. */
  zero: boolean;
  /** writeZeroes can honour fastZero (zeroing is cheaper than writing). */
  fastZero: boolean;
  cache: boolean;
  /** blockStatus reports real allocation rather than "all data". */
  extents: boolean;
  /** A flush on any connection covers writes completed on all of them. */
  multiConn: boolean;
  blockSizes: BlockSizes;
}

export type Result =
  | {
      op: 'read';
      segments: ReadSegment[];
      /**
       * Present when segments name file bytes: their pages are sent as
       * they are, so a later write to them would change what the peer
       * reads. The request holds its place against overlapping writes
       * until this is called, once the peer has taken the bytes.
       */
      release?: () => void;
    }
  | { op: 'blockStatus'; extents: Extent[] }
  | { op: 'getId'; id: string }
  | { op: 'write' | 'flush' | 'trim' | 'writeZeroes' | 'cache' };

export interface BlockDevice {
  readonly size: number;
  /** A filter's device below it (images have none): exports of one image are closed once, through one chain. */
  readonly next?: BlockDevice;
  readonly capabilities: Capabilities;
  /** Human-readable one-liner: format and where the data lives. */
  readonly description: string;
  read(req: Request): Promise<ReadSegment[]>;
  /**
   * A read answered now, without waiting (data in the page cache, file
   * segments), or null when it would have to wait: then read() does it.
   * Only images served as they are offer it (a filter between would be
   * passed by).
   */
  tryRead?(req: Request): ReadSegment[] | null;
  /** A buffer for a write payload of `size` bytes, suited to the device's I/O (aligned for direct I/O). */
  payloadBuffer?(size: number): Buffer;
  /** A buffer from read() or payloadBuffer() is no longer used (any view of it will do, more than once is harmless). */
  recycle?(buffer: Buffer): void;
  /** Reads straight into req.into; without it the gateway reads and copies. */
  readInto?(req: Request, into: Buffer[]): Promise<void>;
  write(req: Request): Promise<void>;
  /** Writes straight from req.from; without it the gateway joins the buffers first. */
  writeFrom?(req: Request, from: Buffer[]): Promise<void>;
  flush(): Promise<void>;
  trim(req: Request): Promise<void>;
  writeZeroes(req: Request): Promise<void>;
  cache(req: Request): Promise<void>;
  blockStatus(req: Request): Promise<Extent[]>;
  close(): Promise<void>;
}

export function request(op: Op, offset: number, length: number, extra: Partial<Request> = {}): Request {
  return { op, offset, length, fua: false, noHole: false, fastZero: false, reqOne: false, df: false, ...extra };
}

/** Whether a request's range meets [offset, offset + length). */
export function overlaps(req: Request, offset: number, length: number): boolean {
  return req.offset < offset + length && req.offset + req.length > offset;
}

/** The total length of a list of buffers. */
export function totalLength(buffers: Buffer[]): number {
  let n = 0;
  for (const b of buffers) n += b.length;
  return n;
}

/**
 * Copies a read's segments (relative to `offset`) into the buffers `into`,
 * laid one after another; holes become zeroes.
 */
export function scatterSegments(offset: number, into: Buffer[], segments: ReadSegment[]): void {
  let start = 0;
  for (const target of into) {
    target.fill(0);
    for (const s of segments) {
      const from = Math.max(s.offset - offset, start);
      const to = Math.min(s.offset - offset + s.length, start + target.length);
      if (from < to && s.data) s.data.copy(target, from - start, from - (s.offset - offset), to - (s.offset - offset));
    }
    start += target.length;
  }
}

/** The bytes of a read as one buffer, holes filled with zeroes. */
export function joinSegments(offset: number, length: number, segments: ReadSegment[]): Buffer {
  if (segments.length === 1 && segments[0].data && segments[0].length === length) return segments[0].data;
  const data = Buffer.alloc(length);
  for (const s of segments) s.data?.copy(data, s.offset - offset);
  return data;
}
