// The guest memory of one vhost-user connection: the regions the front
// end shares (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG), each mapped once
// with the native addon and seen as Buffers over 1 GiB windows, so a
// region of any size works and a view never copies.
//
// Descriptor addresses are guest-physical (map), ring addresses are the
// front end's own virtual addresses (mapUva); both are looked up in a
// list sorted by that address, and a range may run on into a region that
// starts exactly where the previous one ends. Every number a front end
// sends is checked: addresses and sizes must be integers below 2^53 (a
// u64 above that cannot be held exactly), and regions may not overlap in
// either address space.
//
// The table owns each region's descriptor from the moment it is handed
// over: it maps it and closes it (on failure too). Requests in flight
// may still hold views of a region that is being removed or replaced, so
// the old mappings are released only when the caller's `drained` promise
// settles; a view used after that reads zeros and writes nowhere (see
// native/src/guest-memory.cc), it never reaches freed memory.
//
// No fence function goes with the views: Atomics.load and Atomics.store on
// a typed array over a view are sequentially consistent (a locked xchg on
// x86-64, ldar/stlr on arm64) and keep the plain accesses before and after
// them in order, which is all the virtio ring barriers ask for, provided
// the ring indexes and flags are read and written with Atomics.

import fs from 'node:fs';
import { type NativeAddon, type SharedMapping, requireNative } from '../../io/native.js';
import type { GuestMemory } from '../../protocol/vhost-user/guest-memory.js';

/** One region as the front end describes it. */
export interface MemoryRegion {
  /** Guest-physical address of the first byte. */
  gpa: number;
  size: number;
  /** The front end's virtual address of the first byte (ring addresses use these). */
  uva: number;
  /** Where the region starts in the file. */
  mmapOffset: number;
  /** The file (a memfd); the table owns it from the call on. */
  fd: number;
}

/** A region as the table reports it (its descriptor is closed once mapped). */
export type RegionInfo = Omit<MemoryRegion, 'fd'>;

interface Mapped extends RegionInfo {
  windows: Buffer[];
  windowSize: number;
  mapping: SharedMapping;
}

type AddressKey = 'gpa' | 'uva';

/** A region the table refuses; the table is left as it was. */
export class MemoryRegionError extends Error {
  override readonly name = 'MemoryRegionError';
  readonly code = 'ERR_MEMORY_REGION';
}

const hex = (n: number) => `0x${n.toString(16)}`;
const describe = (r: RegionInfo) => `region gpa=${hex(r.gpa)} size=${hex(r.size)} uva=${hex(r.uva)}`;

const isAddress = (n: number) => Number.isSafeInteger(n) && n >= 0;

function checkRegion(r: MemoryRegion): void {
  const starts = [r.gpa, r.uva, r.mmapOffset];
  if (!isAddress(r.size) || r.size === 0 || !starts.every((start) => isAddress(start) && isAddress(start + r.size))) {
    throw new MemoryRegionError(
      `${describe(r)} mmapOffset=${r.mmapOffset}: addresses and sizes must be integers below 2^53, the size above 0`,
    );
  }
}

const overlaps = (a: RegionInfo, b: RegionInfo, key: AddressKey) => a[key] < b[key] + b.size && b[key] < a[key] + a.size;

/** Checks that regions[from..] overlap none before them (nor each other). */
function checkDisjoint(regions: readonly RegionInfo[], from = 0): void {
  for (let j = Math.max(from, 1); j < regions.length; j++) {
    for (let i = 0; i < j; i++) {
      for (const key of ['gpa', 'uva'] as const) {
        if (overlaps(regions[i], regions[j], key)) {
          const space = key === 'gpa' ? 'guest-physical' : 'front-end virtual';
          throw new MemoryRegionError(`${describe(regions[j])} overlaps ${describe(regions[i])} in ${space} addresses`);
        }
      }
    }
  }
}

function closeQuietly(fd: number): void {
  try {
    fs.closeSync(fd);
  } catch {
    // not open: nothing to release
  }
}

/** The index of the region holding `addr` in `list` (sorted by key), or -1. */
function find(list: readonly Mapped[], key: AddressKey, addr: number): number {
  let lo = 0;
  let hi = list.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const r = list[mid];
    if (addr < r[key]) hi = mid - 1;
    else if (addr >= r[key] + r.size) lo = mid + 1;
    else return mid;
  }
  return -1;
}

