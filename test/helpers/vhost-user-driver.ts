// A vhost-user-blk front end in TypeScript for tests and benchmarks: it
// plays the VMM and the guest's virtio-blk driver at once, against any
// back end (vblk serve --vhost-user-blk, qemu-storage-daemon).
//
// Guest memory is one memfd mapped here (the native addon's mapShared)
// and shared as one or more regions, each a slice of the file, with a
// hole between regions in guest-physical space (as below 4 GiB on a PC)
// and made-up user addresses well apart from the guest-physical ones, so
// a back end that mixes the two up is caught. A request's buffers never
// cross a region (libvhost-user counts a buffer split across regions as
// two descriptors, and calls an indirect table "looped" when the count
// passes its length). Negotiation follows QEMU's
// order (SET_OWNER, features, protocol features with REPLY_ACK, MQ,
// CONFIG and CONFIGURE_MEM_SLOTS, queue count, config space, memory by
// SET_MEM_TABLE or ADD_MEM_REG, then per ring NUM, BASE, ADDR, CALL,
// ERR, KICK, ENABLE), and every message that asks for an ack has it
// checked. Each ring's driver side is test/helpers/virtio-guest.ts's
// VirtioGuestQueue; requests take their buffers from a GuestHeap and
// are published in a microtask, so requests issued together share one
// kick (when the back end wants kicks at all: NO_NOTIFY or avail_event).
// Completions arrive on the call eventfd or, when asked, by polling the
// used ring each turn of the event loop.
//
// A back end that goes wrong gives Errors, not hangs: replies time out
// (vhost-user-channel.ts); a write to a ring's error eventfd (vblk's
// "device needs reset") fails that ring's requests with ERR_QUEUE_BROKEN,
// a hang-up fails all of them with ERR_CONNECTION_CLOSED.
//
// The raw side for hostile tests: `memory`, `heap` and `ring(q)` place
// any descriptor table, indirect table or avail entry in guest memory,
// `submitRaw` offers a head and reports what became of it, and `channel`
// sends any vhost-user message, with or without descriptors.

import fs from 'node:fs';
import { requireNative, type FdWatch, type SharedMapping } from '../../src/io/native.js';
import { PROTOCOL_F, REQ, VIRTIO_F as TRANSPORT_F, bit } from '../../src/protocol/vhost-user/constants.js';
import {
  decodeConfig,
  decodeU64,
  encodeConfig,
  encodeMemoryTable,
  encodeSingleRegion,
  encodeU64,
  encodeVringAddress,
  encodeVringFile,
  encodeVringState,
  isMalformed,
  type MemoryRegion,
} from '../../src/protocol/vhost-user/messages.js';
import {
  VIRTIO_BLK_DWZ_SEGMENT_SIZE,
  VIRTIO_BLK_F,
  VIRTIO_BLK_HEADER_SIZE,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_T,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
  VIRTIO_F,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_USED_F_NO_NOTIFY,
} from '../../src/protocol/vhost-user/virtio-constants.js';
import { vringNeedEvent } from '../../src/protocol/vhost-user/virtqueue.js';
import { eventfd, eventfdRead, eventfdWrite } from '../../src/sys/eventfd.js';
import { memfdCreate } from '../../src/sys/memfd.js';
import { VhostUserChannel, type Reply } from './vhost-user-channel.js';
import { BufferGuestMemory, GuestAllocator, GuestHeap, VirtioGuestQueue, type BufferSpec } from './virtio-guest.js';

export interface DriverOptions {
  /** Guest memory (one memfd), at most 1024; default 64. */
  memoryMiB?: number;
  /** Regions the memory is shared as (equal slices); default 1. */
  regions?: number;
  /** SET_MEM_TABLE (default) or one ADD_MEM_REG per region (needs CONFIGURE_MEM_SLOTS). */
  memoryMessages?: 'table' | 'add';
  numQueues?: number;
  /** Ring size, a power of two; default 128. */
  queueSize?: number;
  /** Use RING_INDIRECT_DESC if offered: each request then takes one ring descriptor. */
  indirect?: boolean;
  /** Use RING_EVENT_IDX if offered. */
  eventIdx?: boolean;
  /** The exact virtio features to ack instead of choosing them (hostile tests). */
  features?: bigint;
  /** 'call' (default): completions on the call eventfd; 'poll': read the used ring each turn of the event loop, no call fd. */
  completions?: 'call' | 'poll';
  /** How long a vhost-user reply may take; default 10 s. */
  timeoutMs?: number;
}

