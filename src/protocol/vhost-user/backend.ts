// The vhost-user back end as a state table: one handler per request in
// RULES (requests.ts), fed one decoded message (header, payload, received fds) at a time
// by the server, answering with what to send, which received fds to close
// and whether to hang up. Every side effect (mapping memory, watching
// kick fds, running a queue) goes through the injected VhostUserHost, so
// the table itself does no I/O and every transition is unit-tested.
//
// Errors. A request is refused when its payload is malformed, its fds are
// missing or too many, a ring index is out of range, it comes before
// SET_OWNER or before the protocol feature it needs, or its values make
// no sense (see the handlers). A refusal is answered when the protocol
// gives a way to: GET_CONFIG with an empty payload (the spec's error
// form); any other request with a u64 ack of 1 when REPLY_ACK is
// negotiated and it carries NEED_REPLY. Otherwise the connection is
// closed: the front end either waits for a reply we cannot make
// (GET_VRING_BASE, GET_INFLIGHT_FD, ...) or would go on believing in state
// we never set up, and either way would hang. Unknown and unsupported
// requests (logging, postcopy, IOTLB, in-band notifications, ...) follow
// the same rule. Harmless slips are not refusals: fds sent with a request
// that takes none are closed and the request goes on, and REM_MEM_REG may
// bring the one fd the spec tolerates. Malformed headers (version, size)
// never reach the table: decodeHeader says so and the server hangs up.
//
// Rings. A ring is started by SET_VRING_KICK (with an fd, or the no-fd
// flag for polling), which needs its size and addresses first, and is
// stopped by GET_VRING_BASE. It runs (host.startQueue) while it is
// started, enabled (always so when VHOST_USER_F_PROTOCOL_FEATURES was not
// acked; else by SET_VRING_ENABLE 1) and its three parts lie in mapped
// memory. Memory can change under a live ring (QEMU replaces regions by
// REM_MEM_REG then ADD_MEM_REG): rings the new table would move or
// uncover are stopped before the host changes any mapping, and start
// again once their memory is back. The host gets guest-physical ring
// addresses, translated here from the front end's user addresses, so the
// virtqueue reads them through GuestMemory like any descriptor.
//
// SET_STATUS only records the status for GET_STATUS: QEMU 7.2 sends
// SET_STATUS 0 before it disables the rings and asks for their bases, so
// it must not reset anything. RESET_OWNER (deprecated) stops every ring,
// as the spec recommends, and keeps memory and ring settings.

import { FLAG_NEED_REPLY, PROTOCOL_F, VIRTIO_F, bit, requestName } from './constants.js';
import { type MessageHeader, type VringAddress, encodeReply, encodeU64 } from './messages.js';
import { type GuestRegion, userToGuest } from './memory-table.js';
import { Incoming, type Outcome, RULES, type Rule, refuse } from './requests.js';

/** What the table needs to know about the device behind it. */
export interface VirtioDeviceDescription {
  /**
   * The device-type feature bits it offers (VIRTIO_BLK_F_* for a disk,
   * including RO for a read-only one). The table adds VERSION_1,
   * RING_INDIRECT_DESC, RING_EVENT_IDX and VHOST_USER_F_PROTOCOL_FEATURES.
   */
  features: bigint;
  /** Its number of virtqueues (GET_QUEUE_NUM; ring indexes run below it). */
  queues: number;
  /** The config space as it reads now. Bytes past its end read as zero. */
  config(): Buffer;
  /**
   * A SET_CONFIG write of `data` at `offset` (flags 1: live migration);
   * false refuses it. Without this method every write is refused.
   */
  writeConfig?(offset: number, data: Buffer, flags: number): boolean;
}

export interface BackendLimits {
  /** The largest ring size SET_VRING_NUM and the inflight messages accept. */
  maxQueueSize: number;
  /** GET_MAX_MEM_SLOTS, and the most regions ADD_MEM_REG builds up. */
  maxMemSlots: number;
}

