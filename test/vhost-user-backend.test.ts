// The vhost-user back-end table, driven with encoded messages and a fake
// host that records every side effect and checks the table never breaks
// its contract (a ring started twice, stopped when not running, run outside
// mapped memory, an fd handed over twice). Every received fd must end up
// exactly once either with the host or in the step's close list. The
// sequences QEMU 7.2 really sent are replayed from test/helpers; libblkio's
// is rebuilt from its driver's source (SET_OWNER first, REPLY_ACK with
// NEED_REPLY on everything after SET_PROTOCOL_FEATURES, ADD_MEM_REG only).

import fc from 'fast-check';
import t, { type Test } from 'tap';
import { FLAG_NEED_REPLY, FLAG_REPLY, PROTOCOL_F, REQ, VERSION, VIRTIO_F, bit } from '../src/protocol/vhost-user/constants.js';
import {
  type MemoryRegion,
  decodeConfig,
  decodeInflight,
  decodeMessage,
  decodeU64,
  decodeVringState,
  encodeConfig,
  encodeInflight,
  encodeMemoryTable,
  encodeSingleRegion,
  encodeStatus,
  encodeU64,
  encodeVringAddress,
  encodeVringFile,
  encodeVringState,
  isMalformed,
} from '../src/protocol/vhost-user/messages.js';
import {
  type InflightArea,
  type RingStart,
  type Step,
  type VhostUserHost,
  PROTOCOL_FEATURES,
  TRANSPORT_FEATURES,
  VhostUserBackend,
} from '../src/protocol/vhost-user/backend.js';
import { inflightSize } from '../src/protocol/vhost-user/requests.js';
import type { GuestRegion } from '../src/protocol/vhost-user/memory-table.js';
import { QEMU_72_FOUR_QUEUES, QEMU_72_ONE_QUEUE, type TracedMessage } from './helpers/vhost-user-traces.js';

// virtio-blk feature bits: SEG_MAX, BLK_SIZE, FLUSH, MQ.
const DEVICE_FEATURES = bit(2) | bit(6) | bit(9) | bit(12);
const WCE_OFFSET = 32;

function blkConfig(queues: number): Buffer {
  const c = Buffer.alloc(60);
  c.writeBigUInt64LE(2048n, 0);
  c.writeUInt32LE(126, 12);
  c.writeUInt32LE(512, 20);
  c.writeUInt16LE(queues, 34);
  return c;
}

class FakeHost implements VhostUserHost {
  calls: unknown[][] = [];
  owned = new Set<number>();
  running = new Map<number, RingStart>();
  /** What stopQueue answers per ring. */
  stopAt = new Map<number, number>();
  failing = new Set<string>();
  violations: string[] = [];
  regions: GuestRegion[] = [];
  slow = false;

  private act<T>(name: string, args: unknown[], effect: () => T): T | Promise<T> {
    const run = (): T => {
      this.calls.push([name, ...args]);
      if (this.failing.has(name)) throw new Error(`${name} fails`);
      return effect();
    };
    return this.slow ? new Promise<void>((r) => setImmediate(r)).then(run) : run();
  }

  private own(fd: number | null): void {
    if (fd === null) return;
    if (this.owned.has(fd)) this.violations.push(`fd ${fd} handed over twice`);
    this.owned.add(fd);
  }

  replaceMemory(regions: ReadonlyArray<{ region: GuestRegion; fd: number }>) {
    regions.forEach((r) => this.own(r.fd));
    return this.act('replaceMemory', [regions.map((r) => r.region)], () => {
      this.regions = regions.map((r) => r.region);
    });
  }
  addMemory(region: GuestRegion, fd: number) {
    this.own(fd);
    return this.act('addMemory', [region], () => {
      this.regions.push(region);
    });
  }
  removeMemory(region: GuestRegion) {
    return this.act('removeMemory', [region], () => {
      for (const [q, ring] of this.running) if (!this.inside(ring)) this.violations.push(`ring ${q} runs on while its memory goes`);
      this.regions = this.regions.filter((r) => r !== region && r.guestAddress !== region.guestAddress);
    });
  }
  setKick(queue: number, fd: number | null) {
    this.own(fd);
    return this.act('setKick', [queue, fd === null ? 'poll' : 'fd'], () => undefined);
  }
  setCall(queue: number, fd: number | null) {
    this.own(fd);
    return this.act('setCall', [queue, fd === null ? 'none' : 'fd'], () => undefined);
  }
  setErr(queue: number, fd: number | null) {
    this.own(fd);
    return this.act('setErr', [queue, fd === null ? 'none' : 'fd'], () => undefined);
  }
  startQueue(queue: number, ring: RingStart) {
    return this.act('startQueue', [queue, ring], () => {
      if (this.running.has(queue)) this.violations.push(`ring ${queue} started twice`);
      if (!this.inside(ring)) this.violations.push(`ring ${queue} started outside mapped memory`);
      this.running.set(queue, ring);
    });
  }
  stopQueue(queue: number) {
    return this.act('stopQueue', [queue], () => {
      if (!this.running.delete(queue)) this.violations.push(`ring ${queue} stopped while not running`);
      return this.stopAt.get(queue) ?? 0;
    });
  }
  createInflight(area: InflightArea) {
    return this.act('createInflight', [area], () => 900);
  }
  setInflight(area: InflightArea, fd: number) {
    this.own(fd);
    return this.act('setInflight', [area], () => undefined);
  }
  reset() {
    return this.act('reset', [], () => {
      if (this.running.size) this.violations.push('reset with rings running');
    });
  }

  /** Every part of the ring lies in one mapped region, by guest address. */
  inside(ring: RingStart): boolean {
    const parts: Array<[number, number]> = [
      [ring.descriptors, 16 * ring.size],
      [ring.available, 4 + 2 * ring.size],
      [ring.used, 4 + 8 * ring.size],
    ];
    return parts.every(([gpa, len]) => this.regions.some((r) => gpa >= r.guestAddress && gpa + len <= r.guestAddress + r.size));
  }

  names(): string[] {
    return this.calls.map((c) => c[0] as string);
  }
}

let nextFd = 100;

interface Reply {
  request: number;
  payload: Buffer;
  fds: number[];
}

class Session {
  readonly host = new FakeHost();
  readonly be: VhostUserBackend;

  constructor(
    readonly queues = 1,
    writable = true,
  ) {
    this.be = new VhostUserBackend(this.host, {
      features: DEVICE_FEATURES,
      queues,
      config: () => blkConfig(queues),
      ...(writable ? { writeConfig: (offset: number, data: Buffer) => offset === WCE_OFFSET && data.length === 1 } : {}),
    });
  }

  /**
   * One message with `fds` new fds. Throws when a received fd does not end
   * up exactly once with the host or in the close list, or a reply is not
   * a well-formed reply to this request.
   */
  async send(request: number, payload: Buffer = Buffer.alloc(0), opts: { needReply?: boolean; fds?: number; flags?: number } = {}): Promise<Step> {
    const fds = Array.from({ length: opts.fds ?? 0 }, () => nextFd++);
    const before = new Set(this.host.owned);
    const flags = opts.flags ?? (VERSION | (opts.needReply ? FLAG_NEED_REPLY : 0));
    const step = await this.be.receive({ request, flags, size: payload.length }, payload, fds);
    for (const fd of fds) {
      const withHost = this.host.owned.has(fd) && !before.has(fd);
      const closed = step.close.filter((c) => c === fd).length;
      if (Number(withHost) + closed !== 1) throw new Error(`fd ${fd} of request ${request}: host ${withHost}, closed ${closed} times`);
    }
    if (step.close.some((fd) => !fds.includes(fd))) throw new Error('close lists an fd that was not received');
    if (step.reply) {
      const m = decodeMessage(step.reply.message);
      if (!m || isMalformed(m)) throw new Error('reply does not decode');
      if (m.header.request !== request || m.header.flags !== (VERSION | FLAG_REPLY)) throw new Error('reply header is wrong');
      if (step.reply.message.length !== 12 + m.header.size) throw new Error('reply size field is wrong');
    }
    return step;
  }

