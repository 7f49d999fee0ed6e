// A dirty bitmap: one bit per `granularity` bytes of a disk, set when any
// byte of that granule is written, trimmed or zeroed. Pure and in memory
// (one bit a granule: 2 MiB for 1 TiB at the default 64 KiB). Runs come
// back clipped to the range asked for, neighbours of one state joined, as
// qemu-nbd answers qemu:dirty-bitmap:NAME.

export interface DirtyRun {
  length: number;
  dirty: boolean;
}

export class DirtyBitmap {
  private readonly bits: Uint8Array;
  private set = 0;

  constructor(
    readonly size: number,
    readonly granularity: number,
  ) {
    if (!Number.isSafeInteger(granularity) || granularity < 512 || (granularity & (granularity - 1)) !== 0 || granularity > 2 ** 31) {
      throw new RangeError(`granularity must be a power of two from 512 to 2 GiB, not ${granularity}`);
    }
    this.bits = new Uint8Array(Math.ceil(Math.ceil(size / granularity) / 8));
  }

  private get granules(): number {
    return Math.ceil(this.size / this.granularity);
  }

  private isSet(i: number): boolean {
    return (this.bits[i >>> 3] & (1 << (i & 7))) !== 0;
  }

  /** Marks every granule that [offset, offset + length) touches. */
  mark(offset: number, length: number): void {
    if (length <= 0) return;
    const first = Math.floor(offset / this.granularity);
    const last = Math.min(Math.floor((offset + length - 1) / this.granularity), this.granules - 1);
    for (let i = first; i <= last; i++) {
      if (this.isSet(i)) continue;
      this.bits[i >>> 3] |= 1 << (i & 7);
      this.set++;
    }
  }

  clear(): void {
    this.bits.fill(0);
    this.set = 0;
  }

  /** Bytes of the disk in dirty granules. */
  dirtyBytes(): number {
    if (this.set === 0) return 0;
    const lastPartial = this.size % this.granularity;
    const tail = lastPartial && this.isSet(this.granules - 1) ? this.granularity - lastPartial : 0;
    return this.set * this.granularity - tail;
  }

  /** Runs covering [offset, offset + length) (within the disk), at most `max` of them. */
  runs(offset: number, length: number, max = Infinity): DirtyRun[] {
    const end = Math.min(offset + length, this.size);
    const out: DirtyRun[] = [];
    let pos = offset;
    while (pos < end && out.length < max) {
      const i = Math.floor(pos / this.granularity);
      const dirty = this.isSet(i);
      let j = i + 1;
      while (j * this.granularity < end && this.isSet(j) === dirty) j++;
      const to = Math.min(j * this.granularity, end);
      out.push({ length: to - pos, dirty });
      pos = to;
    }
    return out;
  }
}
