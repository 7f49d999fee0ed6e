// A disk in memory, `memory:SIZE` on the command line (nbdkit's memory
// plugin does the same): scratch disks, and tests that want a device with
// no file behind it. Sparse: data lives in 64 KiB pages that the first
// write touching them allocates; TRIM and WRITE_ZEROES drop the pages
// they cover whole and zero the edges of the others, so a discarded or
// zeroed range costs no memory, and BLOCK_STATUS reports unallocated
// pages as holes that read as zeroes. Nothing persists: FLUSH has nothing
// to do (capabilities.flush is false) and everything is gone at close.
// Reads hand out copies: a reply may still be on its way to the socket
// when the gateway lets an overlapping write change the pages.

import type { BlockDevice, Capabilities, Extent, ReadSegment, Request } from '../types.js';

const PAGE = 64 << 10;

export class MemoryImage implements BlockDevice {
  readonly capabilities: Capabilities = {
    readOnly: false,
    flush: false,
    trim: true,
    zero: true,
    fastZero: true,
    cache: false,
    extents: true,
    multiConn: true,
    blockSizes: { minimum: 1, preferred: 4096, maximum: 32 << 20 },
  };
  private readonly pages = new Map<number, Buffer>();

  constructor(readonly size: number) {
    if (!Number.isSafeInteger(size) || size <= 0) throw new RangeError(`a memory disk needs a size above 0 bytes, not ${size}`);
  }

  get description(): string {
    return `memory disk of ${this.size} bytes`;
  }

  /** Bytes of memory the data holds now (allocated pages). */
  get allocated(): number {
    return this.pages.size * PAGE;
  }

  async read(req: Request): Promise<ReadSegment[]> {
    const segments: ReadSegment[] = [];
    this.eachPage(req.offset, req.length, (page, at, offset, length) => {
      const data = page ? Buffer.from(page.subarray(at, at + length)) : null;
      const last = segments.at(-1);
      // Neighbouring holes make one segment.
      if (!data && last && !last.data) last.length += length;
      else segments.push({ offset, length, data });
    });
    return segments;
  }

  async write(req: Request): Promise<void> {
    const data = req.data!;
    this.eachPage(req.offset, req.length, (page, at, offset, length, index) => {
      const target = page ?? this.allocate(index);
      data.copy(target, at, offset - req.offset, offset - req.offset + length);
    });
  }

  async flush(): Promise<void> {}

  async trim(req: Request): Promise<void> {
    this.zero(req.offset, req.length, false);
  }

  async writeZeroes(req: Request): Promise<void> {
    this.zero(req.offset, req.length, req.noHole);
  }

  async cache(): Promise<void> {}

  async blockStatus(req: Request): Promise<Extent[]> {
    const extents: Extent[] = [];
    this.eachPage(req.offset, req.length, (page, _at, _offset, length) => {
      const hole = page === undefined;
      const last = extents.at(-1);
      if (last && last.hole === hole) last.length += length;
      else extents.push({ length, hole, zero: hole });
    });
    return req.reqOne ? extents.slice(0, 1) : extents;
  }

  async close(): Promise<void> {
    this.pages.clear();
  }

  /** Zeroes a range: whole pages are dropped (unless `keep`), the edges of others cleared. */
  private zero(start: number, length: number, keep: boolean): void {
    this.eachPage(start, length, (page, at, _offset, n, index) => {
      if (!keep && at === 0 && n === PAGE) this.pages.delete(index);
      else if (page) page.fill(0, at, at + n);
      else if (keep) this.allocate(index);
    });
  }

  private allocate(index: number): Buffer {
    const page = Buffer.alloc(PAGE);
    this.pages.set(index, page);
    return page;
  }

  /** Calls `fn` for each page a range touches: the page (if allocated), where in it, and the piece of the range. */
  private eachPage(start: number, length: number, fn: (page: Buffer | undefined, at: number, offset: number, length: number, index: number) => void): void {
    let offset = start;
    const end = start + length;
    while (offset < end) {
      const index = Math.floor(offset / PAGE);
      const at = offset - index * PAGE;
      const n = Math.min(PAGE - at, end - offset);
      fn(this.pages.get(index), at, offset, n, index);
      offset += n;
    }
  }
}