  /** Sends, and returns the reply (there must be one and no disconnect). */
  async ask(request: number, payload?: Buffer, opts?: { needReply?: boolean; fds?: number }): Promise<Reply> {
    const step = await this.send(request, payload, opts);
    if (!step.reply || step.disconnect) throw new Error(`no reply to ${request}: ${step.disconnect ?? ''}`);
    const m = decodeMessage(step.reply.message);
    if (!m || isMalformed(m)) throw new Error('reply does not decode');
    return { request, payload: m.payload, fds: step.reply.fds };
  }

  /** Sends with NEED_REPLY and returns the ack value. */
  async ack(request: number, payload?: Buffer, fds = 0): Promise<bigint> {
    const r = await this.ask(request, payload, { needReply: true, fds });
    const v = decodeU64(r.payload);
    if (isMalformed(v)) throw new Error(v.malformed);
    return v;
  }

  /** SET_OWNER, SET_FEATURES (all offered but EVENT_IDX unless asked), SET_PROTOCOL_FEATURES (all offered, or all but REPLY_ACK). */
  async ready(opts: { replyAck?: boolean; protocolFeaturesBit?: boolean; features?: bigint } = {}): Promise<void> {
    let features = opts.features ?? (DEVICE_FEATURES | TRANSPORT_FEATURES) & ~bit(VIRTIO_F.RING_EVENT_IDX);
    if (opts.protocolFeaturesBit === false) features &= ~bit(VIRTIO_F.PROTOCOL_FEATURES);
    const protocol = opts.replyAck === false ? PROTOCOL_FEATURES & ~bit(PROTOCOL_F.REPLY_ACK) : PROTOCOL_FEATURES;
    for (const [req, payload] of [
      [REQ.SET_OWNER, Buffer.alloc(0)],
      [REQ.SET_FEATURES, encodeU64(features)],
      [REQ.SET_PROTOCOL_FEATURES, encodeU64(protocol)],
    ] as const) {
      const step = await this.send(req, payload);
      if (step.reply || step.disconnect) throw new Error(`setup step ${req} answered`);
    }
  }
}

/** One MiB of guest memory at guest 0, mapped at user 0x7f0000000000. */
const RAM: MemoryRegion = { guestAddress: 0n, size: 0x100000n, userAddress: 0x7f0000000000n, mmapOffset: 0n };
const RAM_REGION: GuestRegion = { guestAddress: 0, size: 0x100000, userAddress: 0x7f0000000000, mmapOffset: 0 };

/** Ring q at guest 0x10000 * (q + 1): descriptors, available at +0x800, used at +0x1000. */
function ringAddress(q: number, user = RAM.userAddress, flags = 0) {
  const base = user + BigInt(0x10000 * (q + 1));
  return { index: q, flags, descriptor: base, available: base + 0x800n, used: base + 0x1000n, log: 0n };
}

async function mapRam(s: Session): Promise<void> {
  const step = await s.send(REQ.ADD_MEM_REG, encodeSingleRegion(RAM), { fds: 1 });
  if (step.disconnect || step.refused) throw new Error('RAM refused');
}

/** NUM, BASE, ADDR, KICK, CALL, ENABLE 1 for ring q: it runs afterwards. */
async function startRing(s: Session, q: number, size = 128, base = 0): Promise<void> {
  const steps = [
    await s.send(REQ.SET_VRING_NUM, encodeVringState({ index: q, num: size })),
    await s.send(REQ.SET_VRING_BASE, encodeVringState({ index: q, num: base })),
    await s.send(REQ.SET_VRING_ADDR, encodeVringAddress(ringAddress(q))),
    await s.send(REQ.SET_VRING_KICK, encodeVringFile({ index: q, noFd: false }), { fds: 1 }),
    await s.send(REQ.SET_VRING_CALL, encodeVringFile({ index: q, noFd: false }), { fds: 1 }),
    await s.send(REQ.SET_VRING_ENABLE, encodeVringState({ index: q, num: 1 })),
  ];
  const bad = steps.find((st) => st.disconnect || st.refused);
  if (bad) throw new Error(`ring ${q} did not start: ${bad.disconnect ?? bad.refused}`);
}

/** A refused request without an answer: the step hangs up and says why. */
function expectHangUp(t: Test, step: Step, what: string, why?: RegExp): void {
  t.equal(step.reply, null, `${what}: no reply`);
  t.ok(step.disconnect, `${what}: disconnects`);
  if (why) t.match(step.disconnect, why, `${what}: says why`);
}

/** The u64 ack a step replies with. */
function ackOf(step: Step): bigint {
  const m = step.reply && decodeMessage(step.reply.message);
  if (!m || isMalformed(m)) throw new Error('no reply');
  const v = decodeU64(m.payload);
  if (isMalformed(v)) throw new Error(v.malformed);
  return v;
}

function noViolations(t: Test, s: Session): void {
  t.same(s.host.violations, [], 'the host saw no contract broken');
}

const REQUEST_NUMBERS: Record<string, number> = REQ;

/** Replays a trace; answers the replies QEMU got, by request name. */
async function replay(s: Session, trace: TracedMessage[]): Promise<Array<{ name: string; step: Step }>> {
  const out: Array<{ name: string; step: Step }> = [];
  for (const m of trace) {
    const request = REQUEST_NUMBERS[m.name];
    if (request === undefined) throw new Error(`unknown name ${m.name}`);
    out.push({ name: m.name, step: await s.send(request, m.payload, { flags: m.flags, fds: m.fds }) });
  }
  return out;
}

// --- real front ends -------------------------------------------------------------

