// The device side of a split virtqueue (virtio 1.2, "Split Virtqueues"):
// pop the next available descriptor chain as mapped guest-memory views,
// push used elements, decide whether the driver needs a used-buffer
// notification (EVENT_IDX or the avail NO_INTERRUPT flag).
//
// A hostile guest never makes pop() throw, loop or hand out memory no
// region covers. What goes wrong is sorted by whether the queue can still
// be trusted:
//  - 'broken' (the device needs reset, virtio's DEVICE_NEEDS_RESET: "an
//    error from which it can't recover"): the chain cannot be walked, so
//    neither its end nor its status byte can be found, or the rings
//    themselves are wrong. Avail idx more than the queue size ahead of
//    the last one seen; a head or next index past the table; a chain
//    longer than the queue size, or than its indirect table (the only way
//    a loop shows); an indirect descriptor inside an indirect table;
//    INDIRECT together with NEXT; an indirect table of zero length, of a
//    length not a multiple of 16, larger than any queue, or outside guest
//    memory. Sticky: every later pop() answers the same.
//  - 'malformed' (this request fails, the queue carries on): the chain
//    walks to its end, but a buffer in it lies outside guest memory, a
//    device-readable descriptor follows a device-writable one, or the
//    lengths add up to more than 2^32 bytes (the spec's limit for a
//    chain). These break a driver MUST of the request, and virtio-blk's
//    IOERR is "for device or driver error": the device model writes
//    IOERR into the last device-writable byte when that byte maps, and
//    needs a reset only when it does not.
// A descriptor is read once, field by field, into locals: a guest that
// rewrites the table while we walk it changes nothing we already checked.
// The INDIRECT flag is honoured whether or not RING_INDIRECT_DESC was
// negotiated (the back end always offers it).
//
// Memory ordering, from JavaScript: the idx fields and the event words
// are read and written with Atomics.load/Atomics.store on a Uint16Array
// over the ring, everything else with plain Buffer accesses. V8 keeps
// plain accesses on their side of an Atomics operation, and emits a
// sequentially consistent access for it: on x86-64 a plain load and an
// xchg for the store, on arm64 ldar and stlr. So
//  - avail idx is loaded (acquire) before the ring entry and descriptors
//    it publishes are read;
//  - a used element is written before the used idx store (release) makes
//    it visible;
//  - the used idx store comes before the used_event / flags load in
//    needsNotify(), and the avail_event store before the avail idx load
//    in pop() (a store followed by a load needs the full barrier that
//    xchg, or stlr then ldar, gives), so neither side misses a
//    notification.
// Rings are little-endian and Uint16Array is host-endian: a big-endian
// host is refused.

import type { GuestMemory } from './guest-memory.js';
import type { InflightLog } from './inflight.js';
import {
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_DESC_SIZE,
  VIRTQ_MAX_SIZE,
  VIRTQ_USED_ELEM_SIZE,
} from './virtio-constants.js';

/** The spec's limit for the bytes of one chain: "longer than 2^32 bytes in total" is forbidden. */
export const MAX_CHAIN_BYTES = 2 ** 32;

export interface VirtqueueOptions {
  /** Queue size: a power of two, 1 to 32768. */
  size: number;
  /** Views of the three rings, at least ringSizes(size) long and aligned 16/2/4. */
  desc: Buffer;
  avail: Buffer;
  used: Buffer;
  /** Where descriptor addresses (guest-physical) are mapped. */
  memory: GuestMemory;
  /** VIRTIO_F_RING_EVENT_IDX was negotiated. */
  eventIdx: boolean;
  /** The index of the next avail entry to read (SET_VRING_BASE); 0 when absent. */
  lastAvailIdx?: number;
  /**
   * This queue's inflight region (INFLIGHT_SHMFD). Pops and pushes are
   * recorded in it; heads an earlier back end left in flight are popped
   * again first, and the avail idx resumes after them (inflight.ts).
   */
  inflight?: InflightLog;
}

/** One descriptor's buffer, mapped. */
export interface Segment {
  views: Buffer[];
  writable: boolean;
  length: number;
}

/** A well-formed chain: device-readable segments first, then device-writable ones. */
export interface Chain {
  kind: 'chain';
  head: number;
  segments: Segment[];
  readableLength: number;
  writableLength: number;
}

/** A chain that walks but cannot be served; its head still has to be pushed. */
export interface MalformedChain {
  kind: 'malformed';
  head: number;
  reason: string;
  writableLength: number;
  /** The last device-writable byte of the chain (where virtio-blk puts its status), null when it does not map. */
  lastWritableByte: Buffer | null;
}

/** The queue cannot be trusted any more: the device needs reset. */
export interface BrokenQueue {
  kind: 'broken';
  reason: string;
}

export type Popped = Chain | MalformedChain | BrokenQueue;

/** Byte lengths of the three rings of a queue of `size` entries (event words included). */
export function ringSizes(size: number): { desc: number; avail: number; used: number } {
  return { desc: VIRTQ_DESC_SIZE * size, avail: 6 + 2 * size, used: 6 + VIRTQ_USED_ELEM_SIZE * size };
}

