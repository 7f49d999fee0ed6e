// A qcow2 image as a BlockDevice: reads through L1/L2 to data, zero,
// compressed or unallocated clusters (the last from the backing device,
// or zeroes past its end); writes in place to clusters it owns alone
// (COPIED), and otherwise allocates a new cluster and writes it whole,
// merged with what the guest saw there before (copy-on-write).
//
// Crash safety follows the order in REFERENCE.md: refcount up before any
// L1/L2 entry points at a cluster, the cluster's data before the L2 entry
// that exposes it, a new L2 table before its L1 entry, and references
// dropped before refcounts. A power cut keeps page-cache writes in any
// order, so each "before" is a sync between the two (sync-barrier.ts).
// Requests do not wait for those syncs: an allocation raises the refcount
// and writes a new L2 table if it needs one (under the metadata mutex),
// writes the cluster's data (outside it), then sets the L2 entry in the
// cached table only, tagged with the sync epoch. Entries wait there,
// pinned in the cache, until a sync covers what they need; then settle()
// writes them, and the L1 entries of new tables, and tags the clusters
// they dropped, which are given back after one sync more. A background
// loop runs those syncs while anything waits, about one a second, each
// covering every allocation made since the one before, and FLUSH runs
// them at once: a sync, the waiting entries, a second sync. So an
// acknowledged write is durable after FLUSH or FUA; a power cut or a
// kill -9 before that may lose it, and leaks clusters at worst.
// Writes racing for the same unallocated cluster wait for the first
// allocation and then write in place. An allocation that fails gives its
// cluster back.
//
// Zeroing and trimming whole clusters only edits L2 entries (the same
// way, waiting in the cache): the zero flag hides the backing file; where
// there is no backing file a trimmed cluster is deallocated, its space
// reusable once the next sync has made that durable.

import fs from 'node:fs';
import { promisify } from 'node:util';
import { inflateRawSync } from 'node:zlib';
import type { IoEngine } from '../../../io/engine.js';
import { DeviceError } from '../../errors.js';
import { Mutex } from '../../mutex.js';
import type { BlockDevice, Capabilities, Extent, ReadSegment, Request } from '../../types.js';
import {
  AUTOCLEAR_BITMAPS,
  decodeHeader,
  decodeL1,
  decodeL2,
  encodeEntry,
  FIELD,
  readOnlyReason,
  unsupportedReason,
  type Header,
  type L2Entry,
} from './format.js';
import { markBitmapsInUse } from './bitmaps.js';
import { ImageFile, type WritebackReport } from '../image-file.js';
import { Refcounts } from './refcounts.js';
import { SyncBarrier } from './sync-barrier.js';

const close = promisify(fs.close);
const L2_CACHE_TABLES = 512;
const MAX_EXTENTS = 1024;
/** At most this much memory kept in reusable copy-on-write buffers. */
const COPY_BUFFER_BYTES = 8 << 20;
/**
 * How long the write-back loop lets waiting entries gather before it
 * syncs. Syncs are what allocation costs now: with 20 ms between them 4 KiB
 * random writes into a new overlay ran at 0.7 times the speed of writing
 * through without syncs, with 1 s at the same speed (bench:overlay). An
 * entry that waits is lost on a crash, as QEMU's dirty metadata caches
 * are, which it writes only on flush or eviction; FLUSH writes them all.
 */
const WRITE_BACK_DELAY_MS = 1000;
/** Past this many waiting entries, or half the L2 cache's tables pinned by them, write-back starts at once. */
const MAX_WAITING_ENTRIES = 1 << 16;

export interface Qcow2Options {
  readOnly: boolean;
  engine: IoEngine;
  /** The opened backing device, if the image has one. */
  backing: BlockDevice | null;
  /** Descriptors already opened (and locked) by the caller; closed with the image. */
  fd: number;
  /**
   * The descriptor was opened O_DIRECT, so transfers need aligned buffers,
   * offsets and lengths. When not given, Linux's /proc/self/fdinfo says.
   */
  direct?: boolean;
  /** Told when write-back to the file first fails (see image-file.ts). */
  onWritebackError?: WritebackReport;
  /**
   * Test only, the negative control of the power-loss test: the syncs
   * that order metadata writes are left out (FLUSH and FUA still sync).
   */
  unorderedForTest?: boolean;
}

