// Direct I/O on top of any engine. Reads passed on are marked uncached
// (their descriptor bypasses the page cache). Files opened O_DIRECT (Linux) need
// buffer address, file offset and length all aligned (4096 is safe on
// every device); clients send what they like. Aligned operations pass
// straight through. An unaligned read reads the aligned blocks around it
// into a pooled aligned buffer and copies out. An unaligned write is a
// read-modify-write of the aligned blocks around it, and every write takes
// its blocks exclusively in an OverlapQueue, so two writes into the same
// block (each to different bytes) cannot undo each other.

import { settleAll, type IoEngine, type IoOp } from './engine.js';
import type { BufferPool } from './buffer-pool.js';
import { OverlapQueue } from './overlap-queue.js';

type Transfer = Extract<IoOp, { buffer: Buffer }>;


export class DirectIo implements IoEngine {
  private readonly blocks = new OverlapQueue();
  private readonly a: number;

  constructor(
    private readonly inner: IoEngine,
    private readonly pool: BufferPool,
    private readonly addressModulo: (buffer: Buffer, n: number) => number,
  ) {
    this.a = pool.alignment;
  }

  get name(): IoEngine['name'] {
    return this.inner.name;
  }

  submit(ops: IoOp[]): Promise<void> {
    if (ops.every((op) => this.passes(op))) return this.inner.submit(ops);
    const direct: IoOp[] = [];
    const bounced: Promise<void>[] = [];
    for (const op of ops) {
      if (this.passes(op)) direct.push(op);
      else bounced.push(op.kind === 'read' ? this.bounceRead(op) : this.write(op as Transfer));
    }
    return settleAll([this.inner.submit(direct), ...bounced]);
  }

  /** Syncs and aligned reads go through as they are (reads marked uncached). */
  private passes(op: IoOp): boolean {
    if (op.kind === 'sync') return true;
    if (op.kind !== 'read' || !this.aligned(op)) return false;
    op.uncached = true;
    return true;
  }

  allocate(size: number): Buffer {
    return this.pool.allocate(size);
  }

  release(buffer: Buffer): void {
    this.pool.release(buffer);
  }

  close(): void {
    this.inner.close();
  }

  private aligned(op: Transfer): boolean {
    const a = this.a;
    if (op.position % a !== 0 || op.buffer.length % a !== 0) return false;
    const { buffer } = op;
    // The pool's own buffers are known to be aligned; ask the addon about others.
    return (buffer.byteOffset % a === 0 && this.pool.owns(buffer)) || this.addressModulo(buffer, a) === 0;
  }

  /** The aligned span around an operation. */
  private span(op: Transfer): { start: number; length: number } {
    const start = op.position - (op.position % this.a);
    const end = Math.ceil((op.position + op.buffer.length) / this.a) * this.a;
    return { start, length: end - start };
  }

  private async bounceRead(op: Transfer): Promise<void> {
    const { start, length } = this.span(op);
    const bounce = this.pool.take(length);
    try {
      await this.inner.submit([{ kind: 'read', fd: op.fd, buffer: bounce, position: start, uncached: true }]);
      bounce.copy(op.buffer, 0, op.position - start, op.position - start + op.buffer.length);
    } finally {
      this.pool.give(bounce);
    }
  }

  private async write(op: Transfer): Promise<void> {
    const { start, length } = this.span(op);
    const admitted = this.blocks.acquire(start, length, true);
    const ticket = admitted instanceof Promise ? await admitted : admitted;
    try {
      if (this.aligned(op)) return await this.inner.submit([op]);
      const bounce = this.pool.take(length);
      try {
        const partial = op.position !== start || op.buffer.length !== length;
        if (partial) await this.inner.submit([{ kind: 'read', fd: op.fd, buffer: bounce, position: start, uncached: true }]);
        op.buffer.copy(bounce, op.position - start);
        await this.inner.submit([{ kind: 'write', fd: op.fd, buffer: bounce, position: start }]);
      } finally {
        this.pool.give(bounce);
      }
    } finally {
      this.blocks.release(ticket);
    }
  }
}
