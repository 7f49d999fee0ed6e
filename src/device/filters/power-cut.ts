// The power-cut filter: a disk with a volatile write-back cache over the
// next device. Writes, trims and zero writes since the last FLUSH wait in
// a volatile layer (volatile-layer.ts) that reads see; a FUA request goes
// to the device at once and supersedes the cached bytes under it; FLUSH
// writes the layer down and flushes the device; when the layer holds
// max-dirty bytes the oldest requests are written back first, as a disk's
// cache would. cut() is the power loss: the layer is dropped by a policy
// (all; a seeded random subset of whole requests; torn sectors) and
// serving goes on with an empty one.
//
// Everything that writes to the device from the filter (FUA and
// write-through requests, write-backs, flushes, cuts) takes one lane, in
// turn, so a write-back can never land over a newer FUA write. A request
// leaves the layer only once its bytes are on the device, and a read takes
// the overlay when it starts, so it never sees a gap between the two. A
// cut waits for what holds the lane (a flush, FUA write or write-back
// under way), then drops what the layer holds at that moment: requests
// acknowledged later (or waiting for the lane) come after the power is
// back. Guest buffers (writeFrom) are copied: the guest may reuse them.

import { Mutex } from '../mutex.js';
import { prng } from '../seeded-random.js';
import { request, scatterSegments, type BlockDevice, type Capabilities, type Extent, type ReadSegment, type Request } from '../types.js';
import { writeZeroes } from '../write-zeroes.js';
import { Passthrough } from './passthrough.js';
import { applyPieces, flatten, REQUEST_COST, survivors, VolatileLayer, type CutPolicy, type Pending, type PendingOp, type Piece } from './volatile-layer.js';

export type { CutPolicy } from './volatile-layer.js';

export interface PowerCutConfig {
  /** Policy of a cut that names none. */
  policy: CutPolicy;
  /** Seed of a cut that names none (null: a new one each cut, reported). */
  seed: number | null;
  /** Bound on the layer's memory; past it the oldest requests are written back. */
  maxDirty: number;
}

export interface CutReport {
  policy: CutPolicy;
  seed: number;
  unflushed: { requests: number; bytes: number };
  kept: { requests: number; bytes: number };
  dropped: { requests: number; bytes: number };
  /** Requests of which some sectors were kept and some dropped (counted as kept). */
  torn: number;
}

export interface PowerCutStats {
  /** Requests and bytes (of their ranges) in the volatile layer. */
  unflushed: { requests: number; bytes: number };
  /** Memory the layer holds, and its bound. */
  dirty: number;
  maxDirty: number;
  /** Bytes written back early because the layer was full. */
  writtenBack: number;
  cuts: number;
  /** false after configure(null): every request goes straight to the device. */
  caching: boolean;
}

export class PowerCutFilter extends Passthrough {
  readonly filterName = 'power-cut';
  private readonly caps: Capabilities;
  private readonly layer = new VolatileLayer();
  private readonly lane = new Mutex();
  private config: PowerCutConfig | null = null;
  private writtenBack = 0;
  private cuts = 0;

  constructor(next: BlockDevice, config: PowerCutConfig) {
    super(next);
    // The layer is what a flush persists, so flush means something even over a memory disk.
    this.caps = { ...next.capabilities, flush: true };
    this.configure(config);
  }

  override get capabilities(): Capabilities {
    return this.caps;
  }

  /** New defaults and bound; null: cache nothing more (what is cached still waits for a flush). */
  configure(config: PowerCutConfig | null): void {
    this.config = config;
  }

  override get description(): string {
    return `${this.next.description}, power-cut filter`;
  }

  stats(): PowerCutStats {
    const pending = this.layer.upTo();
    return {
      unflushed: { requests: pending.length, bytes: pending.reduce((n, p) => n + p.live.reduce((m, s) => m + s.end - s.start, 0), 0) },
      dirty: this.layer.cost,
      maxDirty: this.config?.maxDirty ?? 0,
      writtenBack: this.writtenBack,
      cuts: this.cuts,
      caching: this.config !== null,
    };
  }

  /** The power loss: drops the volatile layer by `policy` (the configured one by default), keeps the survivors on the device. */
  cut(options: { policy?: CutPolicy; seed?: number } = {}): Promise<CutReport> {
    return this.lane.run(async () => {
      const policy = options.policy ?? this.config?.policy ?? 'all';
      const seed = options.seed ?? this.config?.seed ?? Math.floor(Math.random() * 2 ** 32);
      const pending = this.layer.upTo();
      const kept = survivors(pending, policy, prng(seed));
      // Survivors reach the device before the layer forgets anything: a read meanwhile still sees the old state whole.
      await this.writeDown(flatten(kept.pieces));
      this.layer.remove(pending);
      this.cuts++;
      const dropped = { requests: kept.unflushed.requests - kept.kept.requests, bytes: kept.unflushed.bytes - kept.kept.bytes };
      return { policy, seed, unflushed: kept.unflushed, kept: kept.kept, dropped, torn: kept.torn };
    });
  }