/** The parts of struct virtio_blk_config the driver reads (bytes, not sectors, for the capacity). */
export interface BlkConfig {
  capacity: number;
  sizeMax: number;
  segMax: number;
  blkSize: number;
  numQueues: number;
  maxDiscardSectors: number;
  maxDiscardSeg: number;
  maxWriteZeroesSectors: number;
  maxWriteZeroesSeg: number;
  writeZeroesMayUnmap: boolean;
}

export interface Completion {
  /** The status byte (VIRTIO_BLK_S_*). */
  status: number;
  /** The device-writable data before the status byte (IN, GET_ID). */
  data: Buffer;
  /** The length the device put in the used element. */
  usedLength: number;
}

export type RawOutcome =
  | { kind: 'used'; usedLength: number }
  | { kind: 'broken' }
  | { kind: 'closed' }
  | { kind: 'timeout' };

export interface BlkRequest {
  type: number;
  sector?: bigint | number;
  /** Device-readable bytes after the header. */
  out?: Buffer;
  /** Device-writable bytes before the status byte. */
  inLength?: number;
}

export class DriverError extends Error {
  override readonly name = 'DriverError';
  constructor(
    readonly code: 'ERR_QUEUE_BROKEN' | 'ERR_CONNECTION_CLOSED' | 'ERR_DRIVER_CLOSED',
    message: string,
  ) {
    super(message);
  }
}

interface Pending {
  done(usedLength: number): void;
  fail(err: DriverError): void;
}

interface DriverQueue {
  index: number;
  ring: VirtioGuestQueue;
  kick: number;
  call: number | null;
  err: number;
  watches: FdWatch[];
  pending: Map<number, Pending>;
  /** Requests waiting for free descriptors or guest memory. */
  roomWaiters: (() => void)[];
  publishQueued: boolean;
  pollTimer: NodeJS.Immediate | null;
  broken: DriverError | null;
}

const MiB = 1 << 20;
/** Front-end "virtual" addresses: far from the guest-physical ones, with a gap between regions. */
const USER_BASE = 0x7f00_0000_0000;
const USER_GAP = 0x1000_0000;
/** The hole between regions in guest-physical space. */
const GUEST_GAP = 0x100_0000;
/** The classic struct virtio_blk_config up to write_zeroes_may_unmap and its padding. */
const CONFIG_READ = 60;
/** Header, out data, in data, status: the most buffers a request has. */
const MAX_BUFFERS = 4;

const BLK_FEATURES = [
  VIRTIO_BLK_F.SIZE_MAX,
  VIRTIO_BLK_F.SEG_MAX,
  VIRTIO_BLK_F.RO,
  VIRTIO_BLK_F.BLK_SIZE,
  VIRTIO_BLK_F.FLUSH,
  VIRTIO_BLK_F.TOPOLOGY,
  VIRTIO_BLK_F.MQ,
  VIRTIO_BLK_F.DISCARD,
  VIRTIO_BLK_F.WRITE_ZEROES,
].reduce((all, n) => all | bit(n), 0n);

const WANTED_PROTOCOL = [PROTOCOL_F.REPLY_ACK, PROTOCOL_F.MQ, PROTOCOL_F.CONFIG, PROTOCOL_F.CONFIGURE_MEM_SLOTS].reduce(
  (all, n) => all | bit(n),
  0n,
);

function u64(reply: Reply, what: string): bigint {
  const value = decodeU64(reply.payload);
  if (isMalformed(value)) throw new Error(`vhost-user: the reply to ${what} is malformed: ${value.malformed}`);
  return value;
}

function closeQuietly(fd: number | null): void {
  if (fd === null) return;
  try {
    fs.closeSync(fd);
  } catch {
    // already closed
  }
}

