// The extent map of an image and its backing chain, in the terms of
// `qemu-img map --output=json`: for each run, the layer it comes from
// (depth 0 is the image itself), whether any layer has it (present), and
// whether it reads as zeroes or holds data. Neighbouring runs that agree
// are joined (qemu-img also splits runs where host offsets jump; vblk's
// map leaves offsets out).

import { request, type BlockDevice, type Extent } from '../types.js';

export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
}

export function mapEntry(start: number, e: Extent): MapEntry {
  const depth = e.depth ?? 1;
  if (depth === 0) return { start, length: e.length, depth: 0, present: false, zero: true, data: false };
  return { start, length: e.length, depth: depth - 1, present: true, zero: e.zero, data: !e.zero && !e.hole };
}

export async function imageMap(image: BlockDevice): Promise<MapEntry[]> {
  const map: MapEntry[] = [];
  for (let pos = 0; pos < image.size; ) {
    for (const e of await image.blockStatus(request('blockStatus', pos, image.size - pos))) {
      const m = mapEntry(pos, e);
      const last = map[map.length - 1];
      const same = last && last.depth === m.depth && last.present === m.present && last.zero === m.zero && last.data === m.data;
      if (same) last.length += m.length;
      else map.push(m);
      pos += e.length;
    }
  }
  return map;
}