for (const [queues, trace] of [
  [1, QEMU_72_ONE_QUEUE],
  [4, QEMU_72_FOUR_QUEUES],
] as const) {
  t.test(`QEMU 7.2 vhost-user-blk-pci with ${queues} queue(s): the whole recorded start and stop`, async (t) => {
    const s = new Session(queues);
    s.host.stopAt.set(0, 7);
    const steps = await replay(s, trace);
    t.same(steps.filter((x) => x.step.disconnect || x.step.refused).map((x) => x.name), [], 'nothing refused');
    const replied = steps.filter((x) => x.step.reply).map((x) => x.name);
    t.same(
      replied,
      trace.filter((m) => m.name.startsWith('GET_') || m.name === 'ADD_MEM_REG').map((m) => m.name),
      'a reply to every GET_ and to ADD_MEM_REG (its NEED_REPLY), and to nothing else',
    );
    const payloadOf = (name: string, nth = 0) => decodeMessage(steps.filter((x) => x.name === name)[nth]!.step.reply!.message) as { payload: Buffer };
    t.equal(decodeU64(payloadOf('GET_FEATURES').payload), DEVICE_FEATURES | TRANSPORT_FEATURES, 'features: the device bits and the transport bits');
    t.equal(decodeU64(payloadOf('GET_PROTOCOL_FEATURES').payload), 0x19209n, 'protocol features QEMU then acks in full');
    t.equal(decodeU64(payloadOf('GET_QUEUE_NUM').payload), BigInt(queues));
    t.equal(decodeU64(payloadOf('GET_MAX_MEM_SLOTS').payload), 32n);
    const config = decodeConfig(payloadOf('GET_CONFIG').payload);
    t.ok(!isMalformed(config) && config.data.length === 57, 'config: the 57 bytes asked for');
    t.ok(!isMalformed(config) && config.data.equals(blkConfig(queues).subarray(0, 57)), 'config: the device bytes');
    const inflight = decodeInflight(payloadOf('GET_INFLIGHT_FD').payload);
    t.same(inflight, { mmapSize: BigInt(inflightSize(queues, 128)), mmapOffset: 0n, numQueues: queues, queueSize: 128 }, 'inflight area described');
    t.equal(payloadOf('GET_INFLIGHT_FD').payload.length, 24, 'in the 24 bytes QEMU checks for');
    t.same(steps.find((x) => x.name === 'GET_INFLIGHT_FD')!.step.reply!.fds, [900], 'with the host fd');
    t.same(payloadOf('GET_STATUS', 0).payload, encodeStatus(0), 'status 0 at first');
    t.same(payloadOf('GET_STATUS', 2).payload, encodeStatus(0x08), 'then FEATURES_OK as set');
    t.equal(decodeU64(payloadOf('ADD_MEM_REG').payload), 0n, 'ADD_MEM_REG acked');
    t.same(decodeVringState(payloadOf('GET_VRING_BASE').payload), { index: 0, num: 7 }, 'GET_VRING_BASE: where the host stopped');

    const lifecycle = s.host.names().filter((n) => ['addMemory', 'startQueue', 'stopQueue', 'setKick', 'createInflight', 'setInflight'].includes(n));
    t.same(lifecycle, ['createInflight', 'setInflight', 'addMemory', 'setKick', 'startQueue', 'stopQueue'], 'map, kick, run on enable, stop on disable');
    const start = s.host.calls.find((c) => c[0] === 'startQueue')!;
    const ring = start[2] as RingStart;
    const user = trace.find((m) => m.name === 'ADD_MEM_REG')!.payload.readBigUInt64LE(24);
    const addr = trace.find((m) => m.name === 'SET_VRING_ADDR')!.payload;
    t.equal(start[1], 0, 'ring 0 (SeaBIOS sets up no other)');
    t.same(
      [ring.size, ring.descriptors, ring.available, ring.used, ring.nextAvail],
      [128, Number(addr.readBigUInt64LE(8) - user), Number(addr.readBigUInt64LE(24) - user), Number(addr.readBigUInt64LE(16) - user), 0],
      'ring addresses translated to guest-physical',
    );
    t.equal(ring.used, Number(addr.readBigUInt64LE(32)), 'the used ring lands where QEMU logs it in guest space');
    t.equal(ring.features, 0x140000044n, 'with the features QEMU acked');
    t.equal(s.host.calls.filter((c) => c[0] === 'setCall').length, queues * 2, 'call fds: at init and again at start');
    t.equal(s.be.status, 0, 'SET_STATUS 0 recorded and nothing reset by it');
    noViolations(t, s);
  });
}

t.test("libblkio's virtio-blk-vhost-user sequence, two queues, buffers mapped while running", async (t) => {
  const s = new Session(2);
  // Before SET_PROTOCOL_FEATURES nothing carries NEED_REPLY.
  t.equal((await s.send(REQ.SET_OWNER)).reply, null, 'SET_OWNER first, no reply');
  const features = decodeU64((await s.ask(REQ.GET_FEATURES)).payload) as bigint;
  const wanted = bit(VIRTIO_F.VERSION_1) | bit(VIRTIO_F.RING_EVENT_IDX) | bit(VIRTIO_F.RING_INDIRECT_DESC) | bit(12) | bit(9);
  t.equal((await s.send(REQ.SET_FEATURES, encodeU64(features & (wanted | bit(VIRTIO_F.PROTOCOL_FEATURES))))).reply, null, 'SET_FEATURES before the protocol features');
  const protocol = decodeU64((await s.ask(REQ.GET_PROTOCOL_FEATURES)).payload) as bigint;
  const required = bit(PROTOCOL_F.REPLY_ACK) | bit(PROTOCOL_F.CONFIG) | bit(PROTOCOL_F.CONFIGURE_MEM_SLOTS);
  t.equal(protocol & required, required, 'REPLY_ACK, CONFIG and CONFIGURE_MEM_SLOTS offered, as libblkio requires');
  t.equal((await s.send(REQ.SET_PROTOCOL_FEATURES, encodeU64(protocol & (required | bit(PROTOCOL_F.MQ))))).reply, null);

  // From here on every message has NEED_REPLY; a GET gets its reply, and only that.
  t.equal(decodeU64((await s.ask(REQ.GET_QUEUE_NUM, undefined, { needReply: true })).payload), 2n);
  t.equal(decodeU64((await s.ask(REQ.GET_MAX_MEM_SLOTS, undefined, { needReply: true })).payload), 32n);
  const cfg = await s.ask(REQ.GET_CONFIG, encodeConfig({ offset: 0, flags: 0, data: Buffer.alloc(60) }), { needReply: true });
  t.equal(cfg.payload.length, 72, 'config reply of the size asked, as libblkio checks');
  // The ring memory is a memfd at its own address: guest address = user address.
  const rings: MemoryRegion = { guestAddress: 0x7f1200000000n, size: 0x40000n, userAddress: 0x7f1200000000n, mmapOffset: 0n };
  t.equal(await s.ack(REQ.ADD_MEM_REG, encodeSingleRegion(rings), 1), 0n, 'ring memory added');
  for (const q of [0, 1]) {
    const base = rings.userAddress + BigInt(q * 0x8000);
    t.equal(await s.ack(REQ.SET_VRING_NUM, encodeVringState({ index: q, num: 256 })), 0n);
    t.equal(await s.ack(REQ.SET_VRING_BASE, encodeVringState({ index: q, num: 0 })), 0n);
    const addr = { index: q, flags: 0, descriptor: base, used: base + 0x2000n, available: base + 0x1000n, log: 0n };
    t.equal(await s.ack(REQ.SET_VRING_ADDR, encodeVringAddress(addr)), 0n);
    t.equal(await s.ack(REQ.SET_VRING_KICK, encodeVringFile({ index: q, noFd: false }), 1), 0n);
    t.equal(await s.ack(REQ.SET_VRING_CALL, encodeVringFile({ index: q, noFd: false }), 1), 0n);
    t.equal(await s.ack(REQ.SET_VRING_ENABLE, encodeVringState({ index: q, num: 1 })), 0n, `ring ${q} enabled`);
  }
  t.same([...s.host.running.keys()], [0, 1], 'both rings run');
  t.equal(s.host.running.get(0)!.descriptors, Number(rings.guestAddress), 'identity-mapped ring');
  // blkio_map_mem_region while I/O runs, then unmap (libblkio sends the fd with REM_MEM_REG too).
  const buffer: MemoryRegion = { guestAddress: 0x7f1300000000n, size: 0x200000n, userAddress: 0x7f1300000000n, mmapOffset: 0x1000n };
  t.equal(await s.ack(REQ.ADD_MEM_REG, encodeSingleRegion(buffer), 1), 0n, 'buffer region added');
  const rem = await s.send(REQ.REM_MEM_REG, encodeSingleRegion(buffer), { needReply: true, fds: 1 });
  t.equal(ackOf(rem), 0n, 'buffer region removed');
  t.equal(rem.close.length, 1, 'the fd REM_MEM_REG brought is closed unused');
  t.same(s.host.names().filter((n) => n === 'stopQueue'), [], 'the rings ran on through both');
  t.same(s.be.regions.length, 1, 'ring memory still mapped');
  await s.be.shutdown();
  t.same(s.host.names().slice(-3), ['stopQueue', 'stopQueue', 'reset'], 'shutdown stops both rings, then resets');
  noViolations(t, s);
});

