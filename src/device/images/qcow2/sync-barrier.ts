// One fdatasync shared by everyone who needs one. A power cut keeps the
// writes of the page cache in any order, so where one qcow2 write must
// reach the disk before another (a refcount before the L2 entry that
// uses the cluster), a sync has to come between them. wait() promises a
// sync that began after the call: one already running may have started
// before the caller's writes, so callers who arrive while it runs share
// the next one, and callers of the same event-loop turn share a sync
// too. Under load syncs run back to back, each covering every request
// that arrived during the one before.
//
// Epochs count the syncs begun. Work that must follow a sync (giving back
// a cluster whose reference was dropped, writing the L1 entry of a new L2
// table) is tagged with the epoch when its prerequisite was written, and
// done by whoever next finds that epoch covered.

export class SyncBarrier {
  private started = 0;
  private completed = 0;
  private running: Promise<void> | null = null;
  private next: Promise<void> | null = null;

  constructor(private readonly sync: () => Promise<void>) {}

  /** Resolves once a sync that began after this call has completed. */
  wait(): Promise<void> {
    this.next ??= this.queue(this.running);
    return this.next;
  }

  /** The tag of writes made now. */
  get epoch(): number {
    return this.started;
  }

  /** Whether writes tagged `epoch` have been through a completed sync. */
  covers(epoch: number): boolean {
    return this.completed > epoch;
  }

  private async queue(previous: Promise<void> | null): Promise<void> {
    if (previous) await previous.catch(() => undefined);
    else await new Promise<void>((resolve) => setImmediate(resolve));
    this.next = null;
    const n = ++this.started;
    const run = this.sync();
    this.running = run;
    try {
      await run;
      this.completed = n;
    } finally {
      if (this.running === run) this.running = null;
    }
  }
}

/**
 * The allocations of one request: each enters before it writes and leaves
 * when its writes are done, and they share one wait() on the barrier,
 * asked when the last of them leaves, so a 1 MiB write costs one sync, not
 * one per cluster. One that failed leaves without waiting.
 */
export class SyncBatch {
  private writing = 0;
  private waiters: { resolve: () => void; reject: (err: unknown) => void }[] = [];

  constructor(private readonly barrier: SyncBarrier) {}

  enter(): void {
    this.writing++;
  }

  /** Resolves after a sync that began once no member was still writing. */
  leave(): Promise<void> {
    const done = new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
    this.depart();
    return done;
  }

  /** Leaves without waiting (the member's writes failed). */
  abandon(): void {
    this.depart();
  }

  private depart(): void {
    if (--this.writing > 0 || this.waiters.length === 0) return;
    const waiters = this.waiters.splice(0);
    this.barrier.wait().then(
      () => waiters.forEach((w) => w.resolve()),
      (err: unknown) => waiters.forEach((w) => w.reject(err)),
    );
  }
}
