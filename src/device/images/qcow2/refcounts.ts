// qcow2 reference counts: the refcount table (kept in memory) points to
// refcount blocks (cached, written through). Every change is written to
// the file before the caller goes on, and callers order their writes so
// that a crash can only leak clusters: a cluster's refcount goes up, and
// a sync passes, before anything points at it; it comes down only after
// nothing does and a sync has made that durable. Callers serialize all
// calls (the image's metadata mutex). A write that fails leaves the
// cached block as the file has it.
//
// Growth: a missing refcount block is placed in the first free cluster it
// covers, counting itself, and synced before the table entry points at it.
// When the table itself is full, a new area at the end of the file takes
// new refcount blocks that cover the area and a larger copy of the table;
// after a sync the header switches to it in one write, and after another
// the old table's clusters are freed. Both are rare (a block covers
// thousands of clusters), so these syncs are taken in line.

import { encodeEntry, entryOffset, readRefcount, writeRefcount } from './format.js';
import type { ImageFile } from '../image-file.js';
import type { SyncBarrier } from './sync-barrier.js';

export class Refcounts {
  private readonly clusterSize: number;
  /** Refcounts per block. */
  private readonly perBlock: number;
  private readonly blocks = new Map<number, Buffer>();
  /** No free cluster below this one (a search hint). */
  private freeHint = 1;

  private constructor(
    private readonly file: ImageFile,
    /** The syncs that order metadata writes. */
    private readonly barrier: SyncBarrier,
    clusterBits: number,
    private readonly order: number,
    private tableOffset: number,
    private table: Buffer,
    /** Cluster index past the last cluster in use or in the file. */
    private end: number,
  ) {
    this.clusterSize = 2 ** clusterBits;
    this.perBlock = (this.clusterSize * 8) / 2 ** order;
  }

  static async load(
    file: ImageFile,
    barrier: SyncBarrier,
    h: { clusterBits: number; refcountOrder: number; refcountTableOffset: number; refcountTableClusters: number },
    fileSize: number,
  ): Promise<Refcounts> {
    const table = await file.read(h.refcountTableOffset, h.refcountTableClusters * 2 ** h.clusterBits);
    const end = Math.ceil(fileSize / 2 ** h.clusterBits);
    return new Refcounts(file, barrier, h.clusterBits, h.refcountOrder, h.refcountTableOffset, Buffer.from(table), end);
  }

  private get tableEntries(): number {
    return this.table.length / 8;
  }

  private blockOffset(index: number): number {
    if (index >= this.tableEntries) return 0;
    return entryOffset(this.table.readUInt32BE(8 * index), this.table.readUInt32BE(8 * index + 4));
  }

  private async block(offset: number): Promise<Buffer> {
    let b = this.blocks.get(offset);
    if (!b) {
      b = Buffer.from(await this.file.read(offset, this.clusterSize));
      this.blocks.set(offset, b);
    }
    return b;
  }

  async get(host: number): Promise<number> {
    const cluster = Math.floor(host / this.clusterSize);
    const offset = this.blockOffset(Math.floor(cluster / this.perBlock));
    if (!offset) return 0;
    return readRefcount(await this.block(offset), cluster % this.perBlock, this.order);
  }

  /** Adds `delta` to the refcount of the cluster at `host`, writing it through. */
  async change(host: number, delta: number): Promise<void> {
    const cluster = Math.floor(host / this.clusterSize);
    const offset = this.blockOffset(Math.floor(cluster / this.perBlock));
    if (!offset) throw new Error(`qcow2: no refcount block for cluster at ${host}`);
    const block = await this.block(offset);
    const i = cluster % this.perBlock;
    const value = readRefcount(block, i, this.order) + delta;
    if (value < 0) throw new Error(`qcow2: refcount of cluster at ${host} would drop below zero`);
    await this.set(offset, block, i, value);
    if (value === 0 && cluster < this.freeHint) this.freeHint = cluster;
  }

  /** A free cluster, now with refcount 1; returns its host offset. */
  async allocate(): Promise<number> {
    for (let c = this.freeHint; ; ) {
      const index = Math.floor(c / this.perBlock);
      if (index >= this.tableEntries) {
        await this.growTable(index);
        continue;
      }
      const offset = this.blockOffset(index);
      if (!offset) {
        // The new block goes into c itself, which it covers; c + 1 is next.
        await this.createBlock(index, c);
        c++;
        continue;
      }
      const block = await this.block(offset);
      for (let i = c % this.perBlock; i < this.perBlock; i++, c++) {
        if (readRefcount(block, i, this.order) !== 0) continue;
        await this.set(offset, block, i, 1);
        this.freeHint = c + 1;
        this.end = Math.max(this.end, c + 1);
        return c * this.clusterSize;
      }
    }
  }