t.test('the same sequence with a host whose every call is asynchronous', async (t) => {
  const s = new Session(1);
  s.host.slow = true;
  await s.ready();
  await mapRam(s);
  await startRing(s, 0);
  s.host.stopAt.set(0, 42);
  const base = await s.ask(REQ.GET_VRING_BASE, encodeVringState({ index: 0, num: 0 }));
  t.same(decodeVringState(base.payload), { index: 0, num: 42 });
  t.same(s.host.names().slice(-2), ['startQueue', 'stopQueue']);
  noViolations(t, s);
});

t.test('a message arriving before the previous one is handled is a server bug, said loudly', async (t) => {
  const s = new Session();
  s.host.slow = true;
  await s.ready();
  const first = s.be.receive({ request: REQ.ADD_MEM_REG, flags: VERSION, size: 40 }, encodeSingleRegion(RAM), [nextFd++]);
  await t.rejects(s.be.receive({ request: REQ.GET_FEATURES, flags: VERSION, size: 0 }, Buffer.alloc(0)), /before the previous one/);
  t.equal((await first).refused, undefined, 'the first still completes');
});

// --- negotiation ---------------------------------------------------------------

t.test('features: only offered bits may be acked, and not changed under started rings', async (t) => {
  const s = new Session();
  await s.send(REQ.SET_OWNER);
  await s.send(REQ.SET_PROTOCOL_FEATURES, encodeU64(PROTOCOL_FEATURES));
  t.equal(await s.ack(REQ.SET_FEATURES, encodeU64(bit(VIRTIO_F.VHOST_LOG_ALL))), 1n, 'LOG_ALL was not offered');
  t.equal(await s.ack(REQ.SET_FEATURES, encodeU64(bit(63))), 1n, 'bit 63 was not offered');
  const all = DEVICE_FEATURES | TRANSPORT_FEATURES;
  t.equal(await s.ack(REQ.SET_FEATURES, encodeU64(all)), 0n, 'everything offered');
  t.equal(s.be.ackedFeatures, all);
  await mapRam(s);
  await startRing(s, 0);
  t.equal(await s.ack(REQ.SET_FEATURES, encodeU64(all)), 0n, 'the same features again while running');
  t.equal(await s.ack(REQ.SET_FEATURES, encodeU64(all & ~bit(VIRTIO_F.RING_EVENT_IDX))), 1n, 'but no change');
  t.equal(s.host.running.get(0)!.features, all, 'the ring runs with what was acked');
});

t.test('protocol features: only offered bits; LOG_SHMFD is not offered', async (t) => {
  const s = new Session();
  t.equal(PROTOCOL_FEATURES & bit(PROTOCOL_F.LOG_SHMFD), 0n);
  const step = await s.send(REQ.SET_PROTOCOL_FEATURES, encodeU64(PROTOCOL_FEATURES | bit(PROTOCOL_F.LOG_SHMFD)));
  expectHangUp(t, step, 'LOG_SHMFD acked', /not offered/);
});

t.test('REPLY_ACK: an ack only when negotiated and asked for', async (t) => {
  const s = new Session();
  t.equal((await s.send(REQ.SET_OWNER, undefined, { needReply: true })).reply, null, 'NEED_REPLY before REPLY_ACK is negotiated: no ack');
  await s.send(REQ.SET_PROTOCOL_FEATURES, encodeU64(PROTOCOL_FEATURES), { needReply: true });
  t.equal(s.be.negotiated(PROTOCOL_F.REPLY_ACK), true);
  t.equal((await s.send(REQ.SET_VRING_NUM, encodeVringState({ index: 0, num: 64 }))).reply, null, 'no NEED_REPLY: no ack');
  t.equal(await s.ack(REQ.SET_VRING_NUM, encodeVringState({ index: 0, num: 64 })), 0n, 'NEED_REPLY: ack 0');
  const r = await s.ask(REQ.GET_PROTOCOL_FEATURES, undefined, { needReply: true });
  t.equal(decodeU64(r.payload), PROTOCOL_FEATURES, 'a request with a reply of its own gets only that');
});

t.test('messages that need SET_OWNER are refused before it; the GETs QEMU sends first are not', async (t) => {
  const s = new Session();
  await s.send(REQ.SET_PROTOCOL_FEATURES, encodeU64(PROTOCOL_FEATURES));
  for (const req of [REQ.GET_FEATURES, REQ.GET_PROTOCOL_FEATURES, REQ.GET_QUEUE_NUM, REQ.GET_MAX_MEM_SLOTS, REQ.GET_STATUS]) {
    t.ok((await s.ask(req)).payload.length === 8, `request ${req} answered`);
  }
  const refusedBeforeOwner: Array<[number, Buffer, number]> = [
    [REQ.SET_FEATURES, encodeU64(0n), 0],
    [REQ.SET_MEM_TABLE, encodeMemoryTable([RAM]), 1],
    [REQ.ADD_MEM_REG, encodeSingleRegion(RAM), 1],
    [REQ.SET_VRING_NUM, encodeVringState({ index: 0, num: 64 }), 0],
    [REQ.SET_VRING_CALL, encodeVringFile({ index: 0, noFd: false }), 1],
    [REQ.SET_VRING_ENABLE, encodeVringState({ index: 0, num: 1 }), 0],
    [REQ.SET_STATUS, encodeStatus(1), 0],
  ];
  for (const [req, payload, fds] of refusedBeforeOwner) {
    const step = await s.send(req, payload, { needReply: true, fds });
    t.equal(ackOf(step), 1n, `request ${req}: ack 1`);
    t.match(step.refused, /before VHOST_USER_SET_OWNER/);
    t.equal(step.close.length, fds, 'its fds closed');
  }
  const base = await s.send(REQ.GET_VRING_BASE, encodeVringState({ index: 0, num: 0 }), { needReply: true });
  expectHangUp(t, base, 'GET_VRING_BASE before SET_OWNER (a reply with no error form)');
  t.same(s.host.calls, [], 'the host heard nothing');
});

t.test('requests gated on a protocol feature are refused without it', async (t) => {
  const s = new Session();
  await s.send(REQ.SET_OWNER);
  await s.send(REQ.SET_PROTOCOL_FEATURES, encodeU64(bit(PROTOCOL_F.REPLY_ACK)));
  t.equal(await s.ack(REQ.ADD_MEM_REG, encodeSingleRegion(RAM), 1), 1n, 'ADD_MEM_REG without CONFIGURE_MEM_SLOTS');
  t.equal(await s.ack(REQ.SET_STATUS, encodeStatus(1)), 1n, 'SET_STATUS without STATUS');
  expectHangUp(t, await s.send(REQ.GET_CONFIG, encodeConfig({ offset: 0, flags: 0, data: Buffer.alloc(8) })), 'GET_CONFIG without CONFIG');
});