export class VhostUserDriver {
  readonly memory: BufferGuestMemory;
  readonly heap: GuestHeap;
  /** The virtio features acked. */
  features = 0n;
  protocolFeatures = 0n;
  config: BlkConfig | null = null;
  /** Queues the back end has (GET_QUEUE_NUM, 1 without MQ). */
  backendQueues = 1;
  readonly regions: MemoryRegion[];
  /** The memfd behind guest memory (hostile tests share it in messages of their own). */
  readonly memfd: number;
  private readonly mapping: SharedMapping;
  private readonly queues: DriverQueue[] = [];
  private readonly options: Required<Omit<DriverOptions, 'features'>> & { features?: bigint };
  private closed = false;

  private constructor(
    readonly channel: VhostUserChannel,
    options: DriverOptions,
  ) {
    this.options = {
      memoryMiB: 64,
      regions: 1,
      memoryMessages: 'table',
      numQueues: 1,
      queueSize: 128,
      indirect: false,
      eventIdx: false,
      completions: 'call',
      timeoutMs: 10_000,
      ...options,
    };
    const { memoryMiB, regions } = this.options;
    if (memoryMiB < 1 || memoryMiB > 1024 || (memoryMiB * MiB) % regions !== 0 || ((memoryMiB * MiB) / regions) % 4096 !== 0) {
      throw new RangeError(`${memoryMiB} MiB of guest memory cannot be ${regions} page-aligned regions (1 to 1024 MiB)`);
    }
    const size = memoryMiB * MiB;
    this.memfd = memfdCreate('vblk-test-guest');
    fs.ftruncateSync(this.memfd, size);
    this.mapping = requireNative('the vhost-user test driver').mapShared(this.memfd, 0, size, true);
    const whole = Buffer.from(this.mapping.windows[0]!);
    const regionSize = size / regions;
    const gpa = (i: number) => i * (regionSize + GUEST_GAP);
    this.memory = new BufferGuestMemory(
      Array.from({ length: regions }, (_, i) => ({ gpa: gpa(i), buffer: whole.subarray(i * regionSize, (i + 1) * regionSize) })),
    );
    this.regions = Array.from({ length: regions }, (_, i) => ({
      guestAddress: BigInt(gpa(i)),
      size: BigInt(regionSize),
      userAddress: BigInt(USER_BASE + i * (regionSize + USER_GAP)),
      mmapOffset: BigInt(i * regionSize),
    }));
    // Rings (and indirect tables) first, in the first region; the rest is the heap.
    const rings = new GuestAllocator(0, regionSize);
    const { numQueues, queueSize } = this.options;
    const layouts = Array.from({ length: numQueues }, () =>
      VirtioGuestQueue.layout(this.memory, rings, queueSize, { indirectEntries: this.options.indirect ? MAX_BUFFERS : 0 }),
    );
    this.heap = new GuestHeap(
      Array.from({ length: regions }, (_, i): [number, number] => [i === 0 ? Math.ceil(rings.top / 4096) * 4096 : gpa(i), gpa(i) + regionSize]),
    );
    for (const [index, ring] of layouts.entries()) {
      this.queues.push({
        index,
        ring,
        kick: eventfd(),
        call: this.options.completions === 'call' ? eventfd() : null,
        err: eventfd(),
        watches: [],
        pending: new Map(),
        roomWaiters: [],
        publishQueued: false,
        pollTimer: null,
        broken: null,
      });
    }
    channel.onClose(() => this.lost(new DriverError('ERR_CONNECTION_CLOSED', 'vhost-user: the back end closed the connection')));
  }

  /** Connects and sets up every ring; on any failure everything is released and the error thrown. */
  static async connect(socketPath: string, options: DriverOptions = {}): Promise<VhostUserDriver> {
    const channel = await VhostUserChannel.connect(socketPath, options.timeoutMs);
    let driver: VhostUserDriver;
    try {
      driver = new VhostUserDriver(channel, options);
    } catch (err) {
      channel.close();
      throw err;
    }
    try {
      await driver.setUp();
    } catch (err) {
      await driver.close().catch(() => undefined);
      throw err;
    }
    return driver;
  }

  get numQueues(): number {
    return this.queues.length;
  }

  has(feature: number): boolean {
    return (this.features & bit(feature)) !== 0n;
  }

  get replyAck(): boolean {
    return (this.protocolFeatures & bit(PROTOCOL_F.REPLY_ACK)) !== 0n;
  }