export const DEFAULT_LIMITS: BackendLimits = { maxQueueSize: 1024, maxMemSlots: 32 };

/** A ring as the host runs it: guest-physical addresses, ready for GuestMemory.map. */
export interface RingStart {
  size: number;
  descriptors: number;
  available: number;
  used: number;
  /** The next available-ring index to read (SET_VRING_BASE, or where the ring last stopped). */
  nextAvail: number;
  /** The virtio features the front end acked (EVENT_IDX, INDIRECT_DESC, device bits). */
  features: bigint;
}

export interface InflightArea {
  mmapSize: number;
  mmapOffset: number;
  numQueues: number;
  queueSize: number;
}

/**
 * Every side effect of the table. A method may return a promise; the
 * table waits for it before it goes on. An fd passed in belongs to the
 * host from then on, even when the method throws; a method throws to
 * refuse (the table answers the request as refused and assumes nothing
 * changed). The set* fd methods may come at any time, also for a running
 * queue, and replace (and close) the fd the queue had.
 */
export interface VhostUserHost {
  /** SET_MEM_TABLE: replace every region by these. Drain the running queues before unmapping. */
  replaceMemory(regions: ReadonlyArray<{ region: GuestRegion; fd: number }>): void | Promise<void>;
  /** ADD_MEM_REG. */
  addMemory(region: GuestRegion, fd: number): void | Promise<void>;
  /** REM_MEM_REG: `region` is as it was added. Drain the running queues before unmapping. */
  removeMemory(region: GuestRegion): void | Promise<void>;
  /** The fd the ring's driver kicks, or null: poll the ring instead. */
  setKick(queue: number, fd: number | null): void | Promise<void>;
  /** The fd to signal used buffers on, or null: the driver polls. */
  setCall(queue: number, fd: number | null): void | Promise<void>;
  /** The fd to signal ring errors on, or null. */
  setErr(queue: number, fd: number | null): void | Promise<void>;
  /** Start processing the ring. */
  startQueue(queue: number, ring: RingStart): void | Promise<void>;
  /** Stop processing it, finish what is in flight, and say the next available index it would have read. */
  stopQueue(queue: number): number | Promise<number>;
  /**
   * GET_INFLIGHT_FD: a zeroed shared area of `area.mmapSize` bytes (offset 0)
   * for `area.numQueues` rings of `area.queueSize`; returns its fd, which
   * stays the host's (it is sent with the reply, not given away).
   */
  createInflight(area: InflightArea): number | Promise<number>;
  /** SET_INFLIGHT_FD: the area the front end kept (from an earlier connection). */
  setInflight(area: InflightArea, fd: number): void | Promise<void>;
  /** The connection is over: every queue has been stopped; unmap all memory and close every fd. */
  reset(): void | Promise<void>;
}

export interface Step {
  /** The message to send, with fds to attach (the host's: sending does not give them away). */
  reply: { message: Buffer; fds: number[] } | null;
  /** Received fds that nobody took: close them. */
  close: number[];
  /** Set when the connection must be closed once `reply` is sent: the reason, for the log. */
  disconnect?: string;
  /** Set when the request was refused but answered: the reason, for the log. */
  refused?: string;
}

/** The transport feature bits every back end of this table offers. */
export const TRANSPORT_FEATURES =
  bit(VIRTIO_F.VERSION_1) | bit(VIRTIO_F.RING_INDIRECT_DESC) | bit(VIRTIO_F.RING_EVENT_IDX) | bit(VIRTIO_F.PROTOCOL_FEATURES);

/** Not LOG_SHMFD (no dirty logging, so QEMU blocks migration) and nothing that needs a back-end channel. */
export const PROTOCOL_FEATURES = [
  PROTOCOL_F.MQ,
  PROTOCOL_F.REPLY_ACK,
  PROTOCOL_F.CONFIG,
  PROTOCOL_F.INFLIGHT_SHMFD,
  PROTOCOL_F.CONFIGURE_MEM_SLOTS,
  PROTOCOL_F.STATUS,
].reduce((all, n) => all | bit(n), 0n);