t.test('SET_STATUS is recorded for GET_STATUS and resets nothing', async (t) => {
  const s = new Session();
  await s.ready();
  await mapRam(s);
  await startRing(s, 0);
  for (const status of [0x0f, 0]) {
    t.equal(await s.ack(REQ.SET_STATUS, encodeStatus(status)), 0n);
    t.same((await s.ask(REQ.GET_STATUS)).payload, encodeStatus(status));
  }
  t.ok(s.host.running.has(0), 'status 0 left the ring running');
  t.equal(await s.ack(REQ.SET_STATUS, encodeU64(0x100n)), 1n, 'not a status byte');
});

// --- memory --------------------------------------------------------------------

t.test('SET_MEM_TABLE: regions and fds in order; overlaps, size and fd count refused', async (t) => {
  const s = new Session();
  await s.ready();
  const high: MemoryRegion = { guestAddress: 0x100000000n, size: 0x100000n, userAddress: 0x7f0000200000n, mmapOffset: 0x100000n };
  t.equal(await s.ack(REQ.SET_MEM_TABLE, encodeMemoryTable([RAM, high]), 2), 0n, 'two regions');
  t.same(s.host.calls.at(-1), ['replaceMemory', [RAM_REGION, { guestAddress: 0x100000000, size: 0x100000, userAddress: 0x7f0000200000, mmapOffset: 0x100000 }]]);
  t.equal(await s.ack(REQ.SET_MEM_TABLE, encodeMemoryTable([RAM, high], true), 2), 0n, 'the whole array of 8 is fine too');
  const cases: Array<[string, MemoryRegion[], number]> = [
    ['one fd short', [RAM, high], 1],
    ['one fd too many', [RAM], 2],
    ['guest ranges overlap', [RAM, { ...high, guestAddress: 0xff000n }], 2],
    ['user ranges overlap', [RAM, { ...high, userAddress: RAM.userAddress + 0xfffffn }], 2],
    ['a region of size 0', [{ ...RAM, size: 0n }], 1],
    ['a region past 2^53', [{ ...RAM, userAddress: 1n << 60n }], 1],
    ['a region that wraps 2^64', [{ ...RAM, guestAddress: (1n << 64n) - 0x1000n }], 1],
  ];
  for (const [what, regions, fds] of cases) {
    const calls = s.host.calls.length;
    t.equal(await s.ack(REQ.SET_MEM_TABLE, encodeMemoryTable(regions), fds), 1n, what);
    t.equal(s.host.calls.length, calls, `${what}: the host heard nothing`);
  }
  t.equal(s.be.regions.length, 2, 'the table stands as it was');
  const step = await s.send(REQ.SET_MEM_TABLE, encodeMemoryTable([RAM, { ...high, guestAddress: 0n }]), { fds: 2 });
  expectHangUp(t, step, 'an overlap without REPLY_ACK', /overlaps/);
  t.equal(step.close.length, 2, 'both fds closed');
});

t.test('ADD_MEM_REG / REM_MEM_REG: slots, overlaps, fds, and removing what is not there', async (t) => {
  const s = new Session();
  await s.ready();
  const regionAt = (i: number): MemoryRegion => ({ guestAddress: BigInt(i) << 24n, size: 0x1000n, userAddress: 0x7f0000000000n + (BigInt(i) << 24n), mmapOffset: 0n });
  for (let i = 0; i < 32; i++) if ((await s.ack(REQ.ADD_MEM_REG, encodeSingleRegion(regionAt(i)), 1)) !== 0n) t.fail(`region ${i}`);
  t.equal(s.be.regions.length, 32, '32 slots filled');
  t.equal(await s.ack(REQ.ADD_MEM_REG, encodeSingleRegion(regionAt(40)), 1), 1n, 'a 33rd is refused');
  t.equal(await s.ack(REQ.REM_MEM_REG, encodeSingleRegion(regionAt(31))), 0n, 'one removed');
  t.equal(await s.ack(REQ.REM_MEM_REG, encodeSingleRegion(regionAt(31))), 1n, 'not twice');
  t.equal(await s.ack(REQ.REM_MEM_REG, encodeSingleRegion({ ...regionAt(30), size: 0x2000n })), 1n, 'size must match');
  t.equal(await s.ack(REQ.REM_MEM_REG, encodeSingleRegion({ ...regionAt(30), mmapOffset: 0x5000n })), 0n, 'the mmap offset does not count');
  t.same(s.host.calls.at(-1), ['removeMemory', { guestAddress: 30 << 24, size: 0x1000, userAddress: 0x7f0000000000 + 30 * 2 ** 24, mmapOffset: 0 }], 'the host hears the region as it was added');
  t.equal(await s.ack(REQ.ADD_MEM_REG, encodeSingleRegion({ ...regionAt(31), guestAddress: 0n }), 1), 1n, 'guest overlap');
  t.equal(await s.ack(REQ.ADD_MEM_REG, encodeSingleRegion({ ...regionAt(31), userAddress: 0x7f0000000800n }), 1), 1n, 'user overlap');
  t.equal(await s.ack(REQ.ADD_MEM_REG, encodeSingleRegion(regionAt(31)), 0), 1n, 'no fd');
  t.equal(await s.ack(REQ.ADD_MEM_REG, encodeSingleRegion(regionAt(31)), 2), 1n, 'two fds');
  t.equal(await s.ack(REQ.REM_MEM_REG, encodeSingleRegion(regionAt(29)), 2), 1n, 'REM_MEM_REG with two fds');
  t.equal(await s.ack(REQ.ADD_MEM_REG, encodeSingleRegion(regionAt(31)), 1), 0n, 'and then fine');
  s.host.failing.add('addMemory');
  t.equal(await s.ack(REQ.ADD_MEM_REG, encodeSingleRegion(regionAt(41)), 1), 1n, 'the host failing to map is refused');
  t.equal(s.be.regions.length, 31, 'and leaves the table as it was');
});

t.test('memory changing under a live ring stops it first and restarts it where it stopped', async (t) => {
  const s = new Session();
  await s.ready();
  await mapRam(s);
  await startRing(s, 0);
  s.host.stopAt.set(0, 9);
  // QEMU replaces a region by REM then ADD: the ring's memory is briefly gone.
  t.equal(await s.ack(REQ.REM_MEM_REG, encodeSingleRegion(RAM)), 0n);
  t.same(s.host.names().slice(-2), ['stopQueue', 'removeMemory'], 'stopped before its memory went');
  t.notOk(s.host.running.has(0), 'not running without memory');
  const again: MemoryRegion = { ...RAM, mmapOffset: 0x1000n };
  t.equal(await s.ack(REQ.ADD_MEM_REG, encodeSingleRegion(again), 1), 0n);
  t.same(s.host.names().slice(-2), ['addMemory', 'startQueue'], 'runs again once its memory is back');
  t.equal(s.host.running.get(0)!.nextAvail, 9, 'from where it stopped');
  // The same table again: nothing moves, nothing stops.
  const calls = s.host.names().length;
  t.equal(await s.ack(REQ.SET_MEM_TABLE, encodeMemoryTable([again]), 1), 0n);
  t.same(s.host.names().slice(calls), ['replaceMemory'], 'a table that keeps the ring in place does not stop it');
  // Guest memory moved (a hostile table): the ring restarts at its new guest address.
  t.equal(await s.ack(REQ.SET_MEM_TABLE, encodeMemoryTable([{ ...again, guestAddress: 0x200000n }]), 1), 0n);
  t.same(s.host.names().slice(-3), ['stopQueue', 'replaceMemory', 'startQueue']);
  t.equal(s.host.running.get(0)!.descriptors, 0x200000 + 0x10000);
  // The host failing to replace: the table stays, the ring runs again as it was.
  s.host.failing.add('replaceMemory');
  t.equal(await s.ack(REQ.SET_MEM_TABLE, encodeMemoryTable([RAM]), 1), 1n);
  t.same(s.host.names().slice(-3), ['stopQueue', 'replaceMemory', 'startQueue']);
  t.equal(s.host.running.get(0)!.descriptors, 0x200000 + 0x10000);
  noViolations(t, s);
});

