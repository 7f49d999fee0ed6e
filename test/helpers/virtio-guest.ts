// A tiny virtio "guest" for tests: guest memory made of plain Buffers
// (GuestMemory, optionally cutting every mapping into several views), a
// bump allocator for guest-physical space, and the driver side of one
// split virtqueue: it lays out the rings, writes descriptors and avail
// entries, publishes the avail idx and reads used entries back. It sends
// no notifications; whoever drives the device decides when to pop.
// Rings are plain little-endian bytes here: the guest is another "CPU"
// that the device must not trust, so nothing is shared with its code.
// The same queue drives a real back end in another process when its
// memory is a shared mapping (vhost-user-driver.ts): the idx fields are
// then read and written with Atomics (acquire/release, as virtqueue.ts
// explains), which costs the Buffer-backed tests nothing.

import type { GuestMemory } from '../../src/protocol/vhost-user/guest-memory.js';
import {
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_DESC_SIZE,
  VIRTQ_USED_ELEM_SIZE,
} from '../../src/protocol/vhost-user/virtio-constants.js';
import { ringSizes } from '../../src/protocol/vhost-user/virtqueue.js';

export interface GuestRegion {
  gpa: number;
  buffer: Buffer;
}

/** GuestMemory over Buffers. With splitEvery, views are also cut at every multiple of it (guest-physical). */
export class BufferGuestMemory implements GuestMemory {
  /** How often map() was called (a walk that loops would show here). */
  mapCalls = 0;

  constructor(
    readonly regions: GuestRegion[],
    private readonly options: { splitEvery?: number } = {},
  ) {}

  map(gpa: number, length: number): Buffer[] | null {
    this.mapCalls++;
    if (!Number.isSafeInteger(gpa) || !Number.isSafeInteger(length) || gpa < 0 || length < 0) return null;
    if (!Number.isSafeInteger(gpa + length)) return null;
    const views: Buffer[] = [];
    let at = gpa;
    let left = length;
    while (left > 0) {
      const region = this.regions.find((r) => at >= r.gpa && at < r.gpa + r.buffer.length);
      if (!region) return null;
      let end = Math.min(region.gpa + region.buffer.length, at + left);
      const split = this.options.splitEvery;
      if (split) end = Math.min(end, (Math.floor(at / split) + 1) * split);
      views.push(region.buffer.subarray(at - region.gpa, end - region.gpa));
      left -= end - at;
      at = end;
    }
    return views;
  }

  /** One view of a range that lies in one region (the test's own access; throws otherwise). */
  view(gpa: number, length: number): Buffer {
    const region = this.regions.find((r) => gpa >= r.gpa && gpa + length <= r.gpa + r.buffer.length);
    if (!region) throw new RangeError(`guest range ${gpa} + ${length} is not inside one region`);
    return region.buffer.subarray(gpa - region.gpa, gpa - region.gpa + length);
  }

  read(gpa: number, length: number): Buffer {
    return Buffer.from(this.view(gpa, length));
  }

  write(gpa: number, data: Buffer): void {
    data.copy(this.view(gpa, data.length));
  }

  /** The guest-physical range a Buffer views, or null when it is not inside a region. */
  locate(view: Buffer): { gpa: number; length: number } | null {
    for (const r of this.regions) {
      if (view.buffer !== r.buffer.buffer) continue;
      const start = view.byteOffset - r.buffer.byteOffset;
      if (start >= 0 && start + view.length <= r.buffer.length) return { gpa: r.gpa + start, length: view.length };
    }
    return null;
  }
}

/** Hands out guest-physical ranges from [start, end), aligned as asked. */
export class GuestAllocator {
  constructor(
    private next: number,
    private readonly end: number,
  ) {}

  alloc(length: number, align = 16): number {
    const gpa = Math.ceil(this.next / align) * align;
    if (gpa + length > this.end) throw new RangeError(`guest memory exhausted: ${length} bytes at ${gpa}, end ${this.end}`);
    this.next = gpa + length;
    return gpa;
  }

  /** The first guest-physical address not handed out yet. */
  get top(): number {
    return this.next;
  }
}

/**
 * Guest-physical ranges handed out and given back (first fit, merged on
 * release) from the [start, end) areas given; a range never crosses from
 * one area into the next.
 */
export class GuestHeap {
  /** Free ranges [start, end), sorted; touching ones only across an area boundary. */
  private free: [number, number][];
  private readonly taken = new Map<number, number>();
  private readonly boundaries: Set<number>;

  constructor(areas: [number, number][]) {
    this.free = areas.filter(([start, end]) => end > start).sort((a, b) => a[0] - b[0]);
    this.boundaries = new Set(this.free.map(([, end]) => end));
  }

