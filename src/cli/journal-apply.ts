// Applying journal entries to a raw image file, for vblk journal replay
// and crash-states: writes as they are, trims and zeroes as zeroes (what a
// raw file with holes punched reads as).

import { open } from 'node:fs/promises';
import type { DataEntry } from '../device/journal/codec.js';
import { progressLine } from './progress.js';

/** Applies data entries to the raw image at `path` (already a copy of the base). */
export async function applyEntries(path: string, entries: readonly DataEntry[], label?: string): Promise<void> {
  const file = await open(path, 'r+');
  const progress = label ? progressLine(label) : null;
  const total = entries.reduce((n, e) => n + (e.type === 'write' ? e.data.length : e.length), 0);
  let done = 0;
  try {
    const zeroes = Buffer.alloc(1024 * 1024);
    for (const e of entries) {
      if (e.type === 'write') await file.write(e.data, 0, e.data.length, e.offset);
      else for (let pos = e.offset; pos < e.offset + e.length; pos += zeroes.length) await file.write(zeroes, 0, Math.min(zeroes.length, e.offset + e.length - pos), pos);
      done += e.type === 'write' ? e.data.length : e.length;
      progress?.update(done, total);
    }
  } finally {
    progress?.finish();
    await file.close();
  }
}
