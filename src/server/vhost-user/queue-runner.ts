// One running virtqueue of a vhost-user-blk connection. A kick (the
// driver writes the kick eventfd) or, without a kick fd, a poll each turn
// of the event loop pops every available chain; each becomes device
// requests through the export's gateway, which read into and write from
// guest memory directly (the request model's into/from). A request
// completes by writing its status byte and pushing its head to the used
// ring; completions that land in one tick are announced with one call
// eventfd write, and only when the driver wants it (EVENT_IDX or
// NO_INTERRUPT, see virtqueue.ts). Requests run concurrently, within a
// queue and across queues; the gateway orders overlapping ones.
// A chain that cannot be answered, or a ring that cannot be walked,
// leaves the queue stopped until the driver resets it: the spec's "device
// needs reset", signalled on the error eventfd where the driver gave one.

import type { Gateway } from '../../device/gateway.js';
import { toDeviceError } from '../../device/errors.js';
import type { Request } from '../../device/types.js';
import { requireNative, type FdWatch } from '../../io/native.js';
import { blkAction } from '../../protocol/vhost-user/virtio-blk.js';
import type { BlkSettings } from '../../protocol/vhost-user/blk-config.js';
import { virtioStatus } from '../../protocol/vhost-user/status.js';
import { VIRTIO_BLK_S } from '../../protocol/vhost-user/virtio-constants.js';
import type { SplitVirtqueue } from '../../protocol/vhost-user/virtqueue.js';
import { eventfdRead, eventfdWrite } from '../../sys/eventfd.js';
import type { BusyPoll } from '../busy-poll.js';

export interface QueueStats {
  /** Requests answered, by type. */
  requests: Record<string, number>;
  /** Chains answered, by queue index. */
  perQueue: Record<number, number>;
  errors: number;
}

export interface QueueEvents {
  /** The queue stopped for good (device needs reset): why. */
  broken(reason: string): void;
  /** A request failed (for the log at debug). */
  failed(op: string, reason: string): void;
}

export class QueueRunner {
  private kickWatch: FdWatch | null = null;
  private pollTimer: NodeJS.Immediate | null = null;
  private inflight = 0;
  private idleWaiters: (() => void)[] = [];
  private notifyQueued = false;
  private stopped = false;
  private broken = false;

  constructor(
    readonly index: number,
    private readonly vq: SplitVirtqueue,
    private readonly gateway: Gateway,
    private readonly settings: BlkSettings,
    private kickFd: number | null,
    private callFd: number | null,
    private errFd: number | null,
    private readonly stats: QueueStats,
    private readonly events: QueueEvents,
    private readonly busyPoll: BusyPoll | null = null,
  ) {
    this.watchKick();
  }

  get busy(): boolean {
    return this.inflight > 0;
  }

  /** The kick fd changed while the queue runs (the runner does not own fds: the connection does). */
  setKick(fd: number | null): void {
    this.unwatchKick();
    this.kickFd = fd;
    if (!this.stopped) this.watchKick();
  }

  setCall(fd: number | null): void {
    this.callFd = fd;
  }

  setErr(fd: number | null): void {
    this.errFd = fd;
  }

  /** Stops taking chains, waits for those in flight, and says where the ring stopped. */
  async stop(): Promise<number> {
    this.pause();
    await this.whenIdle();
    this.notify();
    return this.vq.lastAvailIdx;
  }

  /** Resolves once no request of this queue is in flight. */
  whenIdle(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Stops taking chains (at shutdown): what is in flight finishes. */
  pause(): void {
    this.stopped = true;
    this.unwatchKick();
  }

  private watchKick(): void {
    if (this.kickFd === null) {
      this.pollTimer = setImmediate(() => this.pollRing());
      return;
    }
    const fd = this.kickFd;
    this.kickWatch = requireNative('vhost-user kick fds').watchFd(fd, (error) => {
      try {
        if (error) throw error;
        eventfdRead(fd);
      } catch (err) {
        return this.fail(`kick descriptor: ${(err as Error).message}`);
      }
      this.drain();
    });
    // Chains made available before the watch began.
    this.drain();
  }

  private unwatchKick(): void {
    this.kickWatch?.stop();
    this.kickWatch = null;
    if (this.pollTimer) clearImmediate(this.pollTimer);
    this.pollTimer = null;
  }

  private pollRing(): void {
    this.pollTimer = null;
    if (this.stopped) return;
    this.drain();
    this.pollTimer = setImmediate(() => this.pollRing());
  }

  /** Pops and starts every available chain. */
  private drain(): void {
    while (!this.stopped && !this.broken) {
      const popped = this.vq.pop();
      if (popped === null) break;
      if (popped.kind === 'broken') return this.fail(popped.reason);
      const action = blkAction(popped, this.settings);
      if (action.kind === 'reset') return this.fail(action.reason);
      if (action.kind === 'complete') {
        // Answered by the model itself: GET_ID, or a request refused as malformed or unsupported.
        if (action.status === VIRTIO_BLK_S.OK) this.count('getId', false);
        else this.stats.errors++;
        if (action.reason) this.events.failed('request', action.reason);
        this.complete(action.head, action.usedLength);
        continue;
      }
      this.inflight++;
      this.busyPoll?.begin();
      void this.run(action.head, action.requests, action.status, action.usedLength);
    }
  }

  private async run(head: number, requests: Request[], status: Buffer, usedLength: number): Promise<void> {
    let code: number = VIRTIO_BLK_S.OK;
    for (const req of requests) {
      this.count(req.op, false);
      try {
        await this.gateway.execute(req);
      } catch (err) {
        const e = toDeviceError(err);
        this.count(req.op, true);
        this.events.failed(req.op, `${e.code}: ${e.message}`);
        code = virtioStatus(e.code);
        break;
      }
    }
    status[0] = code;
    this.complete(head, usedLength);
    this.busyPoll?.end();
    if (--this.inflight === 0) this.idleWaiters.splice(0).forEach((wake) => wake());
  }

  private complete(head: number, usedLength: number): void {
    this.vq.push(head, usedLength);
    this.stats.perQueue[this.index] = (this.stats.perQueue[this.index] ?? 0) + 1;
    if (this.notifyQueued) return;
    this.notifyQueued = true;
    queueMicrotask(() => this.notify());
  }

  /** One call for every completion since the last, if the driver wants it. */
  private notify(): void {
    this.notifyQueued = false;
    if (this.vq.needsNotify() && this.callFd !== null && !this.signal(this.callFd)) this.fail('the call descriptor cannot be written');
    // The driver's next request likely follows its completion: keep the loop awake for its kick.
    this.busyPoll?.touch();
  }

  /** Writes an eventfd the front end gave; false when that fails (not an eventfd, full, closed). */
  private signal(fd: number): boolean {
    try {
      eventfdWrite(fd);
      return true;
    } catch {
      return false;
    }
  }

  private count(op: string, failed: boolean): void {
    if (failed) this.stats.errors++;
    else this.stats.requests[op] = (this.stats.requests[op] ?? 0) + 1;
  }

  private fail(reason: string): void {
    if (this.broken) return;
    this.broken = true;
    this.unwatchKick();
    this.events.broken(reason);
    if (this.errFd !== null) this.signal(this.errFd);
  }
}
