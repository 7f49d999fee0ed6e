// Read data as segments with its zero blocks left out. A structured
// reply may describe any range that reads as zeroes with an OFFSET_HOLE
// chunk instead of sending it, whether or not the file has a hole there,
// so checking what was read is both cheaper than asking the file system
// where its holes are (two lseek calls per read) and finds more: blocks
// that were written with zeroes too. Only whole aligned blocks count, so
// a reply never splits into many tiny chunks; random data costs one byte
// comparison per block.

import type { ReadSegment } from './types.js';

export const ZERO_BLOCK = 4096;
const ZEROES = Buffer.alloc(ZERO_BLOCK);

function isZero(data: Buffer, start: number): boolean {
  return data[start] === 0 && data.subarray(start, start + ZERO_BLOCK).equals(ZEROES);
}

/** `data` (read at `offset`) as data segments and holes (data null) for its aligned all-zero blocks. */
export function withoutZeroBlocks(offset: number, data: Buffer): ReadSegment[] {
  const segments: ReadSegment[] = [];
  let runStart = 0;
  let runHole = false;
  const close = (end: number): void => {
    if (end > runStart) {
      segments.push({ offset: offset + runStart, length: end - runStart, data: runHole ? null : data.subarray(runStart, end) });
    }
    runStart = end;
  };
  // Block boundaries are aligned to the device, not to the buffer.
  let pos = (ZERO_BLOCK - (offset % ZERO_BLOCK)) % ZERO_BLOCK;
  for (; pos + ZERO_BLOCK <= data.length; pos += ZERO_BLOCK) {
    const zero = isZero(data, pos);
    if (zero !== runHole) {
      close(pos);
      runHole = zero;
    }
  }
  if (runHole) close(pos);
  runHole = false;
  close(data.length);
  return segments;
}
