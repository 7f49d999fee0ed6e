// The extent map of an image and its backing chain, in the terms of
// `qemu-img map --output=json`: for each run, whether any layer has it
// (present), the layer it comes from (depth 0 is the image itself; for a
// run no layer has, the layer where the search ended: one without a
// backing file, or one whose backing file is shorter), and whether it
// reads as zeroes or holds data. Neighbouring runs that agree are joined
// (qemu-img also splits runs where host offsets jump; vblk's map leaves
// offsets out).
//
// The map walks the chain layer by layer rather than asking the top for
// block status: block status answers qemu:allocation-depth, which counts
// the zeroes past a short backing file as allocated there, where qemu-img
// map calls them not present.

import { request, type BlockDevice } from '../types.js';
import { Qcow2Image } from './qcow2/qcow2-image.js';

export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
}

export async function imageMap(image: BlockDevice): Promise<MapEntry[]> {
  const map: MapEntry[] = [];
  const push = (m: MapEntry): void => {
    const last = map[map.length - 1];
    const same = last && last.depth === m.depth && last.present === m.present && last.zero === m.zero && last.data === m.data;
    if (same && last.start + last.length === m.start) last.length += m.length;
    else map.push({ ...m });
  };
  await walk(image, 0, 0, image.size, push);
  return map;
}

/** Maps [start, start + length) of `layer`, which is `depth` below the top, in order. */
async function walk(layer: BlockDevice, depth: number, start: number, length: number, push: (m: MapEntry) => void): Promise<void> {
  const end = start + length;
  if (!(layer instanceof Qcow2Image)) {
    // A raw layer has every byte of its size, as data or as a hole.
    for (let pos = start; pos < end; ) {
      const extents = await layer.blockStatus(request('blockStatus', pos, end - pos));
      for (const e of extents) {
        const n = Math.min(e.length, end - pos);
        push({ start: pos, length: n, depth, present: true, zero: e.zero, data: !e.zero && !e.hole });
        pos += n;
        if (pos >= end) break;
      }
    }
    return;
  }
  const cs = layer.clusterSize;
  for (let pos = start; pos < end; ) {
    const gc = Math.floor(pos / cs);
    const next = Math.min(end, (gc + 1) * cs);
    const e = await layer.lookup(gc);
    if (e.kind !== 'unallocated') {
      const zero = e.kind === 'zero';
      push({ start: pos, length: next - pos, depth, present: true, zero, data: !zero });
      pos = next;
      continue;
    }
    // A run of unallocated clusters goes down to the backing file at once.
    let runEnd = next;
    while (runEnd < end && (await layer.lookup(Math.floor(runEnd / cs))).kind === 'unallocated') runEnd = Math.min(end, runEnd + cs);
    const backing = layer.backing;
    const below = backing ? Math.max(pos, Math.min(runEnd, backing.size)) : pos;
    if (below > pos) await walk(backing!, depth + 1, pos, below - pos, push);
    if (below < runEnd) push({ start: below, length: runEnd - below, depth, present: false, zero: true, data: false });
    pos = runEnd;
  }
}