/** Where a guest cluster's data is, for the map command and block status. */
export type ClusterState = L2Entry;

export class Qcow2Image implements BlockDevice {
  size: number;
  readonly capabilities: Capabilities;
  readonly description: string;
  readonly clusterSize: number;
  private readonly clusterBits: number;
  private readonly l2Entries: number;
  private l1: Buffer;
  private readonly l2Cache = new Map<number, Buffer>();
  /** Tables being read: concurrent lookups share one read and one buffer. */
  private readonly l2Loading = new Map<number, Promise<Buffer>>();
  /** Tables with entries not yet written, and how many: never evicted, so never re-read stale. */
  private readonly l2Dirty = new Map<number, number>();
  /** L2 entries set in the cache, by guest cluster: each written once a sync covers its epoch; then what it dropped is freed. */
  private readonly l2Pending = new Map<number, { l2: number; epoch: number; drops: number[] }>();
  private readonly meta = new Mutex();
  private readonly allocating = new Map<number, Promise<void>>();
  /**
   * Cluster buffers for copy-on-write, reused: a new 64 KiB buffer for
   * every allocation made garbage collection a large share of the time.
   */
  private readonly clusterBuffers: Buffer[] = [];
  /** L1 entries of new L2 tables, by index, not yet written: each waits for a sync after its table (the epoch). */
  private readonly l1Pending = new Map<number, number>();
  /** Clusters nothing points to any more, to be given back once a sync has covered the dropped reference. */
  private readonly frees: { host: number; epoch: number }[] = [];
  /** The background loop that syncs and settles while anything waits. */
  private writingBack: Promise<void> | null = null;
  /** The syncs completed when settle() last ran to the end: until another completes it has nothing to do. */
  private settledAt = -1;
  /** The epoch of settle()'s last write: FLUSH needs a sync after it unless one has covered it. */
  private writtenAt = -1;
  /** Ends the write-back loop's wait early (when closing, or when much waits). */
  private wake: (() => void) | null = null;
  private closing = false;

  private constructor(
    readonly path: string,
    readonly header: Header,
    private readonly file: ImageFile,
    private readonly fd: number,
    l1: Buffer,
    private readonly refcounts: Refcounts | null,
    readonly backing: BlockDevice | null,
    readOnly: boolean,
    /** FLUSH and FUA. */
    private readonly durable: SyncBarrier,
    /** The syncs between metadata writes (the same barrier, but for the negative control). */
    private readonly order: SyncBarrier,
  ) {
    this.size = header.size;
    this.clusterBits = header.clusterBits;
    this.clusterSize = 2 ** header.clusterBits;
    this.l2Entries = this.clusterSize / 8;
    this.l1 = l1;
    const via = backing ? `, backed by ${backing.description}` : '';
    this.description = `qcow2 image ${path}${readOnly ? ' (read-only)' : ''}${via}`;
    this.capabilities = {
      readOnly,
      flush: !readOnly,
      trim: !readOnly,
      zero: !readOnly,
      fastZero: !readOnly,
      cache: false,
      extents: true,
      multiConn: true,
      blockSizes: { minimum: 1, preferred: 4096, maximum: 32 << 20 },
    };
  }