  /** `n` adjacent free clusters, now each with refcount 1; returns the first one's host offset. */
  async allocateRun(n: number): Promise<number> {
    for (;;) {
      const run = [await this.allocate()];
      while (run.length < n) {
        const next = await this.allocate();
        run.push(next);
        if (next !== run[run.length - 2] + this.clusterSize) break;
      }
      const last = run[run.length - 1];
      if (run.length === n && last === run[0] + (n - 1) * this.clusterSize) return run[0];
      // A gap (a cluster in use, or a refcount block placed on the way): give
      // them back and try again past everything in use, where all is free.
      for (const host of run) await this.change(host, -1);
      this.freeHint = this.end;
    }
  }

  /** Sets refcount `i` of the block at `offset` and writes it; the cached block is put back if the write fails. */
  private async set(offset: number, block: Buffer, i: number, value: number): Promise<void> {
    const before = readRefcount(block, i, this.order);
    try {
      await this.writeBlockRange(offset, block, writeRefcount(block, i, this.order, value));
    } catch (err) {
      writeRefcount(block, i, this.order, before);
      throw err;
    }
  }

  private async writeBlockRange(offset: number, block: Buffer, range: { start: number; end: number }): Promise<void> {
    await this.file.writeMeta(Buffer.from(block.subarray(range.start, range.end)), offset + range.start);
  }

  /** A refcount block for table entry `index`, stored in cluster `at` (which it covers). */
  private async createBlock(index: number, at: number): Promise<void> {
    const block = Buffer.alloc(this.clusterSize);
    writeRefcount(block, at - index * this.perBlock, this.order, 1);
    const offset = at * this.clusterSize;
    await this.file.writeMeta(block, offset);
    await this.barrier.wait();
    this.blocks.set(offset, block);
    this.end = Math.max(this.end, at + 1);
    const entry = Buffer.alloc(8);
    encodeEntry(entry, 0, offset, false);
    await this.file.writeMeta(entry, this.tableOffset + 8 * index);
    entry.copy(this.table, 8 * index);
  }

  /** Moves the table to a larger copy in a new area at the end of the file. */
  private async growTable(needed: number): Promise<void> {
    const cs = this.clusterSize;
    const start = this.end;
    let blocks = 0;
    let tableClusters = Math.ceil((Math.max(needed + 1, 2 * this.tableEntries) * 8) / cs);
    // The area holds its own refcount blocks and the table; find sizes that cover it all.
    for (;;) {
      const areaEnd = start + blocks + tableClusters;
      const first = Math.floor(start / this.perBlock);
      const last = Math.floor((areaEnd - 1) / this.perBlock);
      let missing = 0;
      for (let b = first; b <= last; b++) if (!this.blockOffset(b)) missing++;
      const entries = Math.max(needed, last) + 1;
      const clusters = Math.ceil((entries * 8) / cs);
      if (missing === blocks && clusters <= tableClusters) break;
      blocks = missing;
      tableClusters = Math.max(tableClusters, clusters);
    }
    const areaEnd = start + blocks + tableClusters;
    const table = Buffer.alloc(tableClusters * cs);
    this.table.copy(table);
    // New blocks in the first clusters of the area, in index order.
    let next = start;
    const placed = new Map<number, Buffer>();
    for (let b = Math.floor(start / this.perBlock); b <= Math.floor((areaEnd - 1) / this.perBlock); b++) {
      if (this.blockOffset(b)) continue;
      const offset = next++ * cs;
      placed.set(offset, Buffer.alloc(cs));
      encodeEntry(table, 8 * b, offset, false);
    }
    // Every cluster of the area is in use; count it in whichever block covers it.
    for (let c = start; c < areaEnd; c++) {
      const b = Math.floor(c / this.perBlock);
      const offset = entryOffset(table.readUInt32BE(8 * b), table.readUInt32BE(8 * b + 4));
      const block = placed.get(offset) ?? (await this.block(offset));
      const range = writeRefcount(block, c % this.perBlock, this.order, 1);
      if (!placed.has(offset)) await this.writeBlockRange(offset, block, range);
    }
    for (const [offset, block] of placed) {
      await this.file.writeMeta(block, offset);
      this.blocks.set(offset, block);
    }
    const tableOffset = (start + blocks) * cs;
    await this.file.writeMeta(table, tableOffset);
    await this.barrier.wait();
    // The switch: offset and cluster count are adjacent header fields, one write.
    const fields = Buffer.alloc(12);
    fields.writeBigUInt64BE(BigInt(tableOffset), 0);
    fields.writeUInt32BE(tableClusters, 8);
    await this.file.writeMeta(fields, 48);
    await this.barrier.wait();
    const old = { offset: this.tableOffset, clusters: this.table.length / cs };
    this.table = table;
    this.tableOffset = tableOffset;
    this.end = areaEnd;
    for (let i = 0; i < old.clusters; i++) await this.change(old.offset + i * cs, -1);
  }
}