function views(list: readonly Mapped[], key: AddressKey, addr: number, length: number): Buffer[] | null {
  if (!isAddress(addr) || !isAddress(length) || !isAddress(addr + length)) return null;
  const out: Buffer[] = [];
  if (length === 0) return out;
  let i = find(list, key, addr);
  if (i < 0) return null;
  let at = addr;
  let left = length;
  for (;;) {
    const r = list[i];
    const offset = at - r[key];
    const w = Math.floor(offset / r.windowSize);
    const start = offset - w * r.windowSize;
    const n = Math.min(left, r.windows[w].length - start);
    out.push(r.windows[w].subarray(start, start + n));
    at += n;
    left -= n;
    if (left === 0) return out;
    if (at === r[key] + r.size) {
      // Only the next region in order can start exactly here.
      i++;
      if (i === list.length || list[i][key] !== at) return null;
    }
  }
}

const byKey = (key: AddressKey) => (a: Mapped, b: Mapped) => a[key] - b[key];

export class MemoryTable implements GuestMemory {
  private readonly native: NativeAddon;
  private byGpa: Mapped[] = [];
  private byUva: Mapped[] = [];

  /** windowSize: the largest view of one mapping (1 GiB unless a test asks for less). */
  constructor(private readonly windowSize?: number) {
    this.native = requireNative('vhost-user guest memory');
  }

  map(gpa: number, length: number): Buffer[] | null {
    return views(this.byGpa, 'gpa', gpa, length);
  }

  /** Views of the front end's virtual [uva, uva + length): where the rings are. */
  mapUva(uva: number, length: number): Buffer[] | null {
    return views(this.byUva, 'uva', uva, length);
  }

  get regions(): RegionInfo[] {
    return this.byGpa.map(({ gpa, size, uva, mmapOffset }) => ({ gpa, size, uva, mmapOffset }));
  }

  /** ADD_MEM_REG: maps one more region; throws if it overlaps one the table has. */
  add(region: MemoryRegion): void {
    let mapped: Mapped;
    try {
      checkRegion(region);
      checkDisjoint([...this.byGpa, region], this.byGpa.length);
      mapped = this.mapRegion(region);
    } finally {
      closeQuietly(region.fd);
    }
    this.install([...this.byGpa, mapped]);
  }

  /**
   * REM_MEM_REG: removes the region with this gpa, size and uva (false if
   * there is none) and releases its mapping once `drained` settles.
   */
  remove(region: Pick<RegionInfo, 'gpa' | 'size' | 'uva'>, drained: Promise<unknown> = Promise.resolve()): boolean {
    const gone = this.byGpa.find((r) => r.gpa === region.gpa && r.size === region.size && r.uva === region.uva);
    if (!gone) return false;
    this.install(this.byGpa.filter((r) => r !== gone));
    releaseWhen(drained, [gone]);
    return true;
  }

  /**
   * SET_MEM_TABLE: the table becomes exactly `regions`. All of them are
   * checked and mapped before anything changes; on any failure the old
   * table stays and this throws. The old mappings are released once
   * `drained` settles.
   */
  replace(regions: readonly MemoryRegion[], drained: Promise<unknown>): void {
    const mapped: Mapped[] = [];
    try {
      regions.forEach(checkRegion);
      checkDisjoint(regions);
      for (const r of regions) mapped.push(this.mapRegion(r));
    } catch (err) {
      for (const m of mapped) m.mapping.unmap();
      throw err;
    } finally {
      for (const r of regions) closeQuietly(r.fd);
    }
    const old = this.byGpa;
    this.install(mapped);
    releaseWhen(drained, old);
  }

  /** Empties the table (the connection ends); mappings are released once `drained` settles. */
  clear(drained: Promise<unknown> = Promise.resolve()): void {
    const old = this.byGpa;
    this.install([]);
    releaseWhen(drained, old);
  }

  private mapRegion(r: MemoryRegion): Mapped {
    let mapping: SharedMapping;
    try {
      mapping = this.native.mapShared(r.fd, r.mmapOffset, r.size, true, this.windowSize);
    } catch (err) {
      throw new MemoryRegionError(`${describe(r)} could not be mapped: ${(err as Error).message}`, { cause: err });
    }
    const { gpa, size, uva, mmapOffset } = r;
    const windows = mapping.windows.map((ab) => Buffer.from(ab));
    return { gpa, size, uva, mmapOffset, windows, windowSize: mapping.windowSize, mapping };
  }

  private install(regions: Mapped[]): void {
    this.byGpa = [...regions].sort(byKey('gpa'));
    this.byUva = [...regions].sort(byKey('uva'));
  }
}

function releaseWhen(drained: Promise<unknown>, regions: readonly Mapped[]): void {
  if (regions.length === 0) return;
  const release = () => {
    for (const r of regions) r.mapping.unmap();
  };
  drained.then(release, release);
}