  static async open(path: string, options: Qcow2Options): Promise<Qcow2Image> {
    // Metadata entries are 8 bytes and clusters may be 512: with O_DIRECT
    // every transfer goes through DirectIo (see image-file.ts).
    const direct = options.direct ?? openedDirect(options.fd);
    const file = new ImageFile(options.fd, options.engine, direct ? { writable: !options.readOnly } : null, options.onWritebackError);
    const first = readHead(path);
    const header = decodeHeader(first);
    const unsupported = unsupportedReason(header);
    if (unsupported) throw new Error(`${path}: vblk cannot serve this qcow2 image: ${unsupported}`);
    if (!options.readOnly) {
      const why = readOnlyReason(header);
      if (why) throw new Error(`${path}: vblk will not write this qcow2 image: ${why}; serve it read-only`);
    }
    const l1 = Buffer.from(await file.read(header.l1TableOffset, header.l1Size * 8));
    const durable = new SyncBarrier(() => file.sync());
    const order = options.unorderedForTest ? new SyncBarrier(() => Promise.resolve()) : durable;
    let refcounts: Refcounts | null = null;
    if (!options.readOnly) {
      refcounts = await Refcounts.load(file, order, header, fs.fstatSync(options.fd).size);
      if (header.autoclear & AUTOCLEAR_BITMAPS && !(await markBitmapsInUse(file, header))) {
        // Persistent bitmaps we do not maintain and cannot mark in use (see
        // bitmaps.ts): clearing the bit tells QEMU they are all stale.
        const field = Buffer.alloc(4);
        field.writeUInt32BE((header.autoclear & ~AUTOCLEAR_BITMAPS) >>> 0, 0);
        await file.writeMeta(field, FIELD.autoclearLow);
        await durable.wait();
      }
    }
    return new Qcow2Image(path, header, file, options.fd, l1, refcounts, options.backing, options.readOnly, durable, order);
  }

  // --- mapping --------------------------------------------------------

  private async l2Table(offset: number): Promise<Buffer> {
    const cached = this.l2Cache.get(offset);
    if (cached) {
      // Map order is insertion order: re-inserting makes it the most recent.
      this.l2Cache.delete(offset);
      this.l2Cache.set(offset, cached);
      return cached;
    }
    let loading = this.l2Loading.get(offset);
    if (!loading) {
      loading = this.file.read(offset, this.clusterSize).then((b) => Buffer.from(b));
      this.l2Loading.set(offset, loading);
    }
    const table = await loading;
    this.l2Loading.delete(offset);
    const installed = this.l2Cache.get(offset);
    if (installed) return installed;
    if (this.l2Cache.size >= L2_CACHE_TABLES) {
      for (const key of this.l2Cache.keys()) {
        if (this.l2Dirty.has(key)) continue;
        this.l2Cache.delete(key);
        break;
      }
    }
    this.l2Cache.set(offset, table);
    return table;
  }

  /** The L2 entry of guest cluster `gc`. */
  async lookup(gc: number): Promise<L2Entry> {
    const l1Index = Math.floor(gc / this.l2Entries);
    if (l1Index >= this.header.l1Size) return { kind: 'unallocated' };
    const { host } = decodeL1(this.l1, l1Index);
    if (!host) return { kind: 'unallocated' };
    return decodeL2(await this.l2Table(host), gc % this.l2Entries, this.clusterBits);
  }

  // --- reads ----------------------------------------------------------

  async read(req: Request): Promise<ReadSegment[]> {
    const segments: ReadSegment[] = [];
    await this.forEachCluster(req.offset, req.length, async (gc, offset, inner, length) => {
      const e = await this.lookup(gc);
      segments.push(...(await this.readCluster(e, offset, inner, length)));
    });
    return mergeZeroes(segments);
  }

  private async readCluster(e: L2Entry, offset: number, inner: number, length: number): Promise<ReadSegment[]> {
    switch (e.kind) {
      case 'data':
        return [{ offset, length, data: await this.file.read(e.host + inner, length) }];
      case 'zero':
        return [{ offset, length, data: null }];
      case 'compressed':
        return [{ offset, length, data: (await this.decompress(e)).subarray(inner, inner + length) }];
      case 'unallocated':
        return this.readBelow(offset, length);
    }
  }

