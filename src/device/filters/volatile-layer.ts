// The volatile layer of the power-cut filter: the writes, trims and zero
// writes since the last FLUSH, as a disk's write-back cache holds them, in
// the order they came. Pure: no device, no I/O. Each request keeps its
// whole range and data, less the parts a later FUA (or write-through)
// request has made durable on the device: those must never be written
// back over the newer bytes. Reads see the requests in order on top of
// the device (read-your-writes); a pending trim reads as zeroes, as it
// does on the memory and raw images. What a write-back or a cut writes
// down is flattened first (newest bytes win), so each byte is written
// once. Lookups scan the requests in order: simple, and a lab's layer
// holds thousands of requests, not millions.

export type PendingOp = 'write' | 'zero' | 'trim';

/** A byte range [start, end). */
export interface Span {
  start: number;
  end: number;
}

export interface Pending {
  seq: number;
  op: PendingOp;
  offset: number;
  length: number;
  /** A write's bytes (a copy: the client may reuse its buffer), for [offset, offset + length). */
  data?: Buffer;
  /** The parts not yet superseded by a durable request, in order. */
  live: Span[];
  /** Memory it holds, counted against the layer's bound. */
  cost: number;
}

/** A part of a pending request: its op, and its bytes for a write. */
export interface Piece {
  op: PendingOp;
  offset: number;
  length: number;
  data?: Buffer;
}

/** Bookkeeping per request, so a flood of tiny trims is bounded too. */
export const REQUEST_COST = 256;

export class VolatileLayer {
  private pending: Pending[] = [];
  private nextSeq = 1;
  private held = 0;

  /** Requests held. */
  get requests(): number {
    return this.pending.length;
  }

  /** Memory held: data plus REQUEST_COST a request. */
  get cost(): number {
    return this.held;
  }

  /** The sequence number of the newest request, 0 before any. */
  get lastSeq(): number {
    return this.nextSeq - 1;
  }

  /** Adds a request; `data` must be the layer's own copy. */
  add(op: PendingOp, offset: number, length: number, data?: Buffer): Pending {
    const p: Pending = { seq: this.nextSeq++, op, offset, length, data, live: [{ start: offset, end: offset + length }], cost: (data?.length ?? 0) + REQUEST_COST };
    this.pending.push(p);
    this.held += p.cost;
    return p;
  }

  /** The requests up to `seq` (all by default), oldest first. */
  upTo(seq = Infinity): Pending[] {
    return this.pending.filter((p) => p.seq <= seq);
  }

  oldest(): Pending | undefined {
    return this.pending[0];
  }

  /** Forgets requests: written down or dropped. */
  remove(gone: readonly Pending[]): void {
    if (gone.length === 0) return;
    const set = new Set(gone);
    this.pending = this.pending.filter((p) => {
      if (!set.has(p)) return true;
      this.held -= p.cost;
      return false;
    });
  }

  /** [offset, offset + length) is now durable on the device with newer bytes: no older request may write there again. */
  supersede(offset: number, length: number): void {
    const cut = { start: offset, end: offset + length };
    const emptied: Pending[] = [];
    for (const p of this.pending) {
      if (p.offset >= cut.end || p.offset + p.length <= cut.start) continue;
      p.live = subtract(p.live, cut);
      if (p.live.length === 0) emptied.push(p);
    }
    this.remove(emptied);
  }

  /** The pieces of pending requests over [offset, offset + length), oldest first: apply them in order over the device's bytes. */
  overlay(offset: number, length: number): Piece[] {
    const pieces: Piece[] = [];
    for (const p of this.pending) for (const s of p.live) pushClipped(pieces, p, s, offset, offset + length);
    return pieces;
  }
}

/** `spans` less `cut`. */
function subtract(spans: Span[], cut: Span): Span[] {
  const out: Span[] = [];
  for (const s of spans) {
    if (s.end <= cut.start || s.start >= cut.end) out.push(s);
    else {
      if (s.start < cut.start) out.push({ start: s.start, end: cut.start });
      if (s.end > cut.end) out.push({ start: cut.end, end: s.end });
    }
  }
  return out;
}

/** The part of `p` in span `s` that lies in [from, to), if any. */
function pushClipped(pieces: Piece[], p: Pending, s: Span, from: number, to: number): void {
  const start = Math.max(s.start, from);
  const end = Math.min(s.end, to);
  if (start >= end) return;
  pieces.push({ op: p.op, offset: start, length: end - start, data: p.data?.subarray(start - p.offset, end - p.offset) });
}

/** The piece `p` of a pending request, cut to [start, end). */
export function pieceOf(p: Pending, start: number, end: number): Piece {
  const pieces: Piece[] = [];
  pushClipped(pieces, p, { start, end }, start, end);
  return pieces[0];
}