// --- rings ---------------------------------------------------------------------

t.test('a ring runs once kicked and enabled; GET_VRING_BASE stops it and reports where', async (t) => {
  const s = new Session(2);
  await s.ready();
  await mapRam(s);
  await s.send(REQ.SET_VRING_NUM, encodeVringState({ index: 1, num: 128 }));
  await s.send(REQ.SET_VRING_BASE, encodeVringState({ index: 1, num: 5 }));
  await s.send(REQ.SET_VRING_ADDR, encodeVringAddress(ringAddress(1)));
  await s.send(REQ.SET_VRING_KICK, encodeVringFile({ index: 1, noFd: true }));
  t.notOk(s.host.running.has(1), 'kicked but not enabled (protocol features acked)');
  t.same(s.host.calls.at(-1), ['setKick', 1, 'poll'], 'no fd: polling');
  await s.send(REQ.SET_VRING_ENABLE, encodeVringState({ index: 1, num: 1 }));
  t.same(s.host.running.get(1), { size: 128, descriptors: 0x20000, available: 0x20800, used: 0x21000, nextAvail: 5, features: s.be.ackedFeatures });
  await s.send(REQ.SET_VRING_CALL, encodeVringFile({ index: 1, noFd: false }), { fds: 1 });
  t.ok(s.host.running.has(1), 'a new call fd does not stop the ring');
  await s.send(REQ.SET_VRING_ENABLE, encodeVringState({ index: 1, num: 0 }));
  t.notOk(s.host.running.has(1), 'disabled: stopped');
  s.host.stopAt.set(1, 300);
  await s.send(REQ.SET_VRING_ENABLE, encodeVringState({ index: 1, num: 1 }));
  t.equal(s.host.running.get(1)!.nextAvail, 0, 're-enabled where the host stopped');
  const base = await s.ask(REQ.GET_VRING_BASE, encodeVringState({ index: 1, num: 0 }));
  t.same(decodeVringState(base.payload), { index: 1, num: 300 });
  t.same(decodeVringState((await s.ask(REQ.GET_VRING_BASE, encodeVringState({ index: 1, num: 0 }))).payload), { index: 1, num: 300 }, 'asked again, the same');
  await s.send(REQ.SET_VRING_ENABLE, encodeVringState({ index: 1, num: 1 }));
  t.notOk(s.host.running.has(1), 'stopped rings stay stopped until kicked again');
  noViolations(t, s);
});

t.test('without VHOST_USER_F_PROTOCOL_FEATURES acked a ring runs at its kick', async (t) => {
  const s = new Session();
  await s.ready({ protocolFeaturesBit: false });
  await mapRam(s);
  await s.send(REQ.SET_VRING_NUM, encodeVringState({ index: 0, num: 256 }));
  await s.send(REQ.SET_VRING_ADDR, encodeVringAddress(ringAddress(0)));
  await s.send(REQ.SET_VRING_KICK, encodeVringFile({ index: 0, noFd: false }), { fds: 1 });
  t.ok(s.host.running.has(0));
});

t.test('EVENT_IDX acked makes the rings two bytes longer', async (t) => {
  const s = new Session();
  await s.ready({ features: DEVICE_FEATURES | TRANSPORT_FEATURES });
  // The used ring of 128 entries ends exactly at the end of memory: fine without the event field, not with it.
  const small: MemoryRegion = { ...RAM, size: 0x11000n + 4n + 8n * 128n };
  await s.send(REQ.ADD_MEM_REG, encodeSingleRegion(small), { fds: 1 });
  await s.send(REQ.SET_VRING_NUM, encodeVringState({ index: 0, num: 128 }));
  t.equal(await s.ack(REQ.SET_VRING_ADDR, encodeVringAddress(ringAddress(0))), 1n);
  t.match((await s.send(REQ.SET_VRING_ADDR, encodeVringAddress(ringAddress(0)), { needReply: true })).refused, /used ring/);
});

t.test('ring checks: index, size, base, addresses, order, and no changes to a started ring', async (t) => {
  const s = new Session(2);
  await s.ready();
  await mapRam(s);
  const refusals: Array<[string, number, Buffer, number?]> = [
    ['NUM for ring 2 of 2', REQ.SET_VRING_NUM, encodeVringState({ index: 2, num: 128 })],
    ['NUM 0', REQ.SET_VRING_NUM, encodeVringState({ index: 0, num: 0 })],
    ['NUM 3', REQ.SET_VRING_NUM, encodeVringState({ index: 0, num: 3 })],
    ['NUM 2048', REQ.SET_VRING_NUM, encodeVringState({ index: 0, num: 2048 })],
    ['BASE past 16 bits', REQ.SET_VRING_BASE, encodeVringState({ index: 0, num: 0x10000 })],
    ['BASE for ring 7', REQ.SET_VRING_BASE, encodeVringState({ index: 7, num: 0 })],
    ['ADDR before NUM', REQ.SET_VRING_ADDR, encodeVringAddress(ringAddress(0))],
    ['KICK before NUM and ADDR', REQ.SET_VRING_KICK, encodeVringFile({ index: 0, noFd: false }), 1],
    ['CALL for ring 5', REQ.SET_VRING_CALL, encodeVringFile({ index: 5, noFd: false }), 1],
    ['ERR for ring 255', REQ.SET_VRING_ERR, encodeVringFile({ index: 255, noFd: true })],
    ['ENABLE for ring 2', REQ.SET_VRING_ENABLE, encodeVringState({ index: 2, num: 1 })],
    ['ENABLE 2', REQ.SET_VRING_ENABLE, encodeVringState({ index: 0, num: 2 })],
  ];
  for (const [what, req, payload, fds = 0] of refusals) t.equal(await s.ack(req, payload, fds), 1n, what);
  t.equal(await s.ack(REQ.SET_VRING_NUM, encodeVringState({ index: 0, num: 1024 })), 0n, 'NUM 1024, the maximum');
  const outside = { ...ringAddress(0), descriptor: RAM.userAddress + RAM.size - 0x100n };
  t.equal(await s.ack(REQ.SET_VRING_ADDR, encodeVringAddress(outside)), 1n, 'descriptor table running past the region');
  t.equal(await s.ack(REQ.SET_VRING_ADDR, encodeVringAddress({ ...ringAddress(0), used: 0x1000n })), 1n, 'used ring in no region');
  t.equal(await s.ack(REQ.SET_VRING_ADDR, encodeVringAddress({ ...ringAddress(0), descriptor: ringAddress(0).descriptor + 8n })), 1n, 'descriptor table not 16-byte aligned');
  t.equal(await s.ack(REQ.SET_VRING_ADDR, encodeVringAddress({ ...ringAddress(0), available: ringAddress(0).available + 1n })), 1n, 'available ring not 2-byte aligned');
  t.equal(await s.ack(REQ.SET_VRING_ADDR, encodeVringAddress(ringAddress(0, RAM.userAddress, 1))), 1n, 'the log flag');
  t.equal(await s.ack(REQ.SET_VRING_ADDR, encodeVringAddress(ringAddress(0))), 0n, 'good addresses');
  t.equal(await s.ack(REQ.SET_VRING_KICK, encodeVringFile({ index: 0, noFd: false }), 0), 1n, 'KICK without fd nor no-fd flag');
  t.equal(await s.ack(REQ.SET_VRING_KICK, encodeVringFile({ index: 0, noFd: true }), 1), 1n, 'KICK with the no-fd flag and an fd');
  t.equal(await s.ack(REQ.SET_VRING_CALL, encodeVringFile({ index: 0, noFd: false }), 2), 1n, 'CALL with two fds');
  t.equal(await s.ack(REQ.SET_VRING_KICK, encodeVringFile({ index: 0, noFd: false }), 1), 0n, 'KICK');
  t.equal(await s.ack(REQ.SET_VRING_NUM, encodeVringState({ index: 0, num: 64 })), 1n, 'NUM on a started ring');
  t.equal(await s.ack(REQ.SET_VRING_BASE, encodeVringState({ index: 0, num: 0 })), 1n, 'BASE on a started ring');
  t.equal(await s.ack(REQ.SET_VRING_ADDR, encodeVringAddress(ringAddress(1))), 1n, 'ADDR on a started ring');
  const base = await s.send(REQ.GET_VRING_BASE, encodeVringState({ index: 9, num: 0 }), { needReply: true });
  expectHangUp(t, base, 'GET_VRING_BASE out of range', /out of range/);
});