/** Why these rings cannot make a queue, or null when they can. */
export function ringLayoutError(size: number, desc: Buffer, avail: Buffer, used: Buffer): string | null {
  if (!Number.isInteger(size) || size < 1 || size > VIRTQ_MAX_SIZE || (size & (size - 1)) !== 0) {
    return `queue size ${size} is not a power of two from 1 to ${VIRTQ_MAX_SIZE}`;
  }
  const want = ringSizes(size);
  const rings: [string, Buffer, number, number][] = [
    ['descriptor table', desc, want.desc, 16],
    ['available ring', avail, want.avail, 2],
    ['used ring', used, want.used, 4],
  ];
  for (const [name, buf, length, align] of rings) {
    if (buf.byteOffset % align !== 0) return `${name} is not ${align}-byte aligned`;
    if (buf.length < length) return `${name} is ${buf.length} bytes, a queue of ${size} needs ${length}`;
  }
  return null;
}

/** vring_need_event: does moving the index from oldIdx to newIdx pass eventIdx? All 16-bit, wrapping. */
export function vringNeedEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}

const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
/** Indirect tables hold at most as many descriptors as the largest queue. */
const MAX_INDIRECT_TABLE = VIRTQ_MAX_SIZE * VIRTQ_DESC_SIZE;
/** 64-bit addresses at or above 2^53 are past every region; high words from here on mark them. */
const UNSAFE_HIGH_WORD = 0x200000;

export class SplitVirtqueue {
  readonly size: number;
  readonly eventIdx: boolean;
  private readonly desc: Buffer;
  private readonly used: Buffer;
  private readonly memory: GuestMemory;
  /** avail as u16: [0] flags, [1] idx, [2 + i] ring[i], [2 + size] used_event. */
  private readonly avail16: Uint16Array;
  /** used as u16: [0] flags, [1] idx, [2 + 4 * size] avail_event. */
  private readonly used16: Uint16Array;
  private nextAvail: number;
  private nextUsed: number;
  private availEventWritten = -1;
  private signalledUsed: number;
  private signalledValid = false;
  private broken: BrokenQueue | null = null;
  private readonly inflight: InflightLog | null;
  /** Heads to pop again before the avail ring: in flight when an earlier back end stopped. */
  private readonly redo: number[] = [];

  constructor(options: VirtqueueOptions) {
    if (!LITTLE_ENDIAN_HOST) throw new Error('split virtqueues need a little-endian host');
    const { size, desc, avail, used } = options;
    const error = ringLayoutError(size, desc, avail, used);
    if (error) throw new RangeError(error);
    const last = options.lastAvailIdx ?? 0;
    if (!Number.isInteger(last) || last < 0 || last > 0xffff) throw new RangeError(`last avail idx ${last} is not a u16`);
    this.size = size;
    this.eventIdx = options.eventIdx;
    this.desc = desc;
    this.used = used;
    this.memory = options.memory;
    const sizes = ringSizes(size);
    this.avail16 = new Uint16Array(avail.buffer, avail.byteOffset, sizes.avail / 2);
    this.used16 = new Uint16Array(used.buffer, used.byteOffset, sizes.used / 2);
    this.nextAvail = last;
    this.nextUsed = Atomics.load(this.used16, 1);
    this.signalledUsed = this.nextUsed;
    this.inflight = options.inflight ?? null;
    if (this.inflight) {
      const resumed = this.inflight.resume(this.nextUsed);
      if (resumed.used) {
        this.redo.push(...resumed.heads);
        this.nextAvail = (this.nextUsed + resumed.heads.length) & 0xffff;
      }
    }
  }

  /** Heads from an earlier back end still to be popped again. */
  get redoing(): number {
    return this.redo.length;
  }

  /** The index of the next avail entry to read: what GET_VRING_BASE reports. */
  get lastAvailIdx(): number {
    return this.nextAvail;
  }

  /** The used idx as last published. */
  get usedIdx(): number {
    return this.nextUsed;
  }

  /** Why the queue needs reset, or null while it works. */
  get brokenReason(): string | null {
    return this.broken?.reason ?? null;
  }

  /**
   * The next available chain, or null when there is none. Call until it
   * answers null: with EVENT_IDX that last call is what asks the driver
   * to notify for the next one.
   */
  pop(): Popped | null {
    if (this.broken) return this.broken;
    const again = this.redo.shift();
    if (again !== undefined) return this.walk(again);
    const last = this.nextAvail;
    if (this.eventIdx && this.availEventWritten !== last) {
      Atomics.store(this.used16, 2 + 4 * this.size, last);
      this.availEventWritten = last;
    }
    const availIdx = Atomics.load(this.avail16, 1);
    const pending = (availIdx - last) & 0xffff;
    if (pending === 0) return null;
    if (pending > this.size) {
      return this.fail(`avail idx went from ${last} to ${availIdx}, more than the queue size ${this.size} ahead`);
    }
    const head = this.avail16[2 + (last & (this.size - 1))];
    if (head >= this.size) return this.fail(`avail ring entry ${last} names descriptor ${head}, past the table of ${this.size}`);
    this.nextAvail = (last + 1) & 0xffff;
    this.inflight?.popped(head);
    return this.walk(head);
  }

