// Incoming socket bytes, kept as the chunks they arrived in. Frames are
// taken off the front: a frame inside one chunk comes back as a view of
// it (no copy), a frame that spans chunks is copied once into a buffer of
// exactly its size. Nothing is ever concatenated, so a 32 MiB write
// payload arriving in 64 KiB reads costs one copy, not a quadratic one.

export class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0; // bytes already consumed from chunks[0]
  private total = 0;

  get length(): number {
    return this.total;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /** Removes and returns the next n bytes, or null if fewer are queued. */
  take(n: number): Buffer | null {
    if (n > this.total) return null;
    const first = this.chunks[0];
    if (first && first.length - this.head >= n) {
      const view = first.subarray(this.head, this.head + n);
      this.consume(n);
      return view;
    }
    const out = Buffer.allocUnsafe(n);
    this.copyInto(out, 0, n);
    return out;
  }

  /** Moves up to `max` queued bytes into target at offset; returns how many. */
  copyInto(target: Buffer, offset: number, max: number): number {
    const n = Math.min(max, this.total);
    let done = 0;
    while (done < n) {
      const first = this.chunks[0];
      const m = Math.min(n - done, first.length - this.head);
      first.copy(target, offset + done, this.head, this.head + m);
      done += m;
      this.consume(m);
    }
    return n;
  }

  /** Drops up to n bytes; returns how many were dropped. */
  skip(n: number): number {
    const m = Math.min(n, this.total);
    let left = m;
    while (left > 0) {
      const first = this.chunks[0];
      const k = Math.min(left, first.length - this.head);
      this.consume(k);
      left -= k;
    }
    return m;
  }

  private consume(n: number): void {
    this.head += n;
    this.total -= n;
    if (this.head === this.chunks[0].length) {
      this.chunks.shift();
      this.head = 0;
    }
  }
}