  /** A message that has no reply of its own: acked and checked under REPLY_ACK, else just sent. */
  async message(request: number, payload: Buffer = Buffer.alloc(0), fds: number[] = []): Promise<void> {
    if (this.replyAck) await this.channel.acked(request, payload, fds);
    else await this.channel.post(request, payload, { fds });
  }

  /** The user (front-end virtual) address of guest-physical `gpa`. */
  userAddress(gpa: number): bigint {
    const r = this.regions.find((r) => BigInt(gpa) >= r.guestAddress && BigInt(gpa) < r.guestAddress + r.size);
    if (!r) throw new RangeError(`guest address ${gpa} is in no region`);
    return r.userAddress + (BigInt(gpa) - r.guestAddress);
  }

  private async setUp(): Promise<void> {
    const ch = this.channel;
    const o = this.options;
    await ch.post(REQ.SET_OWNER);
    const offered = u64(await ch.call(REQ.GET_FEATURES), 'GET_FEATURES');
    if (!(offered & bit(VIRTIO_F.VERSION_1))) throw new Error(`vhost-user: the back end does not offer VERSION_1 (features 0x${offered.toString(16)})`);
    if (offered & bit(TRANSPORT_F.PROTOCOL_FEATURES)) {
      const protocol = u64(await ch.call(REQ.GET_PROTOCOL_FEATURES), 'GET_PROTOCOL_FEATURES');
      this.protocolFeatures = protocol & WANTED_PROTOCOL;
      await ch.post(REQ.SET_PROTOCOL_FEATURES, encodeU64(this.protocolFeatures));
    }
    const negotiated = (f: number) => (this.protocolFeatures & bit(f)) !== 0n;
    if (negotiated(PROTOCOL_F.MQ)) this.backendQueues = Number(u64(await ch.call(REQ.GET_QUEUE_NUM), 'GET_QUEUE_NUM'));
    if (o.numQueues > this.backendQueues) throw new Error(`vhost-user: ${o.numQueues} queues wanted, the back end has ${this.backendQueues}`);
    if (!negotiated(PROTOCOL_F.CONFIG)) throw new Error('vhost-user: the back end does not offer CONFIG, so the capacity is unknown');
    this.config = await this.readConfig();

    let features = bit(VIRTIO_F.VERSION_1) | (offered & (BLK_FEATURES | bit(TRANSPORT_F.PROTOCOL_FEATURES)));
    if (o.indirect) features |= offered & bit(VIRTIO_F.RING_INDIRECT_DESC);
    if (o.eventIdx) features |= offered & bit(VIRTIO_F.RING_EVENT_IDX);
    this.features = o.features ?? features;
    await this.message(REQ.SET_FEATURES, encodeU64(this.features));

    if (o.memoryMessages === 'add') {
      if (!negotiated(PROTOCOL_F.CONFIGURE_MEM_SLOTS)) throw new Error('vhost-user: ADD_MEM_REG without CONFIGURE_MEM_SLOTS');
      const slots = u64(await ch.call(REQ.GET_MAX_MEM_SLOTS), 'GET_MAX_MEM_SLOTS');
      if (slots < BigInt(this.regions.length)) throw new Error(`vhost-user: ${this.regions.length} regions, the back end has ${slots} slots`);
      for (const r of this.regions) await this.message(REQ.ADD_MEM_REG, encodeSingleRegion(r), [this.memfd]);
    } else {
      await this.message(REQ.SET_MEM_TABLE, encodeMemoryTable(this.regions), this.regions.map(() => this.memfd));
    }
    for (const q of this.queues) await this.startQueue(q);
  }

