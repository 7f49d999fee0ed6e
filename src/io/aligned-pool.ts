// Aligned memory for direct I/O. Buffers come from the native addon
// (posix_memalign), which costs a call into the addon and a finalizer
// each, so the hot paths avoid it two ways:
//
// - take/give: reusable blocks in power-of-two size classes from 4 KiB
//   up, for bounce buffers that are given back after use (up to a byte
//   budget per class).
// - carve: read buffers, whose lifetime ends wherever the reply is
//   written, are cut out of aligned slabs (slab.ts); nothing has to be
//   given back.

import { Slab } from './slab.js';

const MIN_CLASS = 12; // 4 KiB

export class AlignedPool {
  private readonly classes = new Map<number, Buffer[]>();
  /** Every block this pool allocated: their memory starts aligned. */
  private readonly blocks = new WeakSet<ArrayBufferLike>();
  private readonly slab: Slab;

  constructor(
    private readonly allocate: (size: number, alignment: number) => Buffer,
    readonly alignment: number,
    private readonly bytesPerClass = 8 << 20,
  ) {
    this.slab = new Slab((size) => this.block(size), alignment);
  }

  /** An aligned buffer of exactly `size` bytes (a view of a pooled block). */
  take(size: number): Buffer {
    const bits = Math.max(MIN_CLASS, Math.ceil(Math.log2(Math.max(size, 1))));
    return (this.classes.get(bits)?.pop() ?? this.block(2 ** bits)).subarray(0, size);
  }

  /** An aligned buffer of exactly `size` bytes that is never given back. */
  carve(size: number): Buffer {
    return this.slab.carve(size);
  }

  /** Whether the buffer is a view into memory this pool allocated. */
  owns(buffer: Buffer): boolean {
    return this.blocks.has(buffer.buffer);
  }

  /** Returns a buffer from take() to its class. */
  give(buffer: Buffer): void {
    const block = Buffer.from(buffer.buffer, buffer.byteOffset, buffer.buffer.byteLength);
    const bits = Math.log2(block.length);
    const free = this.classes.get(bits) ?? [];
    if ((free.length + 1) * block.length <= Math.max(this.bytesPerClass, block.length)) free.push(block);
    this.classes.set(bits, free);
  }

  private block(size: number): Buffer {
    const block = this.allocate(size, this.alignment);
    this.blocks.add(block.buffer);
    return block;
  }
}