  /** What the backing chain holds at [offset, offset + length), zeroes past its end. */
  private async readBelow(offset: number, length: number): Promise<ReadSegment[]> {
    const below = this.backing ? Math.max(0, Math.min(length, this.backing.size - offset)) : 0;
    const out: ReadSegment[] = [];
    if (below > 0) {
      out.push(...(await this.backing!.read({ op: 'read', offset, length: below, fua: false, noHole: false, fastZero: false, reqOne: false, df: false })));
    }
    if (below < length) out.push({ offset: offset + below, length: length - below, data: null });
    return out;
  }

  private async decompress(e: Extract<L2Entry, { kind: 'compressed' }>): Promise<Buffer> {
    const size = Math.min(e.length, Math.max(0, fs.fstatSync(this.fd).size - e.host));
    const packed = await this.file.read(e.host, size);
    const data = inflateRawSync(packed, { finishFlush: 2 /* Z_SYNC_FLUSH: trailing bytes are fine */ });
    if (data.length < this.clusterSize) {
      const full = Buffer.alloc(this.clusterSize);
      data.copy(full);
      return full;
    }
    return data.subarray(0, this.clusterSize);
  }

  /** The whole guest cluster as the guest sees it now. */
  private async clusterContent(gc: number, e: L2Entry, content: Buffer = Buffer.alloc(this.clusterSize)): Promise<Buffer> {
    const offset = gc * this.clusterSize;
    const length = Math.min(this.clusterSize, this.size - offset);
    content.fill(0);
    for (const s of await this.readCluster(e, offset, 0, length)) s.data?.copy(content, s.offset - offset);
    return content;
  }

  // --- writes ---------------------------------------------------------

  async write(req: Request): Promise<void> {
    const data = req.data!;
    await this.forEachCluster(req.offset, req.length, (gc, offset, inner, length) =>
      this.writeCluster(gc, inner, data.subarray(offset - req.offset, offset - req.offset + length)),
    );
    if (req.fua) await this.flush();
  }

  private async writeCluster(gc: number, inner: number, data: Buffer): Promise<void> {
    for (;;) {
      const e = await this.lookup(gc);
      if (e.kind === 'data' && e.copied) return this.file.write(data, e.host + inner);
      const pending = this.allocating.get(gc);
      if (pending) {
        await pending;
        continue;
      }
      return this.allocateCluster(gc, (old) => {
        data.copy(old, inner);
        return old;
      }, inner === 0 && data.length === this.clusterSize);
    }
  }

  /**
   * Gives guest cluster `gc` a new host cluster holding fill(what the guest
   * saw there), then points the cached L2 entry at it (written after a
   * sync). `whole`: fill ignores the old content, so it is not read. When
   * it fails, the new cluster is given back.
   */
  private async allocateCluster(gc: number, fill: (old: Buffer) => Buffer, whole: boolean): Promise<void> {
    let done!: () => void;
    this.allocating.set(gc, new Promise((resolve) => (done = resolve)));
    let host = 0;
    let pointed = false;
    try {
      let l2: number, old: L2Entry;
      ({ l2, host, old } = await this.meta.run(async () => {
        await this.settle();
        const l2 = await this.ownL2Table(gc);
        const old = decodeL2(await this.l2Table(l2), gc % this.l2Entries, this.clusterBits);
        return { l2, host: await this.refcounts!.allocate(), old };
      }));
      const buffer = this.clusterBuffers.pop() ?? Buffer.allocUnsafe(this.clusterSize);
      try {
        const content = fill(whole ? buffer.fill(0) : await this.clusterContent(gc, old, buffer));
        await this.file.write(content, host);
      } finally {
        // The engine is done with it once the write settled.
        if (this.clusterBuffers.length < Math.max(1, COPY_BUFFER_BYTES / this.clusterSize)) this.clusterBuffers.push(buffer);
      }
      await this.meta.run(async () => {
        await this.setL2(l2, gc, host, true, false, old);
        pointed = true;
      });
    } catch (err) {
      // Nothing points at the new cluster: give it back now. If even that
      // fails, the cluster is leaked (qemu-img check -r leaks repairs it).
      if (host && !pointed) await this.meta.run(() => this.refcounts!.change(host, -1)).catch(() => undefined);
      throw err;
    } finally {
      this.allocating.delete(gc);
      done();
    }
  }