  private async readConfig(): Promise<BlkConfig> {
    const reply = await this.channel.call(REQ.GET_CONFIG, encodeConfig({ offset: 0, flags: 0, data: Buffer.alloc(CONFIG_READ) }));
    const access = decodeConfig(reply.payload);
    if (isMalformed(access)) throw new Error(`vhost-user: GET_CONFIG failed: ${reply.payload.length ? access.malformed : 'empty reply'}`);
    if (access.data.length !== CONFIG_READ) throw new Error(`vhost-user: GET_CONFIG answered ${access.data.length} bytes, not ${CONFIG_READ}`);
    const c = access.data;
    return {
      capacity: Number(c.readBigUInt64LE(0)) * 512,
      sizeMax: c.readUInt32LE(8),
      segMax: c.readUInt32LE(12),
      blkSize: c.readUInt32LE(20),
      numQueues: c.readUInt16LE(34),
      maxDiscardSectors: c.readUInt32LE(36),
      maxDiscardSeg: c.readUInt32LE(40),
      maxWriteZeroesSectors: c.readUInt32LE(48),
      maxWriteZeroesSeg: c.readUInt32LE(52),
      writeZeroesMayUnmap: c.readUInt8(56) !== 0,
    };
  }

  private async startQueue(q: DriverQueue): Promise<void> {
    const { index, ring } = q;
    const state = (num: number) => encodeVringState({ index, num });
    await this.message(REQ.SET_VRING_NUM, state(ring.size));
    await this.message(REQ.SET_VRING_BASE, state(0));
    await this.message(
      REQ.SET_VRING_ADDR,
      encodeVringAddress({
        index,
        flags: 0,
        descriptor: this.userAddress(ring.rings.desc),
        used: this.userAddress(ring.rings.used),
        available: this.userAddress(ring.rings.avail),
        log: 0n,
      }),
    );
    if (q.call === null) {
      if (!this.has(VIRTIO_F.RING_EVENT_IDX)) ring.availFlags = VIRTQ_AVAIL_F_NO_INTERRUPT;
      await this.message(REQ.SET_VRING_CALL, encodeVringFile({ index, noFd: true }));
    } else {
      const call = q.call;
      q.watches.push(
        requireNative('the vhost-user test driver').watchFd(call, () => {
          eventfdRead(call);
          this.reap(q);
        }),
      );
      await this.message(REQ.SET_VRING_CALL, encodeVringFile({ index, noFd: false }), [call]);
    }
    q.watches.push(
      requireNative('the vhost-user test driver').watchFd(q.err, () => {
        eventfdRead(q.err);
        this.breakQueue(q);
      }),
    );
    await this.message(REQ.SET_VRING_ERR, encodeVringFile({ index, noFd: false }), [q.err]);
    await this.message(REQ.SET_VRING_KICK, encodeVringFile({ index, noFd: false }), [q.kick]);
    if (this.has(TRANSPORT_F.PROTOCOL_FEATURES)) await this.message(REQ.SET_VRING_ENABLE, state(1));
  }

  // --- virtio-blk requests ---------------------------------------------------

  read(queue: number, sector: number, length: number): Promise<Completion> {
    return this.request(queue, { type: VIRTIO_BLK_T.IN, sector, inLength: length });
  }

  write(queue: number, sector: number, data: Buffer): Promise<Completion> {
    return this.request(queue, { type: VIRTIO_BLK_T.OUT, sector, out: data });
  }

  flush(queue: number): Promise<Completion> {
    return this.request(queue, { type: VIRTIO_BLK_T.FLUSH });
  }

  discard(queue: number, sector: number, sectors: number): Promise<Completion> {
    return this.request(queue, { type: VIRTIO_BLK_T.DISCARD, out: segment(sector, sectors, 0) });
  }

  writeZeroes(queue: number, sector: number, sectors: number, unmap = false): Promise<Completion> {
    const flags = unmap ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0;
    return this.request(queue, { type: VIRTIO_BLK_T.WRITE_ZEROES, out: segment(sector, sectors, flags) });
  }

  getId(queue: number): Promise<Completion> {
    return this.request(queue, { type: VIRTIO_BLK_T.GET_ID, inLength: VIRTIO_BLK_ID_BYTES });
  }

