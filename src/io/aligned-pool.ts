// Reusable aligned buffers for direct I/O, in power-of-two size classes
// from 4 KiB up. Buffers come from the native addon (posix_memalign) and
// go back to their class after use, up to a byte budget per class, so the
// hot path of an unaligned request allocates nothing.

const MIN_CLASS = 12; // 4 KiB

export class AlignedPool {
  private readonly classes = new Map<number, Buffer[]>();
  /** Every block this pool allocated: their memory starts aligned. */
  private readonly blocks = new WeakSet<ArrayBufferLike>();

  constructor(
    private readonly allocate: (size: number, alignment: number) => Buffer,
    readonly alignment: number,
    private readonly bytesPerClass = 8 << 20,
  ) {}

  /** An aligned buffer of exactly `size` bytes (a view of a pooled block). */
  take(size: number): Buffer {
    const bits = Math.max(MIN_CLASS, Math.ceil(Math.log2(Math.max(size, 1))));
    let block = this.classes.get(bits)?.pop();
    if (!block) {
      block = this.allocate(2 ** bits, this.alignment);
      this.blocks.add(block.buffer);
    }
    return block.subarray(0, size);
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
}
