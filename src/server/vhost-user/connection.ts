// One vhost-user-blk connection: a VMM (QEMU, libblkio, ...) on a UNIX
// socket, sharing its guest memory with us. The socket is taken from
// Node's stream (a duplicate descriptor; the stream is destroyed) because
// messages carry file descriptors: each 12-byte header is read on its own
// with recvmsg, so the descriptors that came with it belong to it, then
// its payload. Messages go one at a time through the pure back-end state
// table (protocol/vhost-user/backend.ts); this class is its host: it maps
// the memory regions (memory-table.ts), keeps the kick, call and error
// eventfds, and runs each started ring (queue-runner.ts) against the
// export's gateway, so NBD and vhost-user clients of one image share one
// device. The connection owns every descriptor it is given and closes
// them all when it ends.

import fs from 'node:fs';
import type net from 'node:net';
import type { Logger } from 'pino';
import { requireNative, type FdWatch, type SharedMapping } from '../../io/native.js';
import { VhostUserBackend, type InflightArea, type RingStart, type Step, type VhostUserHost } from '../../protocol/vhost-user/backend.js';
import { blkConfig, blkFeatures, type BlkSettings } from '../../protocol/vhost-user/blk-config.js';
import { requestName } from '../../protocol/vhost-user/constants.js';
import type { GuestRegion } from '../../protocol/vhost-user/memory-table.js';
import { InflightLog, inflightQueueRegionSize } from '../../protocol/vhost-user/inflight.js';
import { decodeHeader, isMalformed, type MessageHeader } from '../../protocol/vhost-user/messages.js';
import { VIRTIO_F } from '../../protocol/vhost-user/virtio-constants.js';
import { ringSizes, SplitVirtqueue } from '../../protocol/vhost-user/virtqueue.js';
import { recvWithFds, sendWithFds } from '../../sys/fd-passing.js';
import { memfdCreate } from '../../sys/memfd.js';
import { duplicateFd } from '../../sys/syscalls.js';
import type { BusyPoll } from '../busy-poll.js';
import type { Connection } from '../connection.js';
import type { ServedExport } from '../exports.js';
import { socketFd } from '../socket-fd.js';
import { MemoryTable } from './memory-table.js';
import { QueueRunner, type QueueStats } from './queue-runner.js';

const HEADER_SIZE = 12;
/** Messages read per readable event: the loop then serves other connections and handles these. */
const READ_BATCH = 64;
/** Messages read and not yet handled before the socket is left unread (a handler may wait for I/O). */
const MAX_QUEUED = 256;
/** SET_MEM_TABLE brings up to 8 region fds, the most any message has. */
const MAX_FDS = 8;

interface QueueFds {
  kick: number | null;
  call: number | null;
  err: number | null;
}

export class VhostUserConnection implements Connection, VhostUserHost {
  private readonly fd: number;
  /** Watches the socket for input; null while the connection has MAX_QUEUED messages waiting. */
  private watch: FdWatch | null;
  private readonly backend: VhostUserBackend;
  private readonly memory = new MemoryTable();
  private readonly runners = new Map<number, QueueRunner>();
  private readonly queueFds: QueueFds[];
  private readonly inflightFds: number[] = [];
  /** The inflight area (INFLIGHT_SHMFD) the front end keeps across back ends, mapped. */
  private inflight: { area: InflightArea; buffer: Buffer; mapping: SharedMapping } | null = null;
  private readonly stats: QueueStats = { requests: {}, perQueue: {}, errors: 0 };
  private readonly opened = Date.now();
  /** Messages read but not yet handled, in order. */
  private readonly incoming: { header: MessageHeader; payload: Buffer; fds: number[] }[] = [];
  /** The message being read. */
  private partial = emptyPartial();
  private handling = false;
  private closed = false;
  private closeReason = 'front end disconnected';