export interface Ring {
  size: number | null;
  address: VringAddress | null;
  nextAvail: number;
  /** Between SET_VRING_KICK and GET_VRING_BASE. */
  started: boolean;
  enabled: boolean;
  /** What the host was given, while it runs the ring. */
  running: RingStart | null;
}

const ACK_OK = 0n;
const ACK_FAILED = 1n;

export class VhostUserBackend {
  owner = false;
  ackedFeatures = 0n;
  ackedProtocolFeatures = 0n;
  status = 0;
  regions: GuestRegion[] = [];
  readonly rings: Ring[];
  private busy = false;
  private closed: string | null = null;

  constructor(
    readonly host: VhostUserHost,
    readonly device: VirtioDeviceDescription,
    readonly limits: BackendLimits = DEFAULT_LIMITS,
  ) {
    this.rings = Array.from({ length: device.queues }, () => ({
      size: null,
      address: null,
      nextAvail: 0,
      started: false,
      enabled: false,
      running: null,
    }));
  }

  get offeredFeatures(): bigint {
    return this.device.features | TRANSPORT_FEATURES;
  }

  get offeredProtocolFeatures(): bigint {
    return PROTOCOL_FEATURES;
  }

  negotiated(protocolFeature: number): boolean {
    return (this.ackedProtocolFeatures & bit(protocolFeature)) !== 0n;
  }

  /**
   * One message. Feed the next only once this one's step is back: the
   * protocol is strictly in order, and so is the table.
   */
  async receive(header: MessageHeader, payload: Buffer, fds: readonly number[] = []): Promise<Step> {
    if (this.busy) throw new Error('vhost-user backend: a message arrived before the previous one was handled');
    if (this.closed) return { reply: null, close: [...fds], disconnect: this.closed };
    this.busy = true;
    // An ack follows REPLY_ACK as it stood when the message arrived.
    const replyAck = this.negotiated(PROTOCOL_F.REPLY_ACK);
    const msg = new Incoming(header, payload, fds);
    try {
      const rule = RULES[header.request];
      const outcome = await this.dispatch(rule, msg);
      const close = fds.filter((_, i) => !msg.taken.has(i));
      const ackWanted = replyAck && (header.flags & FLAG_NEED_REPLY) !== 0 && !rule?.replies;
      return this.finish(header.request, outcome, close, ackWanted);
    } finally {
      this.busy = false;
    }
  }

  /** The connection is gone: stop every running ring, then let the host drop everything. */
  async shutdown(): Promise<void> {
    this.closed ??= 'shut down';
    try {
      for (let i = 0; i < this.rings.length; i++) if (this.rings[i]!.running) await this.stopRing(i);
    } finally {
      await this.host.reset();
    }
  }

  private async dispatch(rule: Rule | undefined, msg: Incoming): Promise<Outcome> {
    const name = requestName(msg.header.request);
    if (!rule) return refuse(`${name} is not supported`);
    if (rule.owner && !this.owner) return refuse(`${name} before VHOST_USER_SET_OWNER`);
    if (rule.needs !== undefined && !this.negotiated(rule.needs)) {
      return refuse(`${name} without protocol feature ${rule.needs} negotiated`);
    }
    try {
      return await rule.handle(this, msg);
    } catch (err) {
      return refuse(`${name} failed: ${(err as Error).message}`);
    }
  }

  private finish(request: number, outcome: Outcome, close: number[], ackWanted: boolean): Step {
    const send = (payload: Buffer, fds: number[] = []) => ({ message: encodeReply(request, payload), fds });
    if ('refuse' in outcome) {
      const refused = `${requestName(request)} refused: ${outcome.refuse}`;
      if (outcome.errorReply) return { reply: send(outcome.errorReply), close, refused };
      if (ackWanted) return { reply: send(encodeU64(ACK_FAILED)), close, refused };
      this.closed = refused;
      return { reply: null, close, disconnect: refused };
    }
    if (outcome.reply) return { reply: send(outcome.reply, outcome.fds), close };
    return { reply: ackWanted ? send(encodeU64(ACK_OK)) : null, close };
  }

