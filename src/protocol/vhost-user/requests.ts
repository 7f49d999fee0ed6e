// One handler per front-end request, and RULES, the table that says for
// each request whether it has a reply of its own, whether it needs
// SET_OWNER first and which protocol feature must be negotiated. A handler
// checks the payload and fds, changes the back end's state, asks the host
// for side effects and answers an Outcome; VhostUserBackend (backend.ts)
// turns that into a reply, an ack or a hang-up, and closes the fds the
// handler did not take.

import { inflightQueueRegionSize } from './inflight.js';
import { MAX_CONFIG_SIZE, PROTOCOL_F, REQ } from './constants.js';
import type { Ring, VhostUserBackend } from './backend.js';
import {
  type Inflight,
  type MessageHeader,
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
  encodeStatus,
  encodeU64,
  encodeVringState,
  isMalformed,
} from './messages.js';
import { type GuestRegion, checkRegion, findRegion, overlapProblem, tableProblem } from './memory-table.js';

/** The received message as a handler sees it; a handler takes the fds it hands to the host. */
export class Incoming {
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

export type Outcome = { reply?: Buffer; fds?: number[] } | { refuse: string; errorReply?: Buffer };
export type Handler = (be: VhostUserBackend, msg: Incoming) => Outcome | Promise<Outcome>;

export interface Rule {
  handle: Handler;
  /** The request has a reply of its own: REPLY_ACK adds nothing, and a refusal without an error form hangs up. */
  replies?: boolean;
  /** Refused before SET_OWNER. */
  owner?: boolean;
  /** The protocol feature that must have been negotiated. */
  needs?: number;
}

export function refuse(reason: string): Outcome {
  return { refuse: reason };
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
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

/** Bytes the inflight area needs: one region per queue (inflight.ts). */
export function inflightSize(numQueues: number, queueSize: number): number {
  return numQueues * inflightQueueRegionSize(queueSize);
}

function checkInflight(be: VhostUserBackend, i: Inflight): string | null {
  if (i.numQueues < 1 || i.numQueues > be.device.queues) {
    return `inflight area for ${i.numQueues} queues (the device has ${be.device.queues})`;
  }
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

function getProtocolFeatures(be: VhostUserBackend, msg: Incoming): Outcome {
  const bad = noPayload(msg);
  return bad ? refuse(bad) : { reply: encodeU64(be.offeredProtocolFeatures) };
}

function setProtocolFeatures(be: VhostUserBackend, msg: Incoming): Outcome {
  const value = decodeU64(msg.payload);
  if (isMalformed(value)) return refuse(value.malformed);
  const unknown = value & ~be.offeredProtocolFeatures;
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
  if (at < 0) {
    const { guestAddress, userAddress, size } = wanted;
    return refuse(`no memory region at guest 0x${guestAddress.toString(16)}, user 0x${userAddress.toString(16)}, size 0x${size.toString(16)}`);
  }
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
  if (end > MAX_CONFIG_SIZE) {
    return { refuse: `config bytes ${access.offset}..${end} are past ${MAX_CONFIG_SIZE}`, errorReply: Buffer.alloc(0) };
  }
  const data = Buffer.alloc(access.data.length);
  be.device.config().subarray(access.offset, end).copy(data);
  return { reply: encodeConfig({ offset: access.offset, flags: access.flags, data }) };
}

function setConfig(be: VhostUserBackend, msg: Incoming): Outcome {
  const access = decodeConfig(msg.payload);
  if (isMalformed(access)) return refuse(access.malformed);
  const length = be.device.config().length;
  if (access.offset + access.data.length > length) {
    return refuse(`config write at ${access.offset} of ${access.data.length} bytes is past the ${length}-byte config`);
  }
  if (!be.device.writeConfig?.(access.offset, access.data, access.flags)) {
    return refuse(`the device refuses a config write at ${access.offset}`);
  }
  return {};
}

async function getInflightFd(be: VhostUserBackend, msg: Incoming): Promise<Outcome> {
  const asked = decodeInflight(msg.payload);
  if (isMalformed(asked)) return refuse(asked.malformed);
  const bad = checkInflight(be, asked);
  if (bad) return refuse(bad);
  const { numQueues, queueSize } = asked;
  const area = { mmapSize: inflightSize(numQueues, queueSize), mmapOffset: 0, numQueues, queueSize };
  const fd = await be.host.createInflight(area);
  return { reply: encodeInflight({ ...area, mmapSize: BigInt(area.mmapSize), mmapOffset: 0n }), fds: [fd] };
}

async function setInflightFd(be: VhostUserBackend, msg: Incoming): Promise<Outcome> {
  const area = decodeInflight(msg.payload);
  if (isMalformed(area)) return refuse(area.malformed);
  const bad = fdCount(msg, 1) ?? checkInflight(be, area);
  if (bad) return refuse(bad);
  const needed = inflightSize(area.numQueues, area.queueSize);
  if (area.mmapSize < BigInt(needed)) {
    return refuse(`inflight area of ${area.mmapSize} bytes, smaller than the ${needed} it needs`);
  }
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

export const RULES: Record<number, Rule> = {
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