  /** A range of `length` bytes aligned to `align`, or null when no free range holds it. */
  alloc(length: number, align = 16): number | null {
    for (let i = 0; i < this.free.length; i++) {
      const [start, end] = this.free[i];
      const gpa = Math.ceil(start / align) * align;
      const stop = gpa + Math.max(length, 1);
      if (stop > end) continue;
      const rest: [number, number][] = [];
      if (gpa > start) rest.push([start, gpa]);
      if (stop < end) rest.push([stop, end]);
      this.free.splice(i, 1, ...rest);
      this.taken.set(gpa, stop);
      return gpa;
    }
    return null;
  }

  release(gpa: number): void {
    const stop = this.taken.get(gpa);
    if (stop === undefined) throw new RangeError(`guest range at ${gpa} was not handed out`);
    this.taken.delete(gpa);
    let i = this.free.findIndex(([start]) => start > gpa);
    if (i < 0) i = this.free.length;
    this.free.splice(i, 0, [gpa, stop]);
    // Merge with the neighbours it touches inside its area.
    const touches = (end: number, start: number) => end === start && !this.boundaries.has(end);
    if (i + 1 < this.free.length && touches(stop, this.free[i + 1][0])) this.free.splice(i, 2, [gpa, this.free[i + 1][1]]);
    if (i > 0 && touches(this.free[i - 1][1], gpa)) this.free.splice(i - 1, 2, [this.free[i - 1][0], this.free[i][1]]);
  }
}

export interface Descriptor {
  /** A bigint for addresses past 2^53 (hostile tests). */
  addr: number | bigint;
  len: number;
  flags: number;
  next: number;
}

export interface BufferSpec {
  gpa: number;
  length: number;
  writable: boolean;
}

export interface UsedElement {
  id: number;
  len: number;
}

export interface RingAddresses {
  desc: number;
  avail: number;
  used: number;
}

export function encodeDescriptor(d: Descriptor): Buffer {
  const b = Buffer.alloc(VIRTQ_DESC_SIZE);
  b.writeBigUInt64LE(BigInt.asUintN(64, BigInt(d.addr)), 0);
  b.writeUInt32LE(d.len, 8);
  b.writeUInt16LE(d.flags, 12);
  b.writeUInt16LE(d.next, 14);
  return b;
}

/** Descriptors for buffers chained in order, the i-th to sit at table index indices[i]; the last has no NEXT. */
export function chainDescriptors(buffers: BufferSpec[], indices: number[]): Descriptor[] {
  return buffers.map((b, i) => ({
    addr: b.gpa,
    len: b.length,
    flags: (b.writable ? VIRTQ_DESC_F_WRITE : 0) | (i < buffers.length - 1 ? VIRTQ_DESC_F_NEXT : 0),
    next: i < buffers.length - 1 ? indices[i + 1] : 0,
  }));
}

/** The driver side of one split virtqueue in guest memory. */
export class VirtioGuestQueue {
  private readonly free: number[] = [];
  /** Descriptor indices each outstanding head holds. */
  private readonly outstanding = new Map<number, number[]>();
  private availIdx: number;
  private pending = 0;
  private lastUsed: number;

  /**
   * Rings at `rings`; indirect tables (indirectEntries descriptors each, one per head)
   * at `indirectArea` when given. avail and used idx start at startIdx.
   */
  constructor(
    readonly memory: BufferGuestMemory,
    readonly size: number,
    readonly rings: RingAddresses,
    private readonly indirect: { area: number; entries: number } | null = null,
    startIdx = 0,
  ) {
    for (let i = 0; i < size; i++) this.free.push(i);
    this.availIdx = startIdx;
    this.lastUsed = startIdx;
    const sizes = ringSizes(size);
    this.memory.view(rings.desc, sizes.desc).fill(0);
    this.memory.view(rings.avail, sizes.avail).fill(0);
    this.memory.view(rings.used, sizes.used).fill(0);
    this.memory.view(rings.avail + 2, 2).writeUInt16LE(startIdx);
    this.memory.view(rings.used + 2, 2).writeUInt16LE(startIdx);
  }

  /** Rings (and room for indirect tables) taken from `alloc`, aligned as the spec asks. */
  static layout(
    memory: BufferGuestMemory,
    alloc: GuestAllocator,
    size: number,
    options: { indirectEntries?: number; startIdx?: number } = {},
  ): VirtioGuestQueue {
    const sizes = ringSizes(size);
    const rings = { desc: alloc.alloc(sizes.desc, 16), avail: alloc.alloc(sizes.avail, 2), used: alloc.alloc(sizes.used, 4) };
    const entries = options.indirectEntries ?? 0;
    const indirect = entries > 0 ? { area: alloc.alloc(size * entries * VIRTQ_DESC_SIZE, 16), entries } : null;
    return new VirtioGuestQueue(memory, size, rings, indirect, options.startIdx ?? 0);
  }

  /** The ring views a device gets (each ring lies in one region). */
  deviceRings(): { desc: Buffer; avail: Buffer; used: Buffer } {
    const sizes = ringSizes(this.size);
    return {
      desc: this.memory.view(this.rings.desc, sizes.desc),
      avail: this.memory.view(this.rings.avail, sizes.avail),
      used: this.memory.view(this.rings.used, sizes.used),
    };
  }