  /**
   * Grows the virtual size to `size`, first moving L1 to a larger table
   * when the new size needs more entries: the new table is written and
   * synced, the header switches to it in one write (l1_size and
   * l1_table_offset are adjacent), then the old table's clusters are
   * freed. For an image no export serves: a client keeps the size it got.
   */
  async grow(size: number): Promise<void> {
    if (this.capabilities.readOnly) throw new Error(`${this.path}: opened read-only, cannot resize`);
    if (size < this.size) throw new Error(`${this.path}: shrinking a qcow2 image is not supported`);
    await this.meta.run(async () => {
      const cs = this.clusterSize;
      const l1Size = Math.ceil(size / (cs * this.l2Entries));
      if (l1Size > this.header.l1Size) {
        if (l1Size > 0x2000000) throw new Error(`${this.path}: ${size} bytes needs an L1 table larger than 256 MiB`);
        const clusters = Math.ceil((l1Size * 8) / cs);
        const at = await this.refcounts!.allocateRun(clusters);
        const table = Buffer.alloc(clusters * cs);
        this.l1.copy(table);
        await this.file.write(table, at);
        await this.order.wait();
        const fields = Buffer.alloc(12);
        fields.writeUInt32BE(l1Size, 0);
        fields.writeBigUInt64BE(BigInt(at), 4);
        await this.file.write(fields, FIELD.l1Size);
        await this.order.wait();
        const old = { offset: this.header.l1TableOffset, clusters: Math.ceil((this.header.l1Size * 8) / cs) };
        this.header.l1Size = l1Size;
        this.header.l1TableOffset = at;
        this.l1 = table.subarray(0, l1Size * 8);
        for (let i = 0; i < old.clusters; i++) await this.refcounts!.change(old.offset + i * cs, -1);
      }
      const field = Buffer.alloc(8);
      field.writeBigUInt64BE(BigInt(size));
      await this.file.write(field, FIELD.size);
      await this.durable.wait();
      this.header.size = size;
      this.size = size;
    });
  }

  /**
   * The host offset of gc's L2 table, allocating an empty one if there is
   * none. A new table is in the in-memory L1 at once; its entry in the file
   * waits in l1Pending for a sync. Under the mutex.
   */
  private async ownL2Table(gc: number): Promise<number> {
    const l1Index = Math.floor(gc / this.l2Entries);
    if (l1Index >= this.header.l1Size) throw new DeviceError('EIO', 'qcow2: L1 table too small for the virtual size');
    const { host, copied } = decodeL1(this.l1, l1Index);
    if (host && !copied) throw new DeviceError('EIO', 'qcow2: shared L2 table (internal snapshots are not supported)');
    if (host) return host;
    const table = await this.refcounts!.allocate();
    const empty = Buffer.alloc(this.clusterSize);
    try {
      await this.file.writeMeta(empty, table);
    } catch (err) {
      await this.refcounts!.change(table, -1);
      throw err;
    }
    encodeEntry(this.l1, 8 * l1Index, table, true);
    this.l1Pending.set(l1Index, this.order.epoch);
    this.l2Cache.set(table, empty);
    return table;
  }

  /**
   * Sets L2 entry of gc (table at `l2`) in the cache; it is written once a
   * sync has covered what was written before now (the cluster's data and
   * refcount), and then the clusters of `old` are freed. Under the mutex.
   */
  private async setL2(l2: number, gc: number, host: number, copied: boolean, zero: boolean, old: L2Entry | null): Promise<void> {
    const table = await this.l2Table(l2);
    encodeEntry(table, 8 * (gc % this.l2Entries), host, copied, zero);
    const drops = old ? this.hostClusters(old) : [];
    const pending = this.l2Pending.get(gc);
    if (pending) {
      pending.epoch = this.order.epoch;
      pending.drops.push(...drops);
    } else {
      this.l2Pending.set(gc, { l2, epoch: this.order.epoch, drops });
      this.l2Dirty.set(l2, (this.l2Dirty.get(l2) ?? 0) + 1);
    }
    this.writeBack();
    if (this.l2Pending.size > MAX_WAITING_ENTRIES || this.l2Dirty.size > L2_CACHE_TABLES / 2) this.wake?.();
  }