t.test('RESET_OWNER stops every ring and keeps memory', async (t) => {
  const s = new Session(2);
  await s.ready();
  await mapRam(s);
  await startRing(s, 0);
  await startRing(s, 1);
  t.equal(await s.ack(REQ.RESET_OWNER), 0n);
  t.equal(s.host.running.size, 0);
  t.equal(s.be.regions.length, 1);
  noViolations(t, s);
});

// --- config, inflight -----------------------------------------------------------

t.test('GET_CONFIG answers the bytes asked for, zero past the device config; errors are an empty reply', async (t) => {
  const s = new Session(4);
  await s.ready();
  const get = async (offset: number, size: number) => (await s.ask(REQ.GET_CONFIG, encodeConfig({ offset, flags: 0, data: Buffer.alloc(size) }))).payload;
  const whole = decodeConfig(await get(0, 60));
  t.ok(!isMalformed(whole) && whole.data.equals(blkConfig(4)));
  const part = decodeConfig(await get(34, 2));
  t.ok(!isMalformed(part) && part.offset === 34 && part.data.readUInt16LE(0) === 4, 'num_queues alone');
  const past = decodeConfig(await get(56, 16));
  t.ok(!isMalformed(past) && past.data.equals(Buffer.concat([blkConfig(4).subarray(56), Buffer.alloc(12)])), 'zero past the end');
  const far = decodeConfig(await get(200, 56));
  t.ok(!isMalformed(far) && far.data.equals(Buffer.alloc(56)), 'all zero far past the end');
  t.same(await get(250, 8), Buffer.alloc(0), 'past 256 bytes: the empty error reply');
  const short = await s.send(REQ.GET_CONFIG, encodeConfig({ offset: 0, flags: 0, data: Buffer.alloc(8) }).subarray(0, 15));
  t.same(decodeMessage(short.reply!.message), { header: { request: REQ.GET_CONFIG, flags: 5, size: 0 }, payload: Buffer.alloc(0) }, 'malformed: the empty error reply');
  t.ok(short.refused && !short.disconnect, 'answered, not hung up');
});

t.test('SET_CONFIG goes to the device, which may refuse', async (t) => {
  const s = new Session();
  await s.ready();
  t.equal(await s.ack(REQ.SET_CONFIG, encodeConfig({ offset: WCE_OFFSET, flags: 0, data: Buffer.from([1]) })), 0n, 'the writeback byte');
  t.equal(await s.ack(REQ.SET_CONFIG, encodeConfig({ offset: 0, flags: 0, data: Buffer.alloc(8) })), 1n, 'the capacity');
  t.equal(await s.ack(REQ.SET_CONFIG, encodeConfig({ offset: 59, flags: 0, data: Buffer.alloc(2) })), 1n, 'past the config');
  const ro = new Session(1, false);
  await ro.ready();
  t.equal(await ro.ack(REQ.SET_CONFIG, encodeConfig({ offset: WCE_OFFSET, flags: 0, data: Buffer.from([1]) })), 1n, 'a device without writeConfig');
});

t.test('inflight: GET creates an area sized for the queues, SET hands the front end’s back', async (t) => {
  const s = new Session(4);
  await s.ready();
  const asked = { mmapSize: 0n, mmapOffset: 0n, numQueues: 4, queueSize: 256 };
  const r = await s.ask(REQ.GET_INFLIGHT_FD, encodeInflight(asked), { needReply: true });
  t.same(decodeInflight(r.payload), { ...asked, mmapSize: BigInt(4 * 4160) }, 'four queues of 16 + 16 * 256 bytes, each rounded up to 64');
  t.same(r.fds, [900]);
  t.same(s.host.calls.at(-1), ['createInflight', { mmapSize: 4 * 4160, mmapOffset: 0, numQueues: 4, queueSize: 256 }], 'the host is told the layout');
  t.equal(inflightSize(1, 1), 64, 'each queue rounded up to 64 bytes');
  for (const [what, bad] of [
    ['no queues', { ...asked, numQueues: 0 }],
    ['more queues than the device', { ...asked, numQueues: 5 }],
    ['queue size not a power of two', { ...asked, queueSize: 100 }],
  ] as const) {
    expectHangUp(t, await s.send(REQ.GET_INFLIGHT_FD, encodeInflight(bad), { needReply: true }), `GET: ${what}`);
    const again = new Session(4);
    await again.ready();
    t.equal(await again.ack(REQ.SET_INFLIGHT_FD, encodeInflight({ ...bad, mmapSize: 1n << 20n }), 1), 1n, `SET: ${what}`);
  }
  const t2 = new Session(4);
  await t2.ready();
  const area = { mmapSize: BigInt(inflightSize(4, 256)), mmapOffset: 0n, numQueues: 4, queueSize: 256 };
  t.equal(await t2.ack(REQ.SET_INFLIGHT_FD, encodeInflight(area), 1), 0n);
  t.same(t2.host.calls.at(-1), ['setInflight', { mmapSize: inflightSize(4, 256), mmapOffset: 0, numQueues: 4, queueSize: 256 }]);
  t.equal(await t2.ack(REQ.SET_INFLIGHT_FD, encodeInflight({ ...area, mmapSize: 100n }), 1), 1n, 'an area too small');
  t.equal(await t2.ack(REQ.SET_INFLIGHT_FD, encodeInflight(area), 0), 1n, 'no fd');
});

// --- hostile framing and unknown requests ---------------------------------------

