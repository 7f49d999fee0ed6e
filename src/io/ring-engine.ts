// The engine over a native ring (io_uring or POSIX AIO, see native/).
// Where the ring offers tryRead (io_uring), a read first tries a
// non-blocking preadv2: a page-cache hit is done then and there, for the
// price of one system call, and only misses go through the ring. File
// systems without non-blocking reads (tmpfs, FUSE) say EOPNOTSUPP: such a
// read goes through the ring, and so does every later read on that
// descriptor, since the failed call alone costs ~1.9 µs here (a 4 KiB
// read from tmpfs costs 2.4). A descriptor number reused for another
// file keeps the mark: its reads then take the ring too, which is slower
// for page-cache hits but never wrong. Writes
// into the page cache (`buffered`) are done there and then the same way
// (tryWrite): with RWF_NOWAIT where the file system has it, and where it
// does not (ext4 says EOPNOTSUPP) with a plain pwrite, as the sync engine
// does. io_uring would hand such a write to an io-wq worker thread: three
// times the CPU per 4 KiB write here (18 µs against 6) for the same
// memcpy into the cache; a plain pwrite waits only when the kernel
// throttles dirty pages, and then every way of writing waits.
// Large page-cache transfers (WORKER_SIZE and up) are the exception: they
// go to an io-wq worker at once (IOSQE_ASYNC), so the copy of one 1 MiB
// request runs on another core while the event loop moves the next one
// through the socket (1 MiB sequential writes: 2.8 -> 3.7-4.2 GB/s here).
// Operations get a slot id; at most `slots` are in flight and the rest
// wait in a backlog. Each batch goes to the kernel as soon as it is
// prepared. Gathering a whole tick's batches into one submit costs fewer
// system calls but leaves the device idle while the rest of the tick is
// prepared: at depth 32 with direct I/O it cost a fifth of the IOPS here
// (53k against 62-68k, fio 68k). Operations waiting for a slot go in
// together on the next tick. Completions come
// back in batches through an Int32Array of (id, result) pairs; short
// transfers and EAGAIN go back into the ring for the rest. Each pending
// operation holds its buffer until its completion arrives, so the kernel
// never writes into freed memory.

import { constants } from 'node:os';
import { endOfFile, ioError, type EngineName, type IoEngine, type IoOp, type ReadOp } from './engine.js';
import type { NativeRing, NativeRingClass } from './native.js';
import { readBuffers } from './buffer-pool.js';

const ERRNO_NAMES = new Map(Object.entries(constants.errno).map(([name, n]) => [n as number, name]));
const { EAGAIN, EINTR, EOPNOTSUPP } = constants.errno;
const RETRY = new Set([EAGAIN, EINTR]);

const DONE = Promise.resolve();
/** Page-cache reads and writes this large go to a kernel worker thread. */
export const WORKER_SIZE = 256 << 10;

/** A page-cache transfer large enough to be worth a worker thread. */
function forWorker(op: IoOp): boolean {
  if (op.kind === 'sync' || op.buffer.length < WORKER_SIZE) return false;
  return op.kind === 'read' ? !op.uncached : op.buffered === true;
}

function errnoError(op: IoOp, errno: number): Error {
  const code = ERRNO_NAMES.get(errno) ?? `E${errno}`;
  return ioError(code, `${op.kind} on fd ${op.fd} failed: ${code}`);
}

interface Group {
  left: number;
  error: Error | null;
  resolve: () => void;
  reject: (err: Error) => void;
}

interface Pending {
  op: IoOp;
  done: number;
  group: Group;
}

export class RingEngine implements IoEngine {
  private readonly ring: NativeRing;
  private readonly completions: Int32Array;
  private readonly flush = (): void => {
    this.submitQueued = false;
    this.ring.submit();
  };
  private readonly slots: (Pending | null)[];
  private readonly free: number[];
  private backlog: Pending[] = [];
  private submitQueued = false;
  private closing = false;
  private inflight = 0;
  /** Whether buffered writes may still try RWF_NOWAIT (false once the file system said EOPNOTSUPP). */
  private nowaitWrites = true;
  /** Descriptors whose file system said EOPNOTSUPP to a non-blocking read. */
  private readonly blockingReads = new Set<number>();

  constructor(
    readonly name: EngineName,
    Ring: NativeRingClass,
    slots = 256,
  ) {
    this.completions = new Int32Array(2 * slots);
    this.ring = new Ring(slots, this.completions, (count) => this.onComplete(count));
    this.slots = new Array<Pending | null>(slots).fill(null);
    this.free = Array.from({ length: slots }, (_, i) => slots - 1 - i);
  }

  submit(ops: IoOp[]): Promise<void> {
    if (this.closing) return Promise.reject(ioError('EBADF', `${this.name} engine is closed`));
    // Page-cache hits finish here; only what is left needs a promise of its own.
    let rest: Pending[] | null = null;
    let error: Error | null = null;
    for (const op of ops) {
      const done = op.kind === 'read' ? this.readNow(op) : op.kind === 'write' ? this.writeNow(op) : 0;
      if (done === op) continue;
      if (done instanceof Error) error ??= done;
      else (rest ??= []).push({ op, done: done as number, group: null! });
    }
    if (!rest) return error ? Promise.reject(error) : DONE;
    const waiting = rest;
    return new Promise((resolve, reject) => {
      const group: Group = { left: waiting.length, error, resolve, reject };
      for (const p of waiting) {
        p.group = group;
        this.start(p);
      }
      this.ring.submit();
    });
  }