  /**
   * Writes what waited for a sync that has now completed: the L1 entries
   * of new tables and the L2 entries set since, tagging the clusters they
   * dropped; gives back clusters whose dropping a sync has covered.
   * Under the mutex.
   */
  private async settle(): Promise<void> {
    const done = this.order.done;
    if (done === this.settledAt) return;
    let wrote = false;
    for (const [i, epoch] of this.l1Pending) {
      if (!this.order.covers(epoch)) continue;
      await this.file.writeMeta(Buffer.from(this.l1.subarray(8 * i, 8 * i + 8)), this.header.l1TableOffset + 8 * i);
      this.l1Pending.delete(i);
      wrote = true;
    }
    for (const [gc, p] of this.l2Pending) {
      if (!this.order.covers(p.epoch)) continue;
      const at = 8 * (gc % this.l2Entries);
      await this.file.writeMeta(Buffer.from(this.l2Cache.get(p.l2)!.subarray(at, at + 8)), p.l2 + at);
      this.l2Pending.delete(gc);
      const n = this.l2Dirty.get(p.l2)! - 1;
      if (n) this.l2Dirty.set(p.l2, n);
      else this.l2Dirty.delete(p.l2);
      for (const host of p.drops) this.frees.push({ host, epoch: this.order.epoch });
      wrote = true;
    }
    while (this.frees.length > 0 && this.order.covers(this.frees[0].epoch)) {
      await this.refcounts!.change(this.frees[0].host, -1);
      this.frees.shift();
      wrote = true;
    }
    this.settledAt = done;
    if (wrote) this.writtenAt = this.order.epoch;
  }

  private waiting(): boolean {
    return this.l2Pending.size > 0 || this.l1Pending.size > 0 || this.frees.length > 0;
  }

  /** Starts the background loop unless it runs: sync, settle, again while anything waits. */
  private writeBack(): void {
    if (this.writingBack || this.closing) return;
    this.writingBack = (async () => {
      try {
        while (this.waiting() && !this.closing) {
          await new Promise<void>((resolve) => {
            const timer = setTimeout(resolve, WRITE_BACK_DELAY_MS);
            this.wake = () => {
              clearTimeout(timer);
              resolve();
            };
          });
          this.wake = null;
          if (this.closing) break;
          await this.order.wait();
          await this.meta.run(() => this.settle());
        }
      } catch {
        // A failed sync or write: the next FLUSH or allocation reports it.
      } finally {
        this.writingBack = null;
      }
    })();
  }

  /** The host clusters an entry holds a reference to. */
  private hostClusters(e: L2Entry): number[] {
    if (e.kind === 'data' || (e.kind === 'zero' && e.host)) return [e.host];
    if (e.kind !== 'compressed') return [];
    // A compressed cluster's bytes may span two host clusters, each counted.
    const out: number[] = [];
    const first = Math.floor(e.host / this.clusterSize) * this.clusterSize;
    const last = Math.floor((e.host + e.length - 1) / this.clusterSize) * this.clusterSize;
    for (let c = first; c <= last; c += this.clusterSize) out.push(c);
    return out;
  }

  /**
   * A sync, then the entries it covered, then a second sync if entries
   * were written since a sync began (or the ordering syncs are left out):
   * every write acknowledged before the call is durable after it.
   */
  async flush(): Promise<void> {
    await this.order.wait();
    if (this.refcounts) await this.meta.run(() => this.settle());
    if (!this.durable.covers(this.writtenAt) || this.order !== this.durable) await this.durable.wait();
  }