  // --- rings ----------------------------------------------------------------

  ring(index: number): Ring | string {
    return this.rings[index] ?? `ring ${index} out of range (the device has ${this.rings.length})`;
  }

  /** The ring's parts as guest-physical addresses under `table`, or why they are not all mapped. */
  placeRing(ring: Ring, table: readonly GuestRegion[]): Omit<RingStart, 'nextAvail' | 'features'> | string {
    if (ring.size === null || ring.address === null) return 'ring has no size or addresses yet';
    const n = ring.size;
    const event = (this.ackedFeatures & bit(VIRTIO_F.RING_EVENT_IDX)) !== 0n ? 2 : 0;
    const parts = [
      ['descriptor table', ring.address.descriptor, 16 * n, 16],
      ['available ring', ring.address.available, 4 + 2 * n + event, 2],
      ['used ring', ring.address.used, 4 + 8 * n + event, 4],
    ] as const;
    const placed: number[] = [];
    for (const [what, uva, length, align] of parts) {
      const gpa = userToGuest(table, uva, length);
      if (gpa === null) return `${what} at user 0x${uva.toString(16)} (${length} bytes) is not inside one memory region`;
      if (gpa % align !== 0) return `${what} at guest 0x${gpa.toString(16)} is not ${align}-byte aligned`;
      placed.push(gpa);
    }
    return { size: n, descriptors: placed[0]!, available: placed[1]!, used: placed[2]! };
  }

  /** What the host should be running for ring `index` under `table`, or null. */
  private wanted(index: number, table: readonly GuestRegion[]): RingStart | null {
    const ring = this.rings[index]!;
    const enabled = ring.enabled || (this.ackedFeatures & bit(VIRTIO_F.PROTOCOL_FEATURES)) === 0n;
    if (!ring.started || !enabled) return null;
    const placed = this.placeRing(ring, table);
    if (typeof placed === 'string') return null;
    return { ...placed, nextAvail: ring.nextAvail, features: this.ackedFeatures };
  }

  private async stopRing(index: number): Promise<void> {
    const ring = this.rings[index]!;
    ring.running = null;
    const next = await this.host.stopQueue(index);
    if (!Number.isInteger(next) || next < 0 || next > 0xffff) throw new Error(`host stopped ring ${index} at index ${next}`);
    ring.nextAvail = next;
  }

  /** Stop the running rings that `table` would move or unmap (before the host changes any mapping). */
  private async stopMisplaced(table: readonly GuestRegion[]): Promise<void> {
    for (let i = 0; i < this.rings.length; i++) {
      const running = this.rings[i]!.running;
      if (running && !sameRing(running, this.wanted(i, table))) await this.stopRing(i);
    }
  }

  /** Bring the host in line with the table: stop rings that should not run as they are, start those that should. */
  async reconcile(): Promise<void> {
    await this.stopMisplaced(this.regions);
    for (let i = 0; i < this.rings.length; i++) {
      const ring = this.rings[i]!;
      const want = this.wanted(i, this.regions);
      if (ring.running || !want) continue;
      await this.host.startQueue(i, want);
      ring.running = want;
    }
  }

  /** Change the memory table through `change`, stopping first the rings it would move or unmap. */
  async changeMemory(next: GuestRegion[], change: () => void | Promise<void>): Promise<Outcome> {
    await this.stopMisplaced(next);
    try {
      await change();
    } catch (err) {
      await this.reconcile();
      throw err;
    }
    this.regions = next;
    await this.reconcile();
    return {};
  }
}

function sameRing(a: RingStart, b: RingStart | null): boolean {
  return (
    b !== null && a.size === b.size && a.descriptors === b.descriptors && a.available === b.available && a.used === b.used
  );
}