  constructor(
    socket: net.Socket,
    private readonly served: ServedExport,
    private readonly settings: BlkSettings,
    private readonly busyPoll: BusyPoll,
    private readonly log: Logger,
    private readonly onClosed: (conn: VhostUserConnection) => void,
  ) {
    const fd = socketFd(socket);
    if (fd === null) throw new Error('vhost-user: the accepted socket has no descriptor');
    this.fd = duplicateFd(fd);
    socket.destroy();
    this.queueFds = Array.from({ length: settings.numQueues }, () => ({ kick: null, call: null, err: null }));
    this.backend = new VhostUserBackend(this, {
      features: blkFeatures(settings),
      queues: settings.numQueues,
      config: () => blkConfig(settings),
    });
    this.watch = this.watchSocket();
  }

  get busy(): boolean {
    return [...this.runners.values()].some((r) => r.busy);
  }

  start(): void {
    this.log.info({ export: this.served.name, queues: this.settings.numQueues }, 'vhost-user connection opened');
  }

  beginShutdown(): void {
    for (const runner of this.runners.values()) runner.pause();
    if (!this.busy) this.destroy('server shutdown');
  }

  destroy(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.closeReason = reason;
    this.watch?.stop();
    this.watch = null;
    void this.backend.shutdown().finally(() => {
      for (const fd of this.partial.fds) fs.closeSync(fd);
      fs.closeSync(this.fd);
      this.log.info(
        {
          export: this.served.name,
          reason: this.closeReason,
          durationMs: Date.now() - this.opened,
          features: `0x${this.backend.ackedFeatures.toString(16)}`,
          protocolFeatures: `0x${this.backend.ackedProtocolFeatures.toString(16)}`,
          requests: this.stats.requests,
          perQueue: this.stats.perQueue,
          errors: this.stats.errors,
        },
        'vhost-user connection closed',
      );
      this.onClosed(this);
    });
  }

  // --- reading messages ----------------------------------------------------

  private watchSocket(): FdWatch {
    return requireNative('vhost-user').watchFd(this.fd, () => this.readable());
  }

  /**
   * Reads what the socket has, READ_BATCH messages at most (a front end
   * that writes as fast as we read must not hold the event loop), a header
   * with its own recvmsg (so the fds that came with it are its), then its
   * payload; a message that arrives in pieces is finished on the next
   * readable event. With MAX_QUEUED messages waiting to be handled the
   * socket is left unwatched until they are.
   */
  private readable(): void {
    let read = 0;
    while (read < READ_BATCH) {
      const partial = this.partial;
      const target = partial.payload ?? partial.header;
      let got;
      try {
        got = recvWithFds(this.fd, target.subarray(partial.filled), partial.payload || partial.filled > 0 ? 0 : MAX_FDS);
      } catch (err) {
        return this.destroy(`receive failed: ${(err as Error).message}`);
      }
      if (got === null) break;
      if (got.bytes === 0) return this.destroy('front end disconnected');
      partial.fds.push(...got.fds);
      partial.filled += got.bytes;
      if (partial.filled < target.length) continue;
      if (!partial.payload) {
        const decoded = decodeHeader(partial.header);
        if (decoded === null || isMalformed(decoded)) return this.hangUp(`malformed header: ${decoded === null ? 'short' : decoded.malformed}`);
        partial.decoded = decoded;
        partial.payload = Buffer.alloc(decoded.size);
        partial.filled = 0;
        if (decoded.size > 0) continue;
      }
      this.incoming.push({ header: partial.decoded!, payload: partial.payload, fds: partial.fds });
      this.partial = emptyPartial();
      read++;
    }
    if (this.incoming.length >= MAX_QUEUED && this.watch) {
      this.watch.stop();
      this.watch = null;
    }
    void this.handleAll();
  }

  private hangUp(reason: string): void {
    for (const fd of this.partial.fds) fs.closeSync(fd);
    this.partial = emptyPartial();
    this.log.warn({ reason }, 'closing vhost-user connection: protocol violation');
    this.destroy(reason);
  }