  // --- zeroes and trim --------------------------------------------------

  async writeZeroes(req: Request): Promise<void> {
    const { head, whole, tail } = this.split(req.offset, req.length);
    if (req.fastZero && (head || tail)) {
      throw new DeviceError('ENOTSUP', 'only whole qcow2 clusters can be zeroed fast');
    }
    for (const part of [head, tail]) {
      if (part) await this.write({ ...req, op: 'write', offset: part.offset, length: part.length, data: Buffer.alloc(part.length), fua: false });
    }
    for (let gc = whole.first; gc < whole.end; gc++) await this.zeroCluster(gc, req.noHole, false);
    if (req.fua) await this.flush();
  }

  async trim(req: Request): Promise<void> {
    const { whole } = this.split(req.offset, req.length);
    for (let gc = whole.first; gc < whole.end; gc++) await this.zeroCluster(gc, false, true);
    if (req.fua) await this.flush();
  }

  /**
   * Makes guest cluster gc read as zeroes by its L2 entry alone. With
   * `keep` (NO_HOLE) an owned cluster keeps its allocation; a trim where no
   * backing file shows through deallocates it.
   */
  private async zeroCluster(gc: number, keep: boolean, trim: boolean): Promise<void> {
    for (;;) {
      while (this.allocating.has(gc)) await this.allocating.get(gc);
      const raced = await this.meta.run(async () => {
        // An allocation that began meanwhile would drop the same old entry again.
        if (this.allocating.has(gc)) return true;
        await this.settle();
        const old = await this.lookup(gc);
        const showsThrough = this.backing !== null && gc * this.clusterSize < this.backing.size;
        if (old.kind === 'unallocated' && !showsThrough) return false;
        if (old.kind === 'zero' && !(trim && !showsThrough)) return false;
        const l2 = await this.ownL2Table(gc);
        if (keep && old.kind === 'data' && old.copied) await this.setL2(l2, gc, old.host, true, true, null);
        else if (trim && !showsThrough) await this.setL2(l2, gc, 0, false, false, old);
        else await this.setL2(l2, gc, 0, false, true, old);
        return false;
      });
      if (!raced) return;
    }
  }

  /** Splits a range into partial clusters at its ends and whole clusters between. */
  private split(offset: number, length: number) {
    const cs = this.clusterSize;
    const end = offset + length;
    // The last cluster counts as whole when the range runs to the end of the disk.
    const firstWhole = Math.ceil(offset / cs);
    const endWhole = end === this.size ? Math.ceil(end / cs) : Math.floor(end / cs);
    if (firstWhole >= endWhole) return { head: length ? { offset, length } : null, whole: { first: 0, end: 0 }, tail: null };
    const head = offset < firstWhole * cs ? { offset, length: firstWhole * cs - offset } : null;
    const tailStart = endWhole * cs;
    const tail = tailStart < end ? { offset: tailStart, length: end - tailStart } : null;
    return { head, whole: { first: firstWhole, end: endWhole }, tail };
  }

  // --- block status -----------------------------------------------------

  async cache(): Promise<void> {}

  async blockStatus(req: Request): Promise<Extent[]> {
    const extents: Extent[] = [];
    const push = (e: Extent): void => {
      const last = extents[extents.length - 1];
      if (last && last.hole === e.hole && last.zero === e.zero && last.depth === e.depth) last.length += e.length;
      else extents.push({ ...e });
    };
    const limit = req.reqOne ? 1 : MAX_EXTENTS;
    let pos = req.offset;
    const end = req.offset + req.length;
    while (pos < end && extents.length <= limit) {
      const gc = Math.floor(pos / this.clusterSize);
      const length = Math.min(end, (gc + 1) * this.clusterSize) - pos;
      const e = await this.lookup(gc);
      if (e.kind === 'unallocated') {
        // A run of unallocated clusters asks the backing chain once.
        let runEnd = pos + length;
        while (runEnd < end && (await this.lookup(Math.floor(runEnd / this.clusterSize))).kind === 'unallocated') {
          runEnd = Math.min(end, runEnd + this.clusterSize);
        }
        for (const x of await this.statusBelow(pos, runEnd - pos)) push(x);
        pos = runEnd;
        continue;
      }
      push(e.kind === 'zero' ? { length, hole: true, zero: true, depth: 1 } : { length, hole: false, zero: false, depth: 1 });
      pos += length;
    }
    return extents.slice(0, limit);
  }

