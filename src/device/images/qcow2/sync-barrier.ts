// One fdatasync shared by everyone who needs one. A power cut keeps the
// writes of the page cache in any order, so where one qcow2 write must
// reach the disk before another (a refcount before the L2 entry that
// uses the cluster), a sync has to come between them. wait() promises a
// sync that began after the call: one already running may have started
// before the caller's writes, so callers who arrive while it runs share
// the next one, and callers of the same event-loop turn share a sync
// too (FLUSH requests, the image's background write-back).
//
// Epochs count the syncs begun. Work that must follow a sync (an L2 entry
// after its cluster's data and refcount, giving back a cluster whose
// reference was dropped) is tagged with the epoch when its prerequisite
// was written, and done by whoever next finds that epoch covered.

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

  /** How many syncs have completed (in order). */
  get done(): number {
    return this.completed;
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
