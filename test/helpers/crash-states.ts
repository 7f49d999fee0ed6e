// The states a power cut can leave a file in, from a log of its writes
// and syncs (write-recorder.ts). A write is certain to be on disk once a
// sync that began after the write completed has itself completed; any
// other write that had been submitted may or may not be there, and the
// page cache writes back pages in any order. So a cut is taken just
// before each sync completes (a cut earlier in the same interval leaves a
// subset of the same possible writes) and at the end of the log; a state
// of a cut is the starting file, then its certain writes in log order,
// then any subset of its possible writes, cut into 4 KiB pages, in any
// order. Writes within one page are not torn.

import type { Recorded } from './write-recorder.js';

const PAGE = 4096;

export interface Write {
  id: number;
  offset: number;
  data: Buffer;
}

export interface Cut {
  /** Where in the log: which sync was about to complete, or the end. */
  label: string;
  certain: Write[];
  possible: Write[];
}

export function cutsOf(log: Recorded[]): Cut[] {
  const started: Write[] = [];
  const certain = new Set<number>();
  /** Completed writes no sync has made certain yet. */
  const completed = new Set<number>();
  /** What each sync in flight covers: the writes completed before it began. */
  const covers = new Map<number, number[]>();
  const cuts: Cut[] = [];
  const cut = (label: string): Cut => ({
    label,
    certain: started.filter((w) => certain.has(w.id)),
    possible: started.filter((w) => !certain.has(w.id)),
  });
  let syncs = 0;
  for (const e of log) {
    if (e.kind === 'write') started.push({ id: e.id, offset: e.offset, data: e.data });
    else if (e.kind === 'written') completed.add(e.id);
    else if (e.kind === 'sync') covers.set(e.id, [...completed]);
    else {
      cuts.push(cut(`before sync ${++syncs} completed`));
      for (const id of covers.get(e.id) ?? []) {
        certain.add(id);
        completed.delete(id);
      }
      covers.delete(e.id);
    }
  }
  cuts.push(cut('at the end'));
  return cuts;
}

/** Applies writes to a copy of `base`, growing it as a file grows. */
export function applied(base: Buffer, writes: Write[]): Buffer {
  const end = writes.reduce((max, w) => Math.max(max, w.offset + w.data.length), base.length);
  const out = Buffer.alloc(end);
  base.copy(out);
  for (const w of writes) w.data.copy(out, w.offset);
  return out;
}

/** The pieces of a write that fall in separate pages. */
function pages(w: Write): Write[] {
  const out: Write[] = [];
  for (let pos = w.offset; pos < w.offset + w.data.length; ) {
    const end = Math.min(w.offset + w.data.length, (Math.floor(pos / PAGE) + 1) * PAGE);
    out.push({ id: w.id, offset: pos, data: w.data.subarray(pos - w.offset, end - w.offset) });
    pos = end;
  }
  return out;
}

/**
 * One state of `cut`: each page of each possible write kept with
 * probability `keep`, the kept ones applied in a random order.
 */
export function crashState(base: Buffer, cut: Cut, keep: number, random: () => number): Buffer {
  const kept = cut.possible.flatMap(pages).filter(() => random() < keep);
  for (let i = kept.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [kept[i], kept[j]] = [kept[j], kept[i]];
  }
  return applied(base, [...cut.certain, ...kept]);
}