  private async handleAll(): Promise<void> {
    if (this.handling) return;
    this.handling = true;
    try {
      let next;
      while (!this.closed && (next = this.incoming.shift())) {
        const step = await this.backend.receive(next.header, next.payload, next.fds);
        this.carryOut(next.header, step);
      }
    } catch (err) {
      // A bug of ours, not the front end's: this connection ends, the server goes on.
      this.log.error({ err }, 'vhost-user connection failed');
      this.destroy(`internal error: ${(err as Error).message}`);
    } finally {
      this.handling = false;
    }
    if (!this.closed) {
      if (!this.watch) this.watch = this.watchSocket();
      return;
    }
    for (const { fds } of this.incoming.splice(0)) for (const fd of fds) fs.closeSync(fd);
  }

  private carryOut(header: MessageHeader, step: Step): void {
    for (const fd of step.close) fs.closeSync(fd);
    const name = requestName(header.request);
    if (step.refused) this.log.warn({ request: name, reason: step.refused }, 'vhost-user request refused');
    else this.log.debug({ request: name }, 'vhost-user request');
    if (step.reply) this.send(step.reply.message, step.reply.fds);
    if (step.disconnect) {
      this.log.warn({ request: name, reason: step.disconnect }, 'closing vhost-user connection');
      this.destroy(step.disconnect);
    }
  }

  /**
   * Replies are small and one at a time: the socket buffer takes them
   * whole unless the front end has left a socket buffer's worth unread,
   * and such a front end is hung up on rather than waited for.
   */
  private send(message: Buffer, fds: number[]): void {
    let sent = 0;
    while (sent < message.length) {
      let n;
      try {
        n = sendWithFds(this.fd, message.subarray(sent), sent === 0 ? fds : []);
      } catch (err) {
        // EPIPE, ECONNRESET: the front end went away with requests still queued.
        return this.destroy(`send failed: ${(err as Error).message}`);
      }
      if (n === 0) return this.destroy('the front end does not read its replies');
      sent += n;
    }
  }

  // --- the host of the state table ------------------------------------------

  /** Resolves once no request of any queue is in flight (old memory may then go). */
  private drained(): Promise<void> {
    return Promise.all([...this.runners.values()].map((r) => r.whenIdle())).then(() => undefined);
  }

  replaceMemory(regions: ReadonlyArray<{ region: GuestRegion; fd: number }>): void {
    this.memory.replace(regions.map(({ region, fd }) => toTableRegion(region, fd)), this.drained());
    this.log.info({ regions: regions.length, bytes: regions.reduce((n, r) => n + r.region.size, 0) }, 'vhost-user memory table');
  }

  addMemory(region: GuestRegion, fd: number): void {
    this.memory.add(toTableRegion(region, fd));
    this.log.debug({ gpa: region.guestAddress, size: region.size }, 'vhost-user memory region added');
  }

  removeMemory(region: GuestRegion): void {
    if (!this.memory.remove({ gpa: region.guestAddress, size: region.size, uva: region.userAddress }, this.drained())) {
      throw new Error(`no region at guest address 0x${region.guestAddress.toString(16)}`);
    }
  }

  setKick(queue: number, fd: number | null): void {
    this.runners.get(queue)?.setKick(fd);
    this.replaceFd(queue, 'kick', fd);
  }

  setCall(queue: number, fd: number | null): void {
    this.runners.get(queue)?.setCall(fd);
    this.replaceFd(queue, 'call', fd);
  }

  setErr(queue: number, fd: number | null): void {
    this.runners.get(queue)?.setErr(fd);
    this.replaceFd(queue, 'err', fd);
  }

  startQueue(queue: number, ring: RingStart): void {
    const sizes = ringSizes(ring.size);
    const view = (gpa: number, length: number, what: string): Buffer => {
      const views = this.memory.map(gpa, length);
      if (!views || views.length !== 1) throw new Error(`the ${what} ring of queue ${queue} is not in one mapped piece`);
      return views[0]!;
    };
    const vq = new SplitVirtqueue({
      size: ring.size,
      desc: view(ring.descriptors, sizes.desc, 'descriptor'),
      avail: view(ring.available, sizes.avail, 'available'),
      used: view(ring.used, sizes.used, 'used'),
      memory: this.memory,
      eventIdx: (ring.features & (1n << BigInt(VIRTIO_F.RING_EVENT_IDX))) !== 0n,
      lastAvailIdx: ring.nextAvail,
      inflight: this.inflightLog(queue, ring.size),
    });
    // Counted before the runner starts popping them.
    const redo = vq.redoing;
    const fds = this.queueFds[queue]!;
    const events = {
      broken: (reason: string) => this.log.error({ queue, reason }, 'vhost-user queue stopped: the device needs reset'),
      failed: (op: string, reason: string) => this.log.debug({ queue, op, reason }, 'vhost-user request failed'),
    };
    this.runners.set(queue, new QueueRunner(queue, vq, this.served.gateway, this.settings, fds.kick, fds.call, fds.err, this.stats, events, this.busyPoll));
    this.log.info({ queue, size: ring.size, eventIdx: vq.eventIdx, nextAvail: vq.lastAvailIdx, redo }, 'vhost-user queue started');
    if (redo > 0) this.log.warn({ queue, requests: redo }, 'vhost-user queue redoes the requests an earlier back end left in flight');
  }

