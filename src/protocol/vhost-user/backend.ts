// The vhost-user back end as a state table: one handler per request in
// RULES, fed one decoded message (header, payload, received fds) at a time
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

import {
  FLAG_NEED_REPLY,
  MAX_CONFIG_SIZE,
  PROTOCOL_F,
  REQ,
  VIRTIO_F,
  bit,
  requestName,
} from './constants.js';
import {
  type Inflight,
  type MessageHeader,
  type VringAddress,
  decodeConfig,
  decodeInflight,
  decodeMemoryTable,
  decodeSingleRegion,
  decodeStatus,
  decodeU64,
  decodeVringAddress,
  decodeVringFile,
  decodeVringState,
  encodeConfig,
  encodeInflight,
  encodeReply,
  encodeStatus,
  encodeU64,
  encodeVringState,
  isMalformed,
} from './messages.js';
import { type GuestRegion, checkRegion, findRegion, overlapProblem, tableProblem, userToGuest } from './memory-table.js';

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
  /** GET_INFLIGHT_FD: a zeroed shared area of `size` bytes; returns its fd, which stays the host's. */
  createInflight(size: number): number | Promise<number>;
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

interface Ring {
  size: number | null;
  address: VringAddress | null;
  nextAvail: number;
  /** Between SET_VRING_KICK and GET_VRING_BASE. */
  started: boolean;
  enabled: boolean;
  /** What the host was given, while it runs the ring. */
  running: RingStart | null;
}

/** The received message as a handler sees it; a handler takes the fds it hands to the host. */
class Incoming {
  readonly taken = new Set<number>();
  constructor(
    readonly header: MessageHeader,
    readonly payload: Buffer,
    readonly fds: readonly number[],
  ) {}

  take(i: number): number {
    this.taken.add(i);
    return this.fds[i]!;
  }
}

type Outcome = { reply?: Buffer; fds?: number[] } | { refuse: string; errorReply?: Buffer };
type Handler = (be: VhostUserBackend, msg: Incoming) => Outcome | Promise<Outcome>;

interface Rule {
  handle: Handler;
  /** The request has a reply of its own: REPLY_ACK adds nothing, and a refusal without an error form hangs up. */
  replies?: boolean;
  /** Refused before SET_OWNER. */
  owner?: boolean;
  /** The protocol feature that must have been negotiated. */
  needs?: number;
}

const ACK_OK = 0n;
const ACK_FAILED = 1n;