  /** Returns a chain to the driver: writes the used element, then publishes the used idx. */
  push(head: number, writtenLength: number): void {
    if (!Number.isInteger(head) || head < 0 || head >= this.size) throw new RangeError(`head ${head} is not a descriptor index`);
    if (!Number.isInteger(writtenLength) || writtenLength < 0 || writtenLength > 0xffffffff) {
      throw new RangeError(`written length ${writtenLength} is not a u32`);
    }
    this.inflight?.pushing(head);
    const at = 4 + VIRTQ_USED_ELEM_SIZE * (this.nextUsed & (this.size - 1));
    this.used.writeUInt32LE(head, at);
    this.used.writeUInt32LE(writtenLength, at + 4);
    this.nextUsed = (this.nextUsed + 1) & 0xffff;
    Atomics.store(this.used16, 1, this.nextUsed);
    this.inflight?.pushed(head, this.nextUsed);
  }

  /**
   * Whether the driver must get a used-buffer notification for what was
   * pushed since the last call (which this call then counts as notified).
   * Nothing pushed: no. With EVENT_IDX the first call after creation that
   * has pushes to report says yes, whatever used_event holds (the entries
   * a previous back end pushed may not have been signalled).
   */
  needsNotify(): boolean {
    const old = this.signalledUsed;
    const now = this.nextUsed;
    if (old === now) return false;
    this.signalledUsed = now;
    if (!this.eventIdx) return (Atomics.load(this.avail16, 0) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
    if (!this.signalledValid) {
      this.signalledValid = true;
      return true;
    }
    return vringNeedEvent(Atomics.load(this.avail16, 2 + this.size), now, old);
  }

  private fail(reason: string): BrokenQueue {
    this.broken = { kind: 'broken', reason };
    return this.broken;
  }

  private walk(head: number): Chain | MalformedChain | BrokenQueue {
    let table = this.desc;
    let entries = this.size;
    let inIndirect = false;
    let limit = this.size;
    let walked = 0;
    let index = head;
    const segments: Segment[] = [];
    let readableLength = 0;
    let writableLength = 0;
    let seenWritable = false;
    let problem: string | null = null;
    let lastWritableGpa = -1;
    let lastWritableLength = 0;
    for (;;) {
      if (++walked > limit) {
        return this.fail(`chain from head ${head} is longer than ${inIndirect ? 'its indirect table' : 'the queue'} (a loop)`);
      }
      const at = index * VIRTQ_DESC_SIZE;
      const low = table.readUInt32LE(at);
      const high = table.readUInt32LE(at + 4);
      const length = table.readUInt32LE(at + 8);
      const flags = table.readUInt16LE(at + 12);
      const next = table.readUInt16LE(at + 14);
      const gpa = high >= UNSAFE_HIGH_WORD ? Number.MAX_SAFE_INTEGER : high * 2 ** 32 + low;
      const where = `${inIndirect ? 'indirect ' : ''}descriptor ${index} of head ${head}`;

      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (inIndirect) return this.fail(`${where} is an indirect descriptor inside an indirect table`);
        if (flags & VIRTQ_DESC_F_NEXT) return this.fail(`${where} has both INDIRECT and NEXT`);
        if (length === 0 || length % VIRTQ_DESC_SIZE !== 0 || length > MAX_INDIRECT_TABLE) {
          return this.fail(`${where} points at an indirect table of ${length} bytes`);
        }
        const views = this.memory.map(gpa, length);
        if (!views) return this.fail(`${where} points at an indirect table outside guest memory`);
        table = views.length === 1 ? views[0] : Buffer.concat(views);
        entries = length / VIRTQ_DESC_SIZE;
        limit = entries;
        walked = 0;
        inIndirect = true;
        index = 0;
        continue;
      }

      const writable = (flags & VIRTQ_DESC_F_WRITE) !== 0;
      if (writable) {
        seenWritable = true;
        writableLength += length;
        if (length > 0) {
          lastWritableGpa = gpa;
          lastWritableLength = length;
        }
      } else {
        if (seenWritable) problem ??= `${where} is device-readable after a device-writable one`;
        readableLength += length;
      }
      if (readableLength + writableLength > MAX_CHAIN_BYTES) problem ??= `chain from head ${head} is longer than 2^32 bytes`;
      if (problem === null) {
        const views = this.memory.map(gpa, length);
        if (views) segments.push({ views, writable, length });
        else problem = `${where} covers guest memory no region maps`;
      }

      if (!(flags & VIRTQ_DESC_F_NEXT)) break;
      if (next >= entries) return this.fail(`${where} chains to ${next}, past a table of ${entries}`);
      index = next;
    }
    if (problem !== null) {
      const tail = lastWritableGpa < 0 ? null : this.memory.map(lastWritableGpa + lastWritableLength - 1, 1);
      return { kind: 'malformed', head, reason: problem, writableLength, lastWritableByte: tail?.[0] ?? null };
    }
    return { kind: 'chain', head, segments, readableLength, writableLength };
  }
}