  /** A page-cache hit, done now (see IoEngine); what is not all there goes through submit, from its start. */
  tryRead(op: ReadOp): boolean {
    if (this.closing) return false;
    const done = this.readNow(op);
    if (done instanceof Error) throw done;
    return done === op;
  }

  /**
   * Tries a read the page cache may hold, without blocking. Returns the
   * operation itself when it is done, an Error when it failed, or how many
   * bytes are already there (0 or more) when the rest must go through the
   * ring.
   */
  private readNow(op: ReadOp): IoOp | Error | number {
    if (op.uncached || !this.ring.tryRead || forWorker(op) || this.blockingReads.has(op.fd)) return 0;
    const result = this.ring.tryRead(op.fd, op.buffer, op.position);
    if (result === op.buffer.length) return op;
    if (result > 0) return result;
    if (result === -EAGAIN || result === -EINTR) return 0;
    if (result === -EOPNOTSUPP) {
      this.blockingReads.add(op.fd);
      return 0;
    }
    return result === 0 ? endOfFile(op.position) : errnoError(op, -result);
  }

  /** Like readNow, for a write into the page cache. */
  private writeNow(op: IoOp & { kind: 'write' }): IoOp | Error | number {
    if (!op.buffered || !this.ring.tryWrite || forWorker(op)) return 0;
    let result = this.ring.tryWrite(op.fd, op.buffer, op.position, this.nowaitWrites);
    if (result === -EOPNOTSUPP && this.nowaitWrites) {
      this.nowaitWrites = false;
      result = this.ring.tryWrite(op.fd, op.buffer, op.position, false);
    }
    if (result === op.buffer.length) return op;
    if (result >= 0 || result === -EAGAIN || result === -EINTR) return Math.max(result, 0);
    return errnoError(op, -result);
  }

  allocate(size: number): Buffer {
    return readBuffers.allocate(size);
  }

  release(buffer: Buffer): void {
    readBuffers.release(buffer);
  }

  /** Operations in the ring or waiting for a slot. */
  get pending(): number {
    return this.inflight + this.backlog.length;
  }

  close(): void {
    this.closing = true;
    if (this.inflight === 0) this.ring.close();
  }

  private start(p: Pending): void {
    if (this.backlog.length > 0 || !this.place(p)) this.backlog.push(p);
  }

  /** Puts an operation into the ring; false when no slot is free. */
  private place(p: Pending): boolean {
    const id = this.free.pop();
    if (id === undefined) return false;
    const { op } = p;
    const prep = (): boolean =>
      op.kind === 'sync'
        ? this.ring.prep(op.dataOnly ? 2 : 3, op.fd, null, 0, id)
        : this.ring.prep(op.kind === 'read' ? 0 : 1, op.fd, p.done ? op.buffer.subarray(p.done) : op.buffer, op.position + p.done, id, forWorker(op));
    if (!prep()) {
      // The ring's queue is full of prepared entries: hand them over now.
      this.ring.submit();
      if (!prep()) {
        this.free.push(id);
        return false;
      }
    }
    this.slots[id] = p;
    this.inflight++;
    return true;
  }

  private queueSubmit(): void {
    if (this.submitQueued) return;
    this.submitQueued = true;
    process.nextTick(this.flush);
  }

  private onComplete(count: number): void {
    const c = this.completions;
    for (let i = 0; i < count; i++) {
      const id = c[2 * i];
      const result = c[2 * i + 1];
      const p = this.slots[id]!;
      this.slots[id] = null;
      this.free.push(id);
      this.inflight--;
      this.settle(p, result);
    }
    while (this.backlog.length > 0 && this.free.length > 0) {
      if (!this.place(this.backlog[0])) break;
      this.backlog.shift();
    }
    if (this.inflight > 0) this.queueSubmit();
    else if (this.closing) this.ring.close();
  }

  private settle(p: Pending, result: number): void {
    const { op } = p;
    if (result < 0) {
      if (RETRY.has(-result)) return this.start(p);
      return this.finish(p, errnoError(op, -result));
    }
    if (op.kind !== 'sync') {
      if (result === 0) {
        const at = op.position + p.done;
        return this.finish(p, op.kind === 'read' ? endOfFile(at) : ioError('EIO', `write at ${at} made no progress`));
      }
      p.done += result;
      if (p.done < op.buffer.length) return this.start(p);
    }
    this.finish(p, null);
  }

  /** The batch settles once every operation in it has, with its first error if any. */
  private finish({ group }: Pending, error: Error | null): void {
    group.error ??= error;
    if (--group.left > 0) return;
    if (group.error) group.reject(group.error);
    else group.resolve();
  }
}