function refuse(reason: string): Outcome {
  return { refuse: reason };
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

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
// --- checks shared by handlers ---------------------------------------------

function noPayload(msg: Incoming): string | null {
  return msg.payload.length === 0 ? null : `payload of ${msg.payload.length} bytes where none belongs`;
}

/** Exactly `count` fds, or why not (a request that takes fds cannot guess which of too many is meant). */
function fdCount(msg: Incoming, count: number): string | null {
  return msg.fds.length === count ? null : `${msg.fds.length} fds where ${count} belong`;
}

function checkQueueSize(be: VhostUserBackend, size: number): string | null {
  if (!isPowerOfTwo(size) || size > be.limits.maxQueueSize) {
    return `ring size ${size} is not a power of two up to ${be.limits.maxQueueSize}`;
  }
  return null;
}

/** Bytes the inflight area needs: per queue a 16-byte header and 16 bytes per descriptor, 64-byte aligned. */
export function inflightSize(numQueues: number, queueSize: number): number {
  return numQueues * Math.ceil((16 + 16 * queueSize) / 64) * 64;
}

function checkInflight(be: VhostUserBackend, i: Inflight): string | null {
  if (i.numQueues < 1 || i.numQueues > be.device.queues) return `inflight area for ${i.numQueues} queues (the device has ${be.device.queues})`;
  return checkQueueSize(be, i.queueSize);
}

/** The ring a vring-state message names, unless it is out of range or already started. */
function stoppedRing(be: VhostUserBackend, index: number): Ring | string {
  const ring = be.ring(index);
  if (typeof ring === 'string') return ring;
  return ring.started ? `ring ${index} is started (stop it with VHOST_USER_GET_VRING_BASE first)` : ring;
}

// --- one handler per request --------------------------------------------

function getFeatures(be: VhostUserBackend, msg: Incoming): Outcome {
  const bad = noPayload(msg);
  return bad ? refuse(bad) : { reply: encodeU64(be.offeredFeatures) };
}

function setFeatures(be: VhostUserBackend, msg: Incoming): Outcome {
  const value = decodeU64(msg.payload);
  if (isMalformed(value)) return refuse(value.malformed);
  const unknown = value & ~be.offeredFeatures;
  if (unknown) return refuse(`features 0x${unknown.toString(16)} were not offered`);
  if (value !== be.ackedFeatures && be.rings.some((r) => r.started)) return refuse('features changed while rings are started');
  be.ackedFeatures = value;
  return {};
}

function getProtocolFeatures(_be: VhostUserBackend, msg: Incoming): Outcome {
  const bad = noPayload(msg);
  return bad ? refuse(bad) : { reply: encodeU64(PROTOCOL_FEATURES) };
}

function setProtocolFeatures(be: VhostUserBackend, msg: Incoming): Outcome {
  const value = decodeU64(msg.payload);
  if (isMalformed(value)) return refuse(value.malformed);
  const unknown = value & ~PROTOCOL_FEATURES;
  if (unknown) return refuse(`protocol features 0x${unknown.toString(16)} were not offered`);
  be.ackedProtocolFeatures = value;
  return {};
}

function setOwner(be: VhostUserBackend, msg: Incoming): Outcome {
  const bad = noPayload(msg);
  if (bad) return refuse(bad);
  be.owner = true;
  return {};
}

async function resetOwner(be: VhostUserBackend, msg: Incoming): Promise<Outcome> {
  const bad = noPayload(msg);
  if (bad) return refuse(bad);
  for (const ring of be.rings) {
    ring.started = false;
    ring.enabled = false;
  }
  await be.reconcile();
  return {};
}

async function setMemTable(be: VhostUserBackend, msg: Incoming): Promise<Outcome> {
  const table = decodeMemoryTable(msg.payload);
  if (isMalformed(table)) return refuse(table.malformed);
  const bad = fdCount(msg, table.length);
  if (bad) return refuse(bad);
  const regions: GuestRegion[] = [];
  for (const r of table) {
    const region = checkRegion(r);
    if (typeof region === 'string') return refuse(region);
    regions.push(region);
  }
  const problem = tableProblem(regions);
  if (problem) return refuse(problem);
  // The fds become the host's only when it is given them (stopping rings first may fail).
  return be.changeMemory(regions, () => be.host.replaceMemory(regions.map((region, i) => ({ region, fd: msg.take(i) }))));
}

function getMaxMemSlots(be: VhostUserBackend, msg: Incoming): Outcome {
  const bad = noPayload(msg);
  return bad ? refuse(bad) : { reply: encodeU64(BigInt(be.limits.maxMemSlots)) };
}

async function addMemReg(be: VhostUserBackend, msg: Incoming): Promise<Outcome> {
  const decoded = decodeSingleRegion(msg.payload);
  if (isMalformed(decoded)) return refuse(decoded.malformed);
  const bad = fdCount(msg, 1);
  if (bad) return refuse(bad);
  const region = checkRegion(decoded);
  if (typeof region === 'string') return refuse(region);
  if (be.regions.length >= be.limits.maxMemSlots) return refuse(`all ${be.limits.maxMemSlots} memory slots are in use`);
  const problem = overlapProblem(be.regions, region);
  if (problem) return refuse(problem);
  return be.changeMemory([...be.regions, region], () => be.host.addMemory(region, msg.take(0)));
}

async function remMemReg(be: VhostUserBackend, msg: Incoming): Promise<Outcome> {
  const decoded = decodeSingleRegion(msg.payload);
  if (isMalformed(decoded)) return refuse(decoded.malformed);
  // No fd belongs here, but the spec lets older front ends send one, which is closed unused.
  if (msg.fds.length > 1) return refuse(`${msg.fds.length} fds where none belong`);
  const wanted = checkRegion(decoded);
  if (typeof wanted === 'string') return refuse(wanted);
  const at = findRegion(be.regions, wanted);
  if (at < 0) return refuse(`no memory region at guest 0x${wanted.guestAddress.toString(16)}, user 0x${wanted.userAddress.toString(16)}, size 0x${wanted.size.toString(16)}`);
  const region = be.regions[at]!;
  return be.changeMemory(be.regions.filter((_, i) => i !== at), () => be.host.removeMemory(region));
}

function setVringNum(be: VhostUserBackend, msg: Incoming): Outcome {
  const state = decodeVringState(msg.payload);
  if (isMalformed(state)) return refuse(state.malformed);
  const ring = stoppedRing(be, state.index);
  if (typeof ring === 'string') return refuse(ring);
  const bad = checkQueueSize(be, state.num);
  if (bad) return refuse(bad);
  ring.size = state.num;
  return {};
}

function setVringAddr(be: VhostUserBackend, msg: Incoming): Outcome {
  const address = decodeVringAddress(msg.payload);
  if (isMalformed(address)) return refuse(address.malformed);
  const ring = stoppedRing(be, address.index);
  if (typeof ring === 'string') return refuse(ring);
  if (address.flags !== 0) return refuse(`ring flags 0x${address.flags.toString(16)} (logging was not offered)`);
  if (ring.size === null) return refuse(`ring ${address.index} has no size yet (VHOST_USER_SET_VRING_NUM comes first)`);
  const placed = be.placeRing({ ...ring, address }, be.regions);
  if (typeof placed === 'string') return refuse(placed);
  ring.address = address;
  return {};
}

function setVringBase(be: VhostUserBackend, msg: Incoming): Outcome {
  const state = decodeVringState(msg.payload);
  if (isMalformed(state)) return refuse(state.malformed);
  const ring = stoppedRing(be, state.index);
  if (typeof ring === 'string') return refuse(ring);
  if (state.num > 0xffff) return refuse(`ring base ${state.num} does not fit a split ring's 16-bit index`);
  ring.nextAvail = state.num;
  return {};
}

async function getVringBase(be: VhostUserBackend, msg: Incoming): Promise<Outcome> {
  const state = decodeVringState(msg.payload);
  if (isMalformed(state)) return refuse(state.malformed);
  const ring = be.ring(state.index);
  if (typeof ring === 'string') return refuse(ring);
  ring.started = false;
  await be.reconcile();
  return { reply: encodeVringState({ index: state.index, num: ring.nextAvail }) };
}

/** The ring index of SET_VRING_KICK/CALL/ERR, once its fd (or no-fd flag) checks out. */
function ringFile(be: VhostUserBackend, msg: Incoming): { index: number } | string {
  const file = decodeVringFile(msg.payload);
  if (isMalformed(file)) return file.malformed;
  const ring = be.ring(file.index);
  if (typeof ring === 'string') return ring;
  const bad = fdCount(msg, file.noFd ? 0 : 1);
  if (bad) return `${bad}${file.noFd ? ' (the no-fd flag is set)' : ''}`;
  return { index: file.index };
}

async function setVringKick(be: VhostUserBackend, msg: Incoming): Promise<Outcome> {
  const file = ringFile(be, msg);
  if (typeof file === 'string') return refuse(file);
  const ring = be.rings[file.index]!;
  const placed = be.placeRing(ring, be.regions);
  if (typeof placed === 'string') return refuse(`ring ${file.index} cannot start: ${placed}`);
  await be.host.setKick(file.index, msg.fds.length ? msg.take(0) : null);
  ring.started = true;
  await be.reconcile();
  return {};
}

function setVringNotifier(which: 'setCall' | 'setErr'): Handler {
  return async (be, msg) => {
    const file = ringFile(be, msg);
    if (typeof file === 'string') return refuse(file);
    await be.host[which](file.index, msg.fds.length ? msg.take(0) : null);
    return {};
  };
}

async function setVringEnable(be: VhostUserBackend, msg: Incoming): Promise<Outcome> {
  const state = decodeVringState(msg.payload);
  if (isMalformed(state)) return refuse(state.malformed);
  const ring = be.ring(state.index);
  if (typeof ring === 'string') return refuse(ring);
  if (state.num > 1) return refuse(`ring enable value ${state.num}, not 0 or 1`);
  ring.enabled = state.num === 1;
  await be.reconcile();
  return {};
}

function getQueueNum(be: VhostUserBackend, msg: Incoming): Outcome {
  const bad = noPayload(msg);
  return bad ? refuse(bad) : { reply: encodeU64(BigInt(be.device.queues)) };
}

function getConfig(be: VhostUserBackend, msg: Incoming): Outcome {
  // The spec's error answer is an empty payload.
  const access = decodeConfig(msg.payload);
  if (isMalformed(access)) return { refuse: access.malformed, errorReply: Buffer.alloc(0) };
  const end = access.offset + access.data.length;
  if (end > MAX_CONFIG_SIZE) return { refuse: `config bytes ${access.offset}..${end} are past ${MAX_CONFIG_SIZE}`, errorReply: Buffer.alloc(0) };
  const data = Buffer.alloc(access.data.length);
  be.device.config().subarray(access.offset, end).copy(data);
  return { reply: encodeConfig({ offset: access.offset, flags: access.flags, data }) };
}

function setConfig(be: VhostUserBackend, msg: Incoming): Outcome {
  const access = decodeConfig(msg.payload);
  if (isMalformed(access)) return refuse(access.malformed);
  const length = be.device.config().length;
  if (access.offset + access.data.length > length) return refuse(`config write at ${access.offset} of ${access.data.length} bytes is past the ${length}-byte config`);
  if (!be.device.writeConfig?.(access.offset, access.data, access.flags)) return refuse(`the device refuses a config write at ${access.offset}`);
  return {};
}

async function getInflightFd(be: VhostUserBackend, msg: Incoming): Promise<Outcome> {
  const asked = decodeInflight(msg.payload);
  if (isMalformed(asked)) return refuse(asked.malformed);
  const bad = checkInflight(be, asked);
  if (bad) return refuse(bad);
  const size = inflightSize(asked.numQueues, asked.queueSize);
  const fd = await be.host.createInflight(size);
  const reply = encodeInflight({ mmapSize: BigInt(size), mmapOffset: 0n, numQueues: asked.numQueues, queueSize: asked.queueSize });
  return { reply, fds: [fd] };
}

async function setInflightFd(be: VhostUserBackend, msg: Incoming): Promise<Outcome> {
  const area = decodeInflight(msg.payload);
  if (isMalformed(area)) return refuse(area.malformed);
  const bad = fdCount(msg, 1) ?? checkInflight(be, area);
  if (bad) return refuse(bad);
  const needed = inflightSize(area.numQueues, area.queueSize);
  if (area.mmapSize < BigInt(needed)) return refuse(`inflight area of ${area.mmapSize} bytes, smaller than the ${needed} it needs`);
  if (area.mmapOffset + area.mmapSize > BigInt(Number.MAX_SAFE_INTEGER)) return refuse('inflight area ends past 2^53');
  const fd = msg.take(0);
  await be.host.setInflight({ ...area, mmapSize: Number(area.mmapSize), mmapOffset: Number(area.mmapOffset) }, fd);
  return {};
}

function setStatus(be: VhostUserBackend, msg: Incoming): Outcome {
  const status = decodeStatus(msg.payload);
  if (isMalformed(status)) return refuse(status.malformed);
  be.status = status;
  return {};
}

function getStatus(be: VhostUserBackend, msg: Incoming): Outcome {
  const bad = noPayload(msg);
  return bad ? refuse(bad) : { reply: encodeStatus(be.status) };
}

/** A request this back end knows and refuses (those with a reply of their own are marked so, and hang up). */
function unsupported(why: string): Handler {
  return () => refuse(why);
}

const RULES: Record<number, Rule> = {
  [REQ.GET_FEATURES]: { handle: getFeatures, replies: true },
  [REQ.SET_FEATURES]: { handle: setFeatures, owner: true },
  [REQ.SET_OWNER]: { handle: setOwner },
  [REQ.RESET_OWNER]: { handle: resetOwner },
  [REQ.SET_MEM_TABLE]: { handle: setMemTable, owner: true },
  [REQ.SET_LOG_BASE]: { handle: unsupported('dirty logging (LOG_SHMFD) was not offered') },
  [REQ.SET_LOG_FD]: { handle: unsupported('dirty logging (LOG_SHMFD) was not offered') },
  [REQ.SET_VRING_NUM]: { handle: setVringNum, owner: true },
  [REQ.SET_VRING_ADDR]: { handle: setVringAddr, owner: true },
  [REQ.SET_VRING_BASE]: { handle: setVringBase, owner: true },
  [REQ.GET_VRING_BASE]: { handle: getVringBase, owner: true, replies: true },
  [REQ.SET_VRING_KICK]: { handle: setVringKick, owner: true },
  [REQ.SET_VRING_CALL]: { handle: setVringNotifier('setCall'), owner: true },
  [REQ.SET_VRING_ERR]: { handle: setVringNotifier('setErr'), owner: true },
  [REQ.GET_PROTOCOL_FEATURES]: { handle: getProtocolFeatures, replies: true },
  [REQ.SET_PROTOCOL_FEATURES]: { handle: setProtocolFeatures },
  [REQ.GET_QUEUE_NUM]: { handle: getQueueNum, replies: true },
  [REQ.SET_VRING_ENABLE]: { handle: setVringEnable, owner: true },
  [REQ.IOTLB_MSG]: { handle: unsupported('no IOMMU (ACCESS_PLATFORM) was offered'), replies: true },
  [REQ.GET_CONFIG]: { handle: getConfig, replies: true, needs: PROTOCOL_F.CONFIG },
  [REQ.SET_CONFIG]: { handle: setConfig, owner: true, needs: PROTOCOL_F.CONFIG },
  [REQ.POSTCOPY_ADVISE]: { handle: unsupported('postcopy (PAGEFAULT) was not offered'), replies: true },
  [REQ.POSTCOPY_END]: { handle: unsupported('postcopy (PAGEFAULT) was not offered'), replies: true },
  [REQ.GET_INFLIGHT_FD]: { handle: getInflightFd, owner: true, replies: true, needs: PROTOCOL_F.INFLIGHT_SHMFD },
  [REQ.SET_INFLIGHT_FD]: { handle: setInflightFd, owner: true, needs: PROTOCOL_F.INFLIGHT_SHMFD },
  [REQ.GET_MAX_MEM_SLOTS]: { handle: getMaxMemSlots, replies: true, needs: PROTOCOL_F.CONFIGURE_MEM_SLOTS },
  [REQ.ADD_MEM_REG]: { handle: addMemReg, owner: true, needs: PROTOCOL_F.CONFIGURE_MEM_SLOTS },
  [REQ.REM_MEM_REG]: { handle: remMemReg, owner: true, needs: PROTOCOL_F.CONFIGURE_MEM_SLOTS },
  [REQ.SET_STATUS]: { handle: setStatus, owner: true, needs: PROTOCOL_F.STATUS },
  [REQ.GET_STATUS]: { handle: getStatus, replies: true, needs: PROTOCOL_F.STATUS },
  [REQ.CREATE_CRYPTO_SESSION]: { handle: unsupported('not a crypto device'), replies: true },
  [REQ.GET_SHARED_OBJECT]: { handle: unsupported('shared objects were not offered'), replies: true },
  [REQ.SET_DEVICE_STATE_FD]: { handle: unsupported('device state transfer was not offered'), replies: true },
  [REQ.CHECK_DEVICE_STATE]: { handle: unsupported('device state transfer was not offered'), replies: true },
  [REQ.GET_SHMEM_CONFIG]: { handle: unsupported('shared memory regions were not offered'), replies: true },
};
