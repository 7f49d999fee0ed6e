// Read buffers cut one after another out of a shared slab, the way
// Buffer.allocUnsafe cuts small buffers out of its 8 KiB pool (which
// stops short of 4 KiB, the most common read). Each buffer of its own
// costs a malloc, a backing store for V8 and, later, its sweeping: about
// a tenth of the server's CPU per 4 KiB read at depth 32. A slab is freed
// by the garbage collector once no buffer cut from it is alive, so
// nothing is ever given back; buffers kept for long (cached metadata)
// must be copied, or they keep their whole slab alive.

const SLAB_SIZE = 1 << 20;
/** Larger requests are not cut out of a slab. */
const MAX_CARVE = 64 << 10;

export class Slab {
  private slab: Buffer | null = null;
  private used = 0;

  constructor(
    /** Allocates a block: a whole slab. */
    private readonly block: (size: number) => Buffer,
    /** Where each buffer starts, in bytes from the slab's start. */
    private readonly alignment: number,
    /** Where a buffer of more than 64 KiB comes from instead (by default a block of its own). */
    private readonly large: (size: number) => Buffer = block,
  ) {}

  /** A buffer of exactly `size` bytes that nothing else uses. */
  carve(size: number): Buffer {
    if (size > MAX_CARVE) return this.large(size);
    const span = Math.max(this.alignment, Math.ceil(size / this.alignment) * this.alignment);
    if (!this.slab || this.used + span > this.slab.length) {
      this.slab = this.block(SLAB_SIZE);
      this.used = 0;
    }
    const start = this.used;
    this.used += span;
    return this.slab.subarray(start, start + size);
  }
}