/** Applies pieces in order onto `target`, which holds the bytes at `offset`; trims and zeroes become zeroes. */
export function applyPieces(target: Buffer, offset: number, pieces: readonly Piece[]): void {
  for (const piece of pieces) {
    const at = piece.offset - offset;
    if (piece.data) piece.data.copy(target, at);
    else target.fill(0, at, at + piece.length);
  }
}

/**
 * Pieces applied in order, flattened: the newest wins each byte, the
 * result sorted by offset and not overlapping, for writing down once. A
 * sweep over the pieces' edges with the newest covering piece on top of a
 * heap: n log n, as a full layer of small requests needs.
 */
export function flatten(pieces: readonly Piece[]): Piece[] {
  const edges = [...new Set(pieces.flatMap((p) => [p.offset, p.offset + p.length]))].sort((a, b) => a - b);
  const byStart = pieces.map((_, i) => i).sort((a, b) => pieces[a].offset - pieces[b].offset || a - b);
  const active = new MaxHeap();
  const flat: Piece[] = [];
  let lastWinner = -1;
  let next = 0;
  for (let k = 0; k + 1 < edges.length; k++) {
    const lo = edges[k];
    const hi = edges[k + 1];
    while (next < byStart.length && pieces[byStart[next]].offset <= lo) active.push(byStart[next++]);
    while (active.size > 0 && pieces[active.top()].offset + pieces[active.top()].length <= lo) active.pop();
    if (active.size === 0) {
      lastWinner = -1;
      continue;
    }
    const winner = active.top();
    const last = flat.at(-1);
    if (winner === lastWinner && last && last.offset + last.length === lo) flat[flat.length - 1] = slice(pieces[winner], last.offset, hi);
    else flat.push(slice(pieces[winner], lo, hi));
    lastWinner = winner;
  }
  return flat;
}

/** A binary max-heap of numbers. */
class MaxHeap {
  private readonly items: number[] = [];

  get size(): number {
    return this.items.length;
  }

  top(): number {
    return this.items[0];
  }

  push(n: number): void {
    const a = this.items;
    a.push(n);
    for (let i = a.length - 1; i > 0; ) {
      const parent = (i - 1) >> 1;
      if (a[parent] >= a[i]) break;
      [a[parent], a[i]] = [a[i], a[parent]];
      i = parent;
    }
  }

  pop(): void {
    const a = this.items;
    const last = a.pop()!;
    if (a.length === 0) return;
    a[0] = last;
    for (let i = 0; ; ) {
      const l = 2 * i + 1;
      const r = l + 1;
      let big = i;
      if (l < a.length && a[l] > a[big]) big = l;
      if (r < a.length && a[r] > a[big]) big = r;
      if (big === i) break;
      [a[big], a[i]] = [a[i], a[big]];
      i = big;
    }
  }
}

function slice(p: Piece, start: number, end: number): Piece {
  return { op: p.op, offset: start, length: end - start, data: p.data?.subarray(start - p.offset, end - p.offset) };
}

export type CutPolicy = 'all' | 'random' | 'torn';

/** A power cut's sector: torn requests survive in parts of this size (aligned on the disk). */
export const SECTOR = 512;

export interface Counts {
  requests: number;
  bytes: number;
}

export interface Survivors {
  /** What survives, oldest first. */
  pieces: Piece[];
  unflushed: Counts;
  kept: Counts;
  /** Requests of which some sectors survive and some not (torn). */
  torn: number;
}

/**
 * What a cut keeps of `pending` (oldest first): nothing (all); each whole
 * request with probability 1/2 (random); each sector of each request with
 * probability 1/2 (torn). `random` draws in request order, then sector
 * order, so the same requests and seed keep the same pieces.
 */
export function survivors(pending: readonly Pending[], policy: CutPolicy, random: () => number): Survivors {
  const result: Survivors = { pieces: [], unflushed: { requests: 0, bytes: 0 }, kept: { requests: 0, bytes: 0 }, torn: 0 };
  for (const p of pending) {
    const bytes = p.live.reduce((n, s) => n + s.end - s.start, 0);
    result.unflushed.requests++;
    result.unflushed.bytes += bytes;
    let kept: Piece[] = [];
    if (policy === 'random' && random() < 0.5) kept = p.live.map((s) => pieceOf(p, s.start, s.end));
    if (policy === 'torn') {
      for (const s of p.live) {
        for (let at = s.start; at < s.end; ) {
          const end = Math.min(s.end, (Math.floor(at / SECTOR) + 1) * SECTOR);
          if (random() < 0.5) kept.push(pieceOf(p, at, end));
          at = end;
        }
      }
    }
    const keptBytes = kept.reduce((n, piece) => n + piece.length, 0);
    if (keptBytes > 0) result.kept.requests++;
    if (keptBytes > 0 && keptBytes < bytes) result.torn++;
    result.kept.bytes += keptBytes;
    result.pieces.push(...kept);
  }
  return result;
}
