// Inflight I/O tracking for one split virtqueue (vhost-user spec,
// "Inflight I/O tracking"): the front end keeps a shared area
// (GET_INFLIGHT_FD / SET_INFLIGHT_FD) that outlives the back end, and the
// back end records in it which heads it popped and has not yet returned,
// so that a back end started after a crash redoes exactly those.
//
// One queue's region, little-endian:
//   u64 features; u16 version; u16 desc_num; u16 last_batch_head;
//   u16 used_idx; then desc_num entries of
//   { u8 inflight; u8 padding[5]; u16 next; u64 counter }
// and the whole region is rounded up to 64 bytes.
//
// Pop: counter = the next number, then inflight = 1. Push: last_batch_head
// = head, write the used element and used idx, then inflight = 0 and the
// region's used_idx = the ring's. A crash between the ring's used idx and
// the region's used_idx leaves them different: the last pushed head
// (last_batch_head) did reach the driver, so it is no longer in flight.
// The heads still marked are redone in the order they were popped
// (counter), and the ring resumes at used idx + their number: every head
// popped is either returned (counted in used idx) or still marked.
//
// The region is written with Atomics.store for the flag and the indexes,
// after the plain write of the counter, so the process dying between any
// two statements (kill -9) leaves each entry either not yet marked or
// marked with its counter; the memfd keeps whatever was stored.
// The vring's `next` field for packed-ring batches is not used: split
// rings push one head at a time here.

const HEADER = 16;
const ENTRY = 16;
const VERSION = 1;

/** Bytes of one queue's region in an area for queues of `queueSize`. */
export function inflightQueueRegionSize(queueSize: number): number {
  return Math.ceil((HEADER + ENTRY * queueSize) / 64) * 64;
}

/** What a back end finds in a region when its queue starts. */
export interface InflightResume {
  /** Heads popped by an earlier back end and never returned, in the order they were popped. */
  heads: number[];
  /** True when the region was in use before (then heads and the ring's used idx give the next avail idx). */
  used: boolean;
}

export class InflightLog {
  private readonly u8: Uint8Array;
  private readonly u16: Uint16Array;
  private counter = 1n;

  /** `region` is this queue's part of the area; the ring has `size` entries. */
  constructor(
    private readonly region: Buffer,
    private readonly size: number,
  ) {
    if (region.length < HEADER + ENTRY * size) throw new RangeError(`an inflight region of ${region.length} bytes is too small for ${size} descriptors`);
    if (region.byteOffset % 8 !== 0) throw new RangeError('an inflight region must be 8-byte aligned');
    this.u8 = new Uint8Array(region.buffer, region.byteOffset, region.length);
    this.u16 = new Uint16Array(region.buffer, region.byteOffset, region.length >> 1);
  }

  /**
   * Reads the region as an earlier back end left it, given the used idx now
   * in the ring, and makes it this back end's: a fresh region (version 0)
   * is initialised, a used one repaired (see the top of this file).
   */
  resume(ringUsedIdx: number): InflightResume {
    if (this.region.readUInt16LE(8) !== VERSION) {
      this.region.fill(0);
      this.region.writeUInt16LE(this.size, 10);
      Atomics.store(this.u16, 7, ringUsedIdx);
      Atomics.store(this.u16, 4, VERSION);
      return { heads: [], used: false };
    }
    if (Atomics.load(this.u16, 7) !== ringUsedIdx) {
      const last = this.region.readUInt16LE(12);
      if (last < this.size) Atomics.store(this.u8, this.flagAt(last), 0);
      Atomics.store(this.u16, 7, ringUsedIdx);
    }
    const marked: { head: number; counter: bigint }[] = [];
    for (let head = 0; head < this.size; head++) {
      if (this.u8[this.flagAt(head)] === 0) continue;
      const counter = this.region.readBigUInt64LE(this.flagAt(head) + 8);
      marked.push({ head, counter });
      if (counter >= this.counter) this.counter = counter + 1n;
    }
    marked.sort((a, b) => (a.counter < b.counter ? -1 : a.counter > b.counter ? 1 : 0));
    return { heads: marked.map((m) => m.head), used: true };
  }

  /** A head was popped from the avail ring. */
  popped(head: number): void {
    this.region.writeBigUInt64LE(this.counter++, this.flagAt(head) + 8);
    Atomics.store(this.u8, this.flagAt(head), 1);
  }

  /** Before the used element for `head` is written. */
  pushing(head: number): void {
    Atomics.store(this.u16, 6, head);
  }

  /** After the used idx became `usedIdx` with `head` in it. */
  pushed(head: number, usedIdx: number): void {
    Atomics.store(this.u8, this.flagAt(head), 0);
    Atomics.store(this.u16, 7, usedIdx);
  }

  private flagAt(head: number): number {
    return HEADER + ENTRY * head;
  }
}
