// The dirty filter: named dirty bitmaps (device/dirty-bitmap.ts) that mark
// the granules written, trimmed or zeroed since each was started or last
// cleared. They live in memory only (persisting them as qcow2 bitmaps is
// future work). A request marks when it is issued and again when it
// finishes, failed or not, as QEMU marks at the end of every write: too
// much is safe for an incremental backup, too little is not, and a
// clear() that comes while a write is in flight cannot lose it. Reads
// mark nothing.
//
// Front ends find bitmaps by walking an export's chain through `next`
// (dirtyBitmapNames, findDirtyBitmap below), so nothing here knows NBD;
// the NBD server turns them into qemu:dirty-bitmap:NAME contexts. A
// dropped bitmap is marked dropped, so a connection that had selected it
// can say so rather than show a bitmap started later under its name.

import { DirtyBitmap } from '../dirty-bitmap.js';
import type { BlockDevice, Request } from '../types.js';
import { Passthrough } from './passthrough.js';

export const DEFAULT_GRANULARITY = 64 * 1024;

export interface DirtyConfig {
  /** Bitmaps started when the filter is made. */
  bitmaps: string[];
  granularity: number;
}

export interface DirtyBitmapInfo {
  name: string;
  granularity: number;
  dirtyBytes: number;
}

/** A bitmap as a front end holds it: dropped turns true once drop() removes it. */
export class NamedBitmap extends DirtyBitmap {
  dropped = false;
  constructor(
    readonly name: string,
    size: number,
    granularity: number,
  ) {
    super(size, granularity);
  }
}

export class DirtyFilter extends Passthrough {
  readonly filterName = 'dirty';
  private readonly bitmaps = new Map<string, NamedBitmap>();

  constructor(next: BlockDevice, config: DirtyConfig) {
    super(next);
    for (const name of config.bitmaps) this.start(name, { granularity: config.granularity });
  }

  override get description(): string {
    return `${this.next.description}, dirty filter`;
  }

  start(name: string, options: { granularity?: number } = {}): DirtyBitmapInfo {
    if (!name || name.length > 1023) throw new Error(`a dirty bitmap name must be 1 to 1023 characters`);
    if (this.bitmaps.has(name)) throw new Error(`dirty bitmap '${name}' already exists`);
    const bitmap = new NamedBitmap(name, this.size, options.granularity ?? DEFAULT_GRANULARITY);
    this.bitmaps.set(name, bitmap);
    return info(bitmap);
  }

  clear(name: string): DirtyBitmapInfo {
    const bitmap = this.get(name);
    bitmap.clear();
    return info(bitmap);
  }

  drop(name: string): DirtyBitmapInfo {
    const bitmap = this.get(name);
    this.bitmaps.delete(name);
    bitmap.dropped = true;
    return info(bitmap);
  }

  list(): DirtyBitmapInfo[] {
    return [...this.bitmaps.values()].map(info);
  }

  bitmap(name: string): NamedBitmap | undefined {
    return this.bitmaps.get(name);
  }

  names(): string[] {
    return [...this.bitmaps.keys()];
  }

  private get(name: string): NamedBitmap {
    const bitmap = this.bitmaps.get(name);
    if (!bitmap) throw new Error(`no dirty bitmap '${name}' (bitmaps: ${this.names().join(', ') || 'none'})`);
    return bitmap;
  }

  private mark(req: Request): void {
    for (const b of this.bitmaps.values()) b.mark(req.offset, req.length);
  }

  /** Marks at issue and at the end, whatever the outcome. */
  private async marking(req: Request, p: () => Promise<void>): Promise<void> {
    this.mark(req);
    try {
      await p();
    } finally {
      this.mark(req);
    }
  }

  override write(req: Request): Promise<void> {
    return this.marking(req, () => this.next.write(req));
  }

  protected override writeFromNext(req: Request, from: Buffer[]): Promise<void> {
    return this.marking(req, () => this.next.writeFrom!(req, from));
  }

  override trim(req: Request): Promise<void> {
    return this.marking(req, () => this.next.trim(req));
  }

  override writeZeroes(req: Request): Promise<void> {
    return this.marking(req, () => this.next.writeZeroes(req));
  }
}

function info(b: NamedBitmap): DirtyBitmapInfo {
  return { name: b.name, granularity: b.granularity, dirtyBytes: b.dirtyBytes() };
}

/** Every dirty filter in a chain, nearest the client first. */
function dirtyFilters(device: BlockDevice): DirtyFilter[] {
  const out: DirtyFilter[] = [];
  for (let d: BlockDevice | undefined = device; d; d = d.next) if (d instanceof DirtyFilter) out.push(d);
  return out;
}

/** The names of the bitmaps kept anywhere in a device's chain (a name twice: the nearest the client). */
export function dirtyBitmapNames(device: BlockDevice): string[] {
  return [...new Set(dirtyFilters(device).flatMap((f) => f.names()))];
}

/** The bitmap of that name nearest the client in a device's chain. */
export function findDirtyBitmap(device: BlockDevice, name: string): NamedBitmap | undefined {
  for (const f of dirtyFilters(device)) {
    const b = f.bitmap(name);
    if (b) return b;
  }
  return undefined;
}