  /** Any request: header, `out` (device-readable), `inLength` bytes device-writable, the status byte. */
  async request(queue: number, r: BlkRequest): Promise<Completion> {
    const q = this.queue(queue);
    const outLength = r.out?.length ?? 0;
    const inLength = r.inLength ?? 0;
    const total = VIRTIO_BLK_HEADER_SIZE + outLength + inLength + 1;
    const buffersNeeded = 2 + (outLength > 0 ? 1 : 0) + (inLength > 0 ? 1 : 0);
    const indirect = this.has(VIRTIO_F.RING_INDIRECT_DESC);
    let gpa: number | null;
    while ((gpa = this.room(q, indirect ? 1 : buffersNeeded, total)) === null) await new Promise<void>((wake) => q.roomWaiters.push(wake));
    const header = Buffer.alloc(VIRTIO_BLK_HEADER_SIZE);
    header.writeUInt32LE(r.type, 0);
    header.writeBigUInt64LE(BigInt(r.sector ?? 0), 8);
    this.memory.write(gpa, header);
    if (r.out) this.memory.write(gpa + VIRTIO_BLK_HEADER_SIZE, r.out);
    const inAt = gpa + VIRTIO_BLK_HEADER_SIZE + outLength;
    const statusAt = gpa + total - 1;
    // Heap memory is reused: what the device does not write reads as zeros, the status as 0xff.
    this.memory.view(inAt, inLength).fill(0);
    this.memory.write(statusAt, Buffer.from([0xff]));
    const buffers: BufferSpec[] = [{ gpa, length: VIRTIO_BLK_HEADER_SIZE, writable: false }];
    if (outLength > 0) buffers.push({ gpa: gpa + VIRTIO_BLK_HEADER_SIZE, length: outLength, writable: false });
    if (inLength > 0) buffers.push({ gpa: inAt, length: inLength, writable: true });
    buffers.push({ gpa: statusAt, length: 1, writable: true });
    const head = q.ring.addChain(buffers, { indirect });
    const bufferGpa = gpa;
    return new Promise<Completion>((resolve, reject) => {
      q.pending.set(head, {
        done: (usedLength) => {
          const status = this.memory.read(statusAt, 1)[0]!;
          const data = this.memory.read(inAt, inLength);
          this.heap.release(bufferGpa);
          resolve({ status, data, usedLength });
        },
        // The buffers stay allocated: a back end that broke may still write them.
        fail: reject,
      });
      this.schedulePublish(q);
    });
  }

  /** Guest memory for a request, once the ring has `descriptors` free; null to wait for completions. */
  private room(q: DriverQueue, descriptors: number, bytes: number): number | null {
    if (q.broken) throw q.broken;
    if (this.closed) throw new DriverError('ERR_DRIVER_CLOSED', 'vhost-user: the driver is closed');
    if (q.ring.freeDescriptors < descriptors) {
      if (q.pending.size === 0) throw new RangeError(`a request needs ${descriptors} descriptors, the ring has ${q.ring.size}`);
      return null;
    }
    const gpa = this.heap.alloc(bytes, 16);
    if (gpa === null && q.pending.size === 0) throw new RangeError(`no ${bytes} bytes of guest memory for a request`);
    return gpa;
  }

  // --- the raw side, for hostile tests ----------------------------------------

  /** The driver side of ring `queue` (its descriptor table, avail ring, used ring). */
  ring(queue: number): VirtioGuestQueue {
    return this.queue(queue).ring;
  }

  /**
   * Offers `head` in the next avail entry (the descriptors are the
   * caller's to place), publishes and kicks; resolves with what came of
   * it: a used element for that head, the ring broken (error eventfd),
   * the connection closed, or nothing within `timeoutMs`.
   */
  submitRaw(queue: number, head: number, timeoutMs = this.options.timeoutMs): Promise<RawOutcome> {
    const q = this.queue(queue);
    if (q.broken) return Promise.resolve({ kind: 'broken' });
    if (this.channel.closedBy) return Promise.resolve({ kind: 'closed' });
    q.ring.offer(head);
    return new Promise<RawOutcome>((resolve) => {
      const timer = setTimeout(() => {
        q.pending.delete(head);
        resolve({ kind: 'timeout' });
      }, timeoutMs);
      q.pending.set(head, {
        done: (usedLength) => {
          clearTimeout(timer);
          resolve({ kind: 'used', usedLength });
        },
        fail: (err) => {
          clearTimeout(timer);
          resolve({ kind: err.code === 'ERR_QUEUE_BROKEN' ? 'broken' : 'closed' });
        },
      });
      this.schedulePublish(q);
    });
  }

  // --- rings at work -----------------------------------------------------------

  private queue(index: number): DriverQueue {
    const q = this.queues[index];
    if (!q) throw new RangeError(`queue ${index}: the driver set up ${this.queues.length}`);
    return q;
  }