  get freeDescriptors(): number {
    return this.free.length;
  }

  writeDescriptor(tableGpa: number, index: number, d: Descriptor): void {
    this.memory.write(tableGpa + index * VIRTQ_DESC_SIZE, encodeDescriptor(d));
  }

  /**
   * Puts a chain in the table (or, with indirect, in this head's indirect
   * table) and its head in the next avail entry; publish() exposes it.
   */
  addChain(buffers: BufferSpec[], options: { indirect?: boolean } = {}): number {
    if (options.indirect) {
      if (!this.indirect) throw new Error('this queue was laid out without indirect tables');
      if (buffers.length > this.indirect.entries) {
        throw new RangeError(`${buffers.length} buffers, indirect tables hold ${this.indirect.entries}`);
      }
      const head = this.take(1)[0];
      const table = this.indirect.area + head * this.indirect.entries * VIRTQ_DESC_SIZE;
      const indices = buffers.map((_, i) => i);
      chainDescriptors(buffers, indices).forEach((d, i) => this.writeDescriptor(table, i, d));
      this.writeDescriptor(this.rings.desc, head, {
        addr: table,
        len: buffers.length * VIRTQ_DESC_SIZE,
        flags: VIRTQ_DESC_F_INDIRECT,
        next: 0,
      });
      this.outstanding.set(head, [head]);
      this.offer(head);
      return head;
    }
    if (buffers.length === 0) throw new RangeError('a chain needs at least one buffer');
    const indices = this.take(buffers.length);
    chainDescriptors(buffers, indices).forEach((d, i) => this.writeDescriptor(this.rings.desc, indices[i], d));
    this.outstanding.set(indices[0], indices);
    this.offer(indices[0]);
    return indices[0];
  }

  /** Writes `head` into the next avail entry, whatever it is (hostile tests offer anything). */
  offer(head: number): void {
    const slot = (this.availIdx + this.pending) % this.size;
    this.memory.view(this.rings.avail + 4 + 2 * slot, 2).writeUInt16LE(head & 0xffff);
    this.pending++;
  }

  /** Raises avail idx over the offered entries (a release store: the entries and descriptors are visible first). */
  publish(): void {
    this.availIdx = (this.availIdx + this.pending) & 0xffff;
    this.pending = 0;
    Atomics.store(this.u16(this.rings.avail + 2), 0, this.availIdx);
  }

  /** Sets avail idx to anything (hostile tests); later publishes count from it. */
  publishIdx(idx: number): void {
    this.availIdx = idx & 0xffff;
    this.pending = 0;
    Atomics.store(this.u16(this.rings.avail + 2), 0, this.availIdx);
  }

  /** The avail idx as last published. */
  get publishedIdx(): number {
    return this.availIdx;
  }

  /** The used idx up to which takeUsed has read. */
  get lastUsedIdx(): number {
    return this.lastUsed;
  }

  /** Used entries since the last call; their descriptors go back to the free list. */
  takeUsed(): UsedElement[] {
    const out: UsedElement[] = [];
    const usedIdx = this.usedIdx;
    while (this.lastUsed !== usedIdx) {
      const at = this.rings.used + 4 + VIRTQ_USED_ELEM_SIZE * (this.lastUsed % this.size);
      const e = this.memory.view(at, VIRTQ_USED_ELEM_SIZE);
      const el = { id: e.readUInt32LE(0), len: e.readUInt32LE(4) };
      out.push(el);
      const held = this.outstanding.get(el.id);
      if (held) {
        this.outstanding.delete(el.id);
        this.free.push(...held);
      }
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
    }
    return out;
  }

  /** An acquire load: the used elements below it are visible once it is read. */
  get usedIdx(): number {
    return Atomics.load(this.u16(this.rings.used + 2), 0);
  }

  get usedFlags(): number {
    return this.memory.view(this.rings.used, 2).readUInt16LE();
  }

  /** The device's avail_event (after the used ring's entries). */
  get availEvent(): number {
    return Atomics.load(this.u16(this.rings.used + 4 + VIRTQ_USED_ELEM_SIZE * this.size), 0);
  }

  set availFlags(flags: number) {
    this.memory.view(this.rings.avail, 2).writeUInt16LE(flags);
  }

  /** The driver's used_event (after the avail ring's entries). */
  set usedEvent(idx: number) {
    Atomics.store(this.u16(this.rings.avail + 4 + 2 * this.size), 0, idx & 0xffff);
  }

  private u16(gpa: number): Uint16Array {
    const view = this.memory.view(gpa, 2);
    return new Uint16Array(view.buffer, view.byteOffset, 1);
  }

  private take(n: number): number[] {
    if (this.free.length < n) throw new RangeError(`${n} descriptors wanted, ${this.free.length} free`);
    return this.free.splice(0, n);
  }
}