  private async statusBelow(offset: number, length: number): Promise<Extent[]> {
    const below = this.backing ? Math.max(0, Math.min(length, this.backing.size - offset)) : 0;
    const out: Extent[] = [];
    for (let pos = offset; pos < offset + below; ) {
      const extents = await this.backing!.blockStatus({ op: 'blockStatus', offset: pos, length: offset + below - pos, fua: false, noHole: false, fastZero: false, reqOne: false, df: false });
      for (const e of extents) {
        const len = Math.min(e.length, offset + below - pos);
        out.push({ length: len, hole: e.hole, zero: e.zero, depth: e.depth === 0 ? 0 : (e.depth ?? 1) + 1 });
        pos += len;
      }
    }
    // Past the end of a shorter backing file the zeroes count, as QEMU counts
    // them for qemu:allocation-depth, as allocated in that backing layer.
    if (below < length) out.push({ length: length - below, hole: true, zero: true, depth: this.backing ? 2 : 0 });
    return out;
  }

  /** Writes and gives back what still waits for a sync (else it would be leaked), then closes. */
  async close(): Promise<void> {
    try {
      if (this.refcounts) {
        this.closing = true;
        this.wake?.();
        await this.writingBack;
        while (this.waiting()) {
          await this.order.wait();
          await this.meta.run(() => this.settle());
        }
        if (!this.durable.covers(this.writtenAt)) await this.durable.wait();
      }
    } finally {
      await this.backing?.close();
      this.file.close();
      await close(this.fd);
    }
  }

  // --- helpers ------------------------------------------------------------

  /** Calls fn for each guest cluster the range touches, all at once. */
  private async forEachCluster(
    offset: number,
    length: number,
    fn: (gc: number, offset: number, inner: number, length: number) => Promise<void>,
  ): Promise<void> {
    const calls: Promise<void>[] = [];
    for (let pos = offset; pos < offset + length; ) {
      const gc = Math.floor(pos / this.clusterSize);
      const inner = pos - gc * this.clusterSize;
      const n = Math.min(offset + length - pos, this.clusterSize - inner);
      calls.push(fn(gc, pos, inner, n));
      pos += n;
    }
    await Promise.all(calls);
  }
}

/** Whether FD was opened with O_DIRECT (Linux only; elsewhere there is no alignment rule). */
function openedDirect(fd: number): boolean {
  const flag = fs.constants.O_DIRECT;
  if (process.platform !== 'linux' || !flag) return false;
  try {
    const m = /^flags:\s*([0-7]+)/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
    return m !== null && (parseInt(m[1], 8) & flag) !== 0;
  } catch {
    return false;
  }
}

/** The first 2 MiB (the largest cluster) through a plain descriptor: the image's may be O_DIRECT. */
function readHead(path: string): Buffer {
  const fd = fs.openSync(path, 'r');
  try {
    const buf = Buffer.alloc(2 << 20);
    return buf.subarray(0, fs.readSync(fd, buf, 0, buf.length, 0));
  } finally {
    fs.closeSync(fd);
  }
}

/** Joins neighbouring zero segments (data segments stay as they are). */
function mergeZeroes(segments: ReadSegment[]): ReadSegment[] {
  const out: ReadSegment[] = [];
  for (const s of segments.sort((a, b) => a.offset - b.offset)) {
    const last = out[out.length - 1];
    if (last && !last.data && !s.data) last.length += s.length;
    else out.push(s);
  }
  return out;
}