  private schedulePublish(q: DriverQueue): void {
    if (this.options.completions === 'poll' && q.pollTimer === null) q.pollTimer = setImmediate(() => this.poll(q));
    if (q.publishQueued) return;
    q.publishQueued = true;
    queueMicrotask(() => {
      q.publishQueued = false;
      if (this.closed || q.broken) return;
      const old = q.ring.publishedIdx;
      q.ring.publish();
      const now = q.ring.publishedIdx;
      if (old === now) return;
      // The idx store above and the loads below are sequentially consistent (Atomics): no notification is missed.
      const notify = this.has(VIRTIO_F.RING_EVENT_IDX)
        ? vringNeedEvent(q.ring.availEvent, now, old)
        : (q.ring.usedFlags & VIRTQ_USED_F_NO_NOTIFY) === 0;
      if (notify) eventfdWrite(q.kick);
    });
  }

  private poll(q: DriverQueue): void {
    q.pollTimer = null;
    this.reap(q);
    if (q.pending.size > 0 && !this.closed && !q.broken) q.pollTimer = setImmediate(() => this.poll(q));
  }

  /** Completes every used element; with EVENT_IDX asks to be called for the next one. */
  private reap(q: DriverQueue): void {
    if (this.closed) return;
    for (;;) {
      for (const el of q.ring.takeUsed()) {
        const p = q.pending.get(el.id);
        if (!p) continue;
        q.pending.delete(el.id);
        p.done(el.len);
      }
      if (this.has(VIRTIO_F.RING_EVENT_IDX)) q.ring.usedEvent = q.ring.lastUsedIdx;
      if (q.ring.usedIdx === q.ring.lastUsedIdx) break;
    }
    for (const wake of q.roomWaiters.splice(0)) wake();
  }

  private breakQueue(q: DriverQueue): void {
    if (q.broken) return;
    this.reap(q);
    q.broken = new DriverError('ERR_QUEUE_BROKEN', `vhost-user: queue ${q.index} needs reset (the back end wrote its error eventfd)`);
    this.failAll(q, q.broken);
  }

  private lost(err: DriverError): void {
    for (const q of this.queues) {
      this.reap(q);
      q.broken ??= err;
      this.failAll(q, err);
    }
  }

  private failAll(q: DriverQueue, err: DriverError): void {
    const pending = [...q.pending.values()];
    q.pending.clear();
    for (const p of pending) p.fail(err);
    for (const wake of q.roomWaiters.splice(0)) wake();
  }

  /**
   * Stops every ring (GET_VRING_BASE, which waits for the back end's
   * requests in flight) unless the connection is gone, then releases
   * the socket, the eventfds and the memory. Requests still pending fail
   * with ERR_DRIVER_CLOSED. Throws the first error a reply gave, after
   * releasing everything.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    let failure: unknown = null;
    if (!this.channel.closedBy) {
      for (const q of this.queues) {
        try {
          await this.channel.call(REQ.GET_VRING_BASE, encodeVringState({ index: q.index, num: 0 }));
        } catch (err) {
          if (!this.channel.closedBy) failure ??= err;
        }
      }
    }
    for (const q of this.queues) this.reap(q);
    this.closed = true;
    this.channel.close();
    const gone = new DriverError('ERR_DRIVER_CLOSED', 'vhost-user: the driver is closed');
    for (const q of this.queues) {
      for (const w of q.watches) w.stop();
      if (q.pollTimer) clearImmediate(q.pollTimer);
      this.failAll(q, gone);
      for (const fd of [q.kick, q.call, q.err]) closeQuietly(fd);
    }
    closeQuietly(this.memfd);
    this.mapping.unmap();
    if (failure) throw failure;
  }
}

/** One DISCARD / WRITE_ZEROES segment: u64 sector, u32 sectors, u32 flags. */
function segment(sector: number, sectors: number, flags: number): Buffer {
  const b = Buffer.alloc(VIRTIO_BLK_DWZ_SEGMENT_SIZE);
  b.writeBigUInt64LE(BigInt(sector), 0);
  b.writeUInt32LE(sectors, 8);
  b.writeUInt32LE(flags, 12);
  return b;
}