t.test('every handled request with a payload of the wrong size is refused, answered as the spec allows', async (t) => {
  const handled = [1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 25, 31, 32, 36, 37, 38, 39, 40];
  const withReply = new Set<number>([REQ.GET_FEATURES, REQ.GET_PROTOCOL_FEATURES, REQ.GET_VRING_BASE, REQ.GET_QUEUE_NUM, REQ.GET_INFLIGHT_FD, REQ.GET_MAX_MEM_SLOTS, REQ.GET_STATUS]);
  for (const req of handled) {
    const s = new Session();
    await s.ready();
    // 3 bytes is the wrong size for every form (status takes 1 or 8).
    const step = await s.send(req, Buffer.alloc(3), { needReply: true });
    if (req === REQ.GET_CONFIG) t.same(decodeMessage(step.reply!.message)!, { header: { request: req, flags: 5, size: 0 }, payload: Buffer.alloc(0) }, `request ${req}: empty error reply`);
    else if (withReply.has(req)) expectHangUp(t, step, `request ${req} (has its own reply)`);
    else t.equal(ackOf(step), 1n, `request ${req}: ack 1`);
    const quiet = new Session();
    await quiet.ready({ replyAck: false });
    const hang = await quiet.send(req, Buffer.alloc(3));
    if (req === REQ.GET_CONFIG) t.ok(hang.reply && !hang.disconnect, `request ${req} without REPLY_ACK: still the empty reply`);
    else expectHangUp(t, hang, `request ${req} without REPLY_ACK`);
  }
});

t.test('fds with a request that takes none are closed and the request goes on', async (t) => {
  const s = new Session();
  await s.ready();
  const step = await s.send(REQ.SET_VRING_NUM, encodeVringState({ index: 0, num: 64 }), { needReply: true, fds: 3 });
  t.equal(ackOf(step), 0n);
  t.equal(step.close.length, 3);
  const features = await s.send(REQ.GET_FEATURES, undefined, { fds: 1 });
  t.ok(features.reply, 'answered');
  t.equal(features.close.length, 1, 'and its fd closed');
});

t.test('unknown and unsupported requests: ack 1 when one can be sent, else hang up', async (t) => {
  for (const req of [0, 45, 99, 0xffffffff, REQ.SET_LOG_BASE, REQ.SET_LOG_FD, REQ.SET_BACKEND_REQ_FD, REQ.RESET_DEVICE, REQ.VRING_KICK, REQ.SEND_RARP]) {
    const s = new Session();
    await s.ready();
    const step = await s.send(req, encodeU64(0n), { needReply: true, fds: 1 });
    t.equal(ackOf(step), 1n, `request ${req}: ack 1`);
    t.equal(step.close.length, 1, 'its fd closed');
    t.match(step.refused, /not supported|not offered|failed/);
    expectHangUp(t, await s.send(req, encodeU64(0n)), `request ${req} without NEED_REPLY`);
  }
  for (const req of [REQ.POSTCOPY_ADVISE, REQ.IOTLB_MSG, REQ.GET_SHMEM_CONFIG, REQ.CHECK_DEVICE_STATE, REQ.GET_SHARED_OBJECT]) {
    const s = new Session();
    await s.ready();
    expectHangUp(t, await s.send(req, encodeU64(0n), { needReply: true }), `request ${req} (a reply of its own we cannot make)`);
  }
});

t.test('after hanging up, every message is answered with the same disconnect and its fds closed', async (t) => {
  const s = new Session();
  const first = await s.send(REQ.SET_VRING_NUM, encodeVringState({ index: 0, num: 64 }));
  t.ok(first.disconnect);
  const later = await s.send(REQ.GET_FEATURES, undefined, { fds: 2 });
  t.same(later.reply, null);
  t.equal(later.disconnect, first.disconnect);
  t.equal(later.close.length, 2);
});

// --- property: any sequence ------------------------------------------------------

type Msg = { request: number; payload: Buffer; needReply: boolean; fds: number };

const anyMessage: fc.Arbitrary<Msg> = (() => {
  const q = fc.integer({ min: 0, max: 3 });
  const num = fc.constantFrom(0, 1, 3, 64, 128, 256, 0x10000);
  const user = fc.constantFrom(0n, RAM.userAddress, RAM.userAddress + 0x80000n, 0x7e0000000000n);
  const gpa = fc.constantFrom(0n, 0x80000n, 0x100000n);
  const region = fc.record({ guestAddress: gpa, size: fc.constantFrom(0n, 0x80000n, 0x100000n), userAddress: user, mmapOffset: fc.constant(0n) });
  const payload = fc.oneof(
    fc.tuple(fc.constant(REQ.SET_VRING_NUM), fc.tuple(q, num).map(([index, n]) => encodeVringState({ index, num: n }))),
    fc.tuple(fc.constant(REQ.SET_VRING_BASE), fc.tuple(q, num).map(([index, n]) => encodeVringState({ index, num: n }))),
    fc.tuple(fc.constant(REQ.SET_VRING_ENABLE), fc.tuple(q, fc.integer({ min: 0, max: 2 })).map(([index, n]) => encodeVringState({ index, num: n }))),
    fc.tuple(fc.constant(REQ.GET_VRING_BASE), q.map((index) => encodeVringState({ index, num: 0 }))),
    fc.tuple(fc.constant(REQ.SET_VRING_ADDR), fc.tuple(q, user).map(([index, u]) => encodeVringAddress(ringAddress(index, u)))),
    fc.tuple(fc.constantFrom(REQ.SET_VRING_KICK, REQ.SET_VRING_CALL, REQ.SET_VRING_ERR), fc.tuple(q, fc.boolean()).map(([index, noFd]) => encodeVringFile({ index, noFd }))),
    fc.tuple(fc.constantFrom(REQ.ADD_MEM_REG, REQ.REM_MEM_REG), region.map(encodeSingleRegion)),
    fc.tuple(fc.constant(REQ.SET_MEM_TABLE), fc.array(region, { maxLength: 3 }).map((r) => encodeMemoryTable(r))),
    fc.tuple(fc.constantFrom(REQ.SET_OWNER, REQ.RESET_OWNER, REQ.GET_FEATURES, REQ.GET_STATUS), fc.constant(Buffer.alloc(0))),
    fc.tuple(fc.integer({ min: 0, max: 50 }), fc.uint8Array({ maxLength: 48 }).map((a) => Buffer.from(a))),
  );
  return fc.tuple(payload, fc.boolean(), fc.integer({ min: 0, max: 2 }), fc.nat(60)).map(([[request, p], needReply, fds, cut]) => ({
    request,
    payload: cut < 4 ? p.subarray(0, cut) : p,
    needReply,
    fds,
  }));
})();

t.test('property: any message sequence keeps the fd ledger, the host contract and the framing', async (t) => {
  await fc.assert(
    fc.asyncProperty(fc.boolean(), fc.array(anyMessage, { maxLength: 40 }), async (replyAck, msgs) => {
      const s = new Session(2);
      await s.ready({ replyAck });
      await mapRam(s);
      let hungUp = false;
      for (const m of msgs) {
        const step = await s.send(m.request, m.payload, { needReply: m.needReply, fds: m.fds });
        if (hungUp && !step.disconnect) return false;
        hungUp ||= step.disconnect !== undefined;
        for (let i = 0; i < 2; i++) if ((s.be.rings[i]!.running !== null) !== s.host.running.has(i)) return false;
      }
      await s.be.shutdown();
      return s.host.violations.length === 0 && s.host.running.size === 0;
    }),
    { seed: 3, numRuns: 300 },
  );
  t.pass('300 sequences');
});