  override async read(req: Request): Promise<ReadSegment[]> {
    const pieces = this.layer.overlay(req.offset, req.length);
    const segments = await this.next.read(req);
    if (pieces.length === 0) return segments;
    const data = Buffer.alloc(req.length);
    scatterSegments(req.offset, [data], segments);
    for (const s of segments) if (s.data) this.next.recycle?.(s.data);
    applyPieces(data, req.offset, pieces);
    return [{ offset: req.offset, length: req.length, data }];
  }

  protected override async readIntoNext(req: Request, into: Buffer[]): Promise<void> {
    const pieces = this.layer.overlay(req.offset, req.length);
    await this.next.readInto!(req, into);
    let at = req.offset;
    for (const target of into) {
      applyPieces(target, at, clip(pieces, at, at + target.length));
      at += target.length;
    }
  }

  override write(req: Request): Promise<void> {
    return this.store(req, [req.data!]);
  }

  protected override writeFromNext(req: Request, from: Buffer[]): Promise<void> {
    return this.store(req, from);
  }

  private async store(req: Request, from: Buffer[]): Promise<void> {
    if (this.passesThrough(req)) {
      return this.durably(req, () => (req.from && this.next.writeFrom ? this.next.writeFrom(req, from) : this.next.write({ ...req, data: from.length === 1 ? from[0] : Buffer.concat(from, req.length) })));
    }
    await this.hold('write', req, Buffer.concat(from, req.length));
  }

  override async trim(req: Request): Promise<void> {
    if (this.passesThrough(req)) return this.durably(req, () => this.next.trim(req));
    await this.hold('trim', req);
  }

  override async writeZeroes(req: Request): Promise<void> {
    if (this.passesThrough(req)) return this.durably(req, () => this.next.writeZeroes(req));
    await this.hold('zero', req);
  }

  override flush(): Promise<void> {
    // Covers what was acknowledged before it came: the requests up to now.
    const upTo = this.layer.lastSeq;
    return this.lane.run(async () => {
      await this.writeBack(this.layer.upTo(upTo));
      await this.next.flush();
    });
  }

  override async blockStatus(req: Request): Promise<Extent[]> {
    // Cached ranges are data whatever the device says; the whole answer then says data (always a safe one).
    if (this.layer.overlay(req.offset, req.length).length > 0) return [{ length: req.length, hole: false, zero: false }];
    return this.next.blockStatus(req);
  }

  override async close(): Promise<void> {
    // A clean shutdown: the disk writes its cache down first.
    await this.lane.run(() => this.writeBack(this.layer.upTo()));
    await this.next.close();
  }

  /** FUA, caching off, or larger than the whole layer may hold: straight to the device. */
  private passesThrough(req: Request): boolean {
    return req.fua || this.config === null || req.length > this.config.maxDirty;
  }

  /** Runs a request on the device in the lane; the cached bytes under it are then superseded. */
  private durably(req: Request, run: () => Promise<void>): Promise<void> {
    return this.lane.run(async () => {
      await run();
      this.layer.supersede(req.offset, req.length);
    });
  }

  /** Adds a request to the layer, first writing back the oldest while it would not fit. */
  private async hold(op: PendingOp, req: Request, data?: Buffer): Promise<void> {
    const cost = (data?.length ?? 0) + REQUEST_COST;
    const fits = (): boolean => this.config === null || this.layer.cost + cost <= this.config.maxDirty || this.layer.requests === 0;
    if (!fits()) {
      await this.lane.run(async () => {
        while (!fits()) {
          const oldest = this.layer.oldest()!;
          await this.writeBack([oldest]);
          this.writtenBack += oldest.data?.length ?? 0;
        }
      });
    }
    this.layer.add(op, req.offset, req.length, data);
  }

  /** Writes pending requests down in order (flattened), then forgets them. Only in the lane. */
  private async writeBack(pending: Pending[]): Promise<void> {
    if (pending.length === 0) return;
    await this.writeDown(flatten(pending.flatMap((p) => p.live.map((s) => ({ op: p.op, offset: s.start, length: s.end - s.start, data: p.data?.subarray(s.start - p.offset, s.end - p.offset) })))));
    this.layer.remove(pending);
  }

  /** Writes non-overlapping pieces to the device. */
  private async writeDown(pieces: Piece[]): Promise<void> {
    await Promise.all(pieces.map((p) => this.put(p)));
  }

  private put(p: Piece): Promise<void> {
    if (p.op === 'write') return this.next.write(request('write', p.offset, p.length, { data: p.data }));
    if (p.op === 'trim') return this.next.trim(request('trim', p.offset, p.length));
    return writeZeroes(this.next, request('writeZeroes', p.offset, p.length));
  }
}

/** The pieces cut to [from, to). */
function clip(pieces: Piece[], from: number, to: number): Piece[] {
  const out: Piece[] = [];
  for (const p of pieces) {
    const start = Math.max(p.offset, from);
    const end = Math.min(p.offset + p.length, to);
    if (start < end) out.push({ op: p.op, offset: start, length: end - start, data: p.data?.subarray(start - p.offset, end - p.offset) });
  }
  return out;
}
