// Byte ranges scattered over several Buffers (an "iov"): what a descriptor
// chain is once mapped. The views are live guest memory; these helpers
// slice, gather and scatter without copying more than they are asked to.

/** Views of bytes [start, start + length) of the concatenated views; shorter if the views end first. */
export function sliceViews(views: readonly Buffer[], start: number, length: number): Buffer[] {
  const out: Buffer[] = [];
  let skip = start;
  let left = length;
  for (const v of views) {
    if (left <= 0) break;
    if (skip >= v.length) {
      skip -= v.length;
      continue;
    }
    const take = Math.min(v.length - skip, left);
    out.push(v.subarray(skip, skip + take));
    left -= take;
    skip = 0;
  }
  return out;
}

/** A copy of bytes [start, start + length) of the concatenated views; shorter if the views end first. */
export function gatherViews(views: readonly Buffer[], start: number, length: number): Buffer {
  const parts = sliceViews(views, start, length);
  return parts.length === 1 ? Buffer.from(parts[0]) : Buffer.concat(parts);
}

/** Copies src into the concatenated views from `start` on, as far as they reach; returns the bytes copied. */
export function scatterToViews(views: readonly Buffer[], start: number, src: Buffer): number {
  let copied = 0;
  for (const v of sliceViews(views, start, src.length)) copied += src.copy(v, 0, copied);
  return copied;
}