  async stopQueue(queue: number): Promise<number> {
    const runner = this.runners.get(queue);
    if (!runner) return 0;
    this.runners.delete(queue);
    const next = await runner.stop();
    this.log.info({ queue, nextAvail: next }, 'vhost-user queue stopped');
    return next;
  }

  createInflight(area: InflightArea): number {
    const fd = memfdCreate('vblk-inflight');
    this.inflightFds.push(fd);
    fs.ftruncateSync(fd, area.mmapSize);
    this.mapInflight(area, fd);
    return fd;
  }

  setInflight(area: InflightArea, fd: number): void {
    this.inflightFds.push(fd);
    this.mapInflight(area, fd);
  }

  private mapInflight(area: InflightArea, fd: number): void {
    const mapping = requireNative('the vhost-user inflight area').mapShared(fd, area.mmapOffset, area.mmapSize, true);
    this.releaseInflight();
    this.inflight = { area, buffer: Buffer.from(mapping.windows[0]!), mapping };
  }

  /** Unmapped once the requests that may still record in it are done. */
  private releaseInflight(): void {
    const old = this.inflight;
    this.inflight = null;
    if (old) void this.drained().then(() => old.mapping.unmap());
  }

  /** This queue's region of the inflight area, if there is one that fits the ring. */
  private inflightLog(queue: number, size: number): InflightLog | undefined {
    if (!this.inflight) return undefined;
    const { area, buffer } = this.inflight;
    if (queue >= area.numQueues || size > area.queueSize) {
      this.log.warn({ queue, size, area: { queues: area.numQueues, queueSize: area.queueSize } }, 'vhost-user inflight area does not cover this ring: not tracked');
      return undefined;
    }
    const bytes = inflightQueueRegionSize(area.queueSize);
    return new InflightLog(buffer.subarray(queue * bytes, (queue + 1) * bytes), size);
  }

  reset(): void {
    // The table stopped every ring first; anything left is paused and drains before the memory goes.
    for (const runner of this.runners.values()) runner.pause();
    this.memory.clear(this.drained());
    this.runners.clear();
    this.queueFds.forEach((_, queue) => {
      for (const kind of ['kick', 'call', 'err'] as const) this.replaceFd(queue, kind, null);
    });
    this.releaseInflight();
    for (const fd of this.inflightFds.splice(0)) fs.closeSync(fd);
  }

  private replaceFd(queue: number, kind: keyof QueueFds, fd: number | null): void {
    const fds = this.queueFds[queue]!;
    const old = fds[kind];
    fds[kind] = fd;
    if (old !== null && old !== fd) fs.closeSync(old);
  }
}

interface PartialMessage {
  header: Buffer;
  decoded: MessageHeader | null;
  /** Allocated once the header is whole. */
  payload: Buffer | null;
  /** Bytes of the header, then of the payload, read so far. */
  filled: number;
  fds: number[];
}

function emptyPartial(): PartialMessage {
  return { header: Buffer.alloc(HEADER_SIZE), decoded: null, payload: null, filled: 0, fds: [] };
}

function toTableRegion(region: GuestRegion, fd: number) {
  return { gpa: region.guestAddress, size: region.size, uva: region.userAddress, mmapOffset: region.mmapOffset, fd };
}
