// Read and bounce buffers, reused instead of allocated per request. A
// buffer of its own costs an allocation, a V8 backing store and, later,
// its sweeping; for direct I/O (aligned memory from the native addon) a
// call into the addon and a finalizer as well. And freed 1 MiB read
// buffers wait for the garbage collector, which runs late when the
// memory is outside its heap: at 3 GB/s of 1 MiB reads that was 50 MB of
// dead buffers in the server's RSS. So:
//
// - allocate/release: a read or payload buffer of up to 64 KiB is cut out of a
//   shared slab (slab.ts) and never given back; a larger one is a block
//   from take(), which release() returns once its reply is written.
// - take/give: blocks in power-of-two size classes from 4 KiB up, kept
//   for reuse up to a byte budget per class.

import { Slab } from './slab.js';

const MIN_CLASS = 12; // 4 KiB

/** Every pool, so that an idle server can empty them all (releaseIdleMemory). */
const pools = new Set<WeakRef<BufferPool>>();

/** Drops the blocks every pool keeps for reuse; the collector frees them. */
export function emptyPools(): void {
  for (const ref of pools) {
    const pool = ref.deref();
    if (pool) pool.empty();
    else pools.delete(ref);
  }
}

export class BufferPool {
  private readonly classes = new Map<number, Buffer[]>();
  /** Every block this pool allocated: their memory starts as the allocator aligns it. */
  private readonly blocks = new WeakSet<ArrayBufferLike>();
  /** The blocks from take(), which may be given back. */
  private readonly reusable = new WeakSet<ArrayBufferLike>();
  /** The blocks waiting in a class, so that giving one back twice cannot hand it out twice. */
  private readonly idle = new WeakSet<ArrayBufferLike>();
  private readonly slab: Slab;

  constructor(
    private readonly allocateBlock: (size: number, alignment: number) => Buffer,
    readonly alignment: number,
    private readonly bytesPerClass = 8 << 20,
  ) {
    // Larger read buffers are pooled blocks, which release() gives back.
    this.slab = new Slab((size) => this.block(size), alignment, (size) => this.take(size));
    pools.add(new WeakRef(this));
  }

  /** Drops the blocks kept for reuse; buffers in use stay valid and may come back later. */
  empty(): void {
    for (const free of this.classes.values()) for (const block of free) this.idle.delete(block.buffer);
    this.classes.clear();
  }

  /** A read buffer of exactly `size` bytes; pass it to release() once nothing uses it, or drop it. */
  allocate(size: number): Buffer {
    return this.slab.carve(size);
  }

  /** A buffer from allocate() is no longer used (any view of it will do, more than once is harmless). */
  release(buffer: Buffer): void {
    if (this.reusable.has(buffer.buffer)) this.give(buffer);
  }

  /** A buffer of exactly `size` bytes (a view of a pooled block), to be given back. */
  take(size: number): Buffer {
    const bits = Math.max(MIN_CLASS, Math.ceil(Math.log2(Math.max(size, 1))));
    let block = this.classes.get(bits)?.pop();
    if (block) {
      this.idle.delete(block.buffer);
    } else {
      block = this.block(2 ** bits);
      this.reusable.add(block.buffer);
    }
    return block.subarray(0, size);
  }

  /** Returns a buffer from take() to its class. */
  give(buffer: Buffer): void {
    if (this.idle.has(buffer.buffer)) return;
    const block = Buffer.from(buffer.buffer, 0, buffer.buffer.byteLength);
    const bits = Math.log2(block.length);
    const free = this.classes.get(bits) ?? [];
    if ((free.length + 1) * block.length > Math.max(this.bytesPerClass, block.length)) return;
    free.push(block);
    this.idle.add(block.buffer);
    this.classes.set(bits, free);
  }

  /** Whether the buffer is a view into memory this pool allocated. */
  owns(buffer: Buffer): boolean {
    return this.blocks.has(buffer.buffer);
  }

  private block(size: number): Buffer {
    const block = this.allocateBlock(size, this.alignment);
    this.blocks.add(block.buffer);
    return block;
  }
}

/** Read buffers for the engines that need no alignment. */
export const readBuffers = new BufferPool((size) => Buffer.allocUnsafeSlow(size), 64);
