// The states a power cut may leave a journaled disk in (dm-log-writes
// replay, CrashMonkey). An entry is certain once durable: a FUA write,
// trim or zero from its own seq on, any entry from the completion of a
// flush that covers it (flush.covers). A cut is taken just before each
// flush completes and at the end of the journal (a cut earlier in the
// same interval leaves a subset of the same possible entries); its state
// is the base image, its certain entries, and any subset of its possible
// ones (logged, not yet durable), applied in seq order. Entries are kept
// or dropped whole: a write is not torn inside itself.

import { prng } from '../seeded-random.js';
import type { DataEntry, JournalEntry } from './codec.js';

export interface Cut {
  /** Where: "before flush seq N completed" or "at the end". */
  label: string;
  /** The seq of the flush the cut is before; null at the end. */
  beforeFlush: number | null;
  certain: DataEntry[];
  possible: DataEntry[];
}

export interface CrashState {
  cut: Cut;
  /** The entries the state holds, in seq order. */
  entries: DataEntry[];
}

/** The cuts of a journal, in order. */
export function cutsOf(entries: readonly JournalEntry[]): Cut[] {
  const logged: DataEntry[] = [];
  const certain = new Set<number>();
  const cuts: Cut[] = [];
  const cut = (label: string, beforeFlush: number | null): Cut => ({
    label,
    beforeFlush,
    certain: logged.filter((e) => certain.has(e.seq)),
    possible: logged.filter((e) => !certain.has(e.seq)),
  });
  for (const e of entries) {
    if (e.type === 'mark') continue;
    if (e.type === 'flush') {
      cuts.push(cut(`before flush seq ${e.seq} completed`, e.seq));
      for (const l of logged) if (l.seq <= e.covers) certain.add(l.seq);
      continue;
    }
    logged.push(e);
    if (e.fua) certain.add(e.seq);
  }
  cuts.push(cut('at the end', null));
  return cuts;
}

/** Every subset of `items` as a bit mask, when there are at most 30. */
function subsetCount(n: number): number {
  return n > 30 ? Infinity : 2 ** n;
}

/**
 * The crash states of `cuts`: every subset of every cut's possible entries
 * when there are at most `max` in all, else `max` states sampled with
 * `seed` (each cut in turn, each possible entry kept with probability 1/2).
 */
export function crashStates(cuts: readonly Cut[], max: number, seed: number): CrashState[] {
  const total = cuts.reduce((sum, c) => sum + subsetCount(c.possible.length), 0);
  const states: CrashState[] = [];
  const state = (cut: Cut, keep: (e: DataEntry, i: number) => boolean): CrashState => ({
    cut,
    entries: [...cut.certain, ...cut.possible.filter(keep)].sort((a, b) => a.seq - b.seq),
  });
  if (total <= max) {
    for (const cut of cuts) for (let mask = 0; mask < subsetCount(cut.possible.length); mask++) states.push(state(cut, (_, i) => (mask & (1 << i)) !== 0));
    return states;
  }
  const random = prng(seed);
  for (let i = 0; i < max; i++) states.push(state(cuts[i % cuts.length], () => random() < 0.5));
  return states;
}
