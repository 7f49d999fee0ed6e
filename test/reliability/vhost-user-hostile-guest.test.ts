// A hostile guest never takes the vblk server down. Property tests at the
// server level, through the TypeScript driver's raw side: each run opens
// a fresh connection, puts one kind of bad request in its ring 0 (or
// sends one bad message) and checks vblk's treatment, which is the one
// virtqueue.ts and virtio-blk.ts set out from the spec:
//  - a chain that walks to its end but is wrong (a buffer outside every
//    region, readable after writable, more than 2^32 bytes, a length that
//    wraps the address space, the wrong data direction) is answered
//    IOERR in its last device-writable byte;
//  - a chain that cannot be walked or has no status byte (a loop, an
//    indirect table inside an indirect table or looping itself, a head
//    past the table, avail idx more than the queue size ahead, a status
//    byte that is not device-writable or does not map) stops that ring:
//    the device needs reset, signalled on the ring's error eventfd;
//  - a bad message (a ring size that is not a power of two, a memory
//    table whose regions overlap) is refused with a failed ack when the
//    front end asked for one, and ends the connection when it did not.
// After every run the same connection's other ring (when it still has
// one), a well-behaved driver on another export's socket, and at the end
// a fresh connection all do correct I/O, and the server is still up.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import t from 'tap';
import { FLAG_NEED_REPLY, REQ, VERSION } from '../../src/protocol/vhost-user/constants.js';
import { encodeMemoryTable, encodeSingleRegion, encodeVringState } from '../../src/protocol/vhost-user/messages.js';
import {
  VIRTIO_BLK_S,
  VIRTIO_BLK_T,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
} from '../../src/protocol/vhost-user/virtio-constants.js';
import { serve, tempDir } from '../helpers/server.js';
import { VhostUserDriver, type RawOutcome } from '../helpers/vhost-user-driver.js';
import { encodeDescriptor, type Descriptor } from '../helpers/virtio-guest.js';

const IMAGE_SIZE = 8 << 20;
const MEMORY = 4 << 20;
const QUEUE_SIZE = 16;
const RUNS = 60;
const R = 0;
const W = VIRTQ_DESC_F_WRITE;
const NEXT = VIRTQ_DESC_F_NEXT;
const INDIRECT = VIRTQ_DESC_F_INDIRECT;

/** Where a run expects its request to end. */
type Expect = { kind: 'ioerr'; statusAt: number } | { kind: 'broken' };

t.test('a hostile guest never takes the server down', async (t) => {
  const dir = tempDir(t);
  const imageA = path.join(dir, 'a.raw');
  const imageB = path.join(dir, 'b.raw');
  for (const image of [imageA, imageB]) {
    fs.writeFileSync(image, '');
    fs.truncateSync(image, IMAGE_SIZE);
  }
  const hostileSocket = path.join(dir, 'a.sock');
  const witnessSocket = path.join(dir, 'b.sock');
  const served = await serve(
    t,
    [imageA, '--vhost-user-blk', hostileSocket, '--export', `b=${imageB}`, '--vhost-user-blk', `b=${witnessSocket}`, '--num-queues', '2'],
    { socket: false },
  );
  const witness = await VhostUserDriver.connect(witnessSocket, { memoryMiB: 4 });
  t.teardown(() => witness.close().catch(() => undefined));

  /** A write and a read-back of random data: true when both succeed and the data matches. */
  async function correctIo(driver: VhostUserDriver, queue: number): Promise<boolean> {
    const data = crypto.randomBytes(4096);
    const sector = crypto.randomInt(IMAGE_SIZE / 512 - 8);
    const written = await driver.write(queue, sector, data);
    const read = await driver.read(queue, sector, 4096);
    return written.status === VIRTIO_BLK_S.OK && read.status === VIRTIO_BLK_S.OK && read.data.equals(data);
  }

  async function hostileDriver(numQueues = 2): Promise<VhostUserDriver> {
    return VhostUserDriver.connect(hostileSocket, { memoryMiB: MEMORY >> 20, numQueues, queueSize: QUEUE_SIZE, timeoutMs: 5000 });
  }

  /** Guest memory of `length` bytes holding `fill`. */
  function place(driver: VhostUserDriver, bytes: Buffer): number {
    const gpa = driver.heap.alloc(bytes.length, 16);
    if (gpa === null) throw new Error('hostile test: guest memory exhausted');
    driver.memory.write(gpa, bytes);
    return gpa;
  }

  function header(driver: VhostUserDriver, type: number = VIRTIO_BLK_T.IN): number {
    const h = Buffer.alloc(16);
    h.writeUInt32LE(type, 0);
    return place(driver, h);
  }

  /** Writes descriptors at table indexes 0, 1, ... of ring 0. */
  function table(driver: VhostUserDriver, descriptors: Descriptor[]): void {
    const ring = driver.ring(0);
    descriptors.forEach((d, i) => ring.writeDescriptor(ring.rings.desc, i, d));
  }

  /** An indirect table in guest memory. */
  function indirectTable(driver: VhostUserDriver, descriptors: Descriptor[]): number {
    return place(driver, Buffer.concat(descriptors.map(encodeDescriptor)));
  }

  /**
   * One run: `setUp` places a request in ring 0 of a fresh connection and
   * says what must become of it; then the checks every run shares.
   */
  async function hostileRun(setUp: (driver: VhostUserDriver) => { head: number; expect: Expect; jump?: number }): Promise<void> {
    const driver = await hostileDriver();
    try {
      const { head, expect, jump } = setUp(driver);
      if (jump !== undefined) driver.ring(0).publishIdx(jump);
      const outcome: RawOutcome = await driver.submitRaw(0, head, 5000);
      if (expect.kind === 'broken') {
        if (outcome.kind !== 'broken') throw new Error(`expected the ring to need reset, got ${JSON.stringify(outcome)}`);
      } else {
        if (outcome.kind !== 'used') throw new Error(`expected IOERR, got ${JSON.stringify(outcome)}`);
        const status = driver.memory.read(expect.statusAt, 1)[0];
        if (status !== VIRTIO_BLK_S.IOERR) throw new Error(`expected IOERR in the last writable byte, found ${status}`);
      }
      if (!(await correctIo(driver, 1))) throw new Error("the connection's other ring no longer does correct I/O");
    } finally {
      await driver.close();
    }
    if (!(await correctIo(witness, 0))) throw new Error('the witness on the other export no longer does correct I/O');
  }

  const property = (name: string, arb: fc.Arbitrary<unknown>, run: (v: never) => Promise<void>) =>
    t.test(name, async (t) => {
      await fc.assert(fc.asyncProperty(arb, run as (v: unknown) => Promise<void>), { numRuns: RUNS });
      t.pass(`${RUNS} runs: treated as expected, and the server went on serving`);
    });

  const outsideAddress = fc.oneof(
    fc.bigInt({ min: BigInt(MEMORY), max: 2n ** 64n - 1n }),
    // Inside, but running past the end (the status byte, of 1 byte, is kept clear of these).
    fc.integer({ min: 1, max: 15 }).map((back) => BigInt(MEMORY - back)),
  );

  await property(
    'a buffer outside every region: IOERR, or a reset when it is the status byte',
    fc.record({ which: fc.constantFrom('header', 'data', 'status'), addr: outsideAddress }).filter(({ which, addr }) => which !== 'status' || addr >= BigInt(MEMORY)),
    async ({ which, addr }: { which: string; addr: bigint }) =>
      hostileRun((d) => {
        const data = place(d, Buffer.alloc(512));
        const status = place(d, Buffer.from([0xff]));
        table(d, [
          { addr: which === 'header' ? addr : header(d), len: 16, flags: R | NEXT, next: 1 },
          { addr: which === 'data' ? addr : data, len: 512, flags: W | NEXT, next: 2 },
          { addr: which === 'status' ? addr : status, len: 1, flags: W, next: 0 },
        ]);
        return { head: 0, expect: which === 'status' ? { kind: 'broken' } : { kind: 'ioerr', statusAt: status } };
      }),
  );

  await property(
    'readable and writable flags in the wrong places: IOERR in the last writable byte, a reset when none is writable',
    fc
      .record({ write: fc.boolean(), flags: fc.tuple(fc.boolean(), fc.boolean(), fc.boolean()) })
      .filter(({ write, flags }) => flags.join() !== (write ? [false, false, true] : [false, true, true]).join()),
    async ({ write, flags }: { write: boolean; flags: [boolean, boolean, boolean] }) =>
      hostileRun((d) => {
        const parts = [header(d, write ? VIRTIO_BLK_T.OUT : VIRTIO_BLK_T.IN), place(d, Buffer.alloc(512)), place(d, Buffer.from([0xff]))];
        const lengths = [16, 512, 1];
        table(d, parts.map((addr, i) => ({ addr, len: lengths[i], flags: (flags[i] ? W : R) | (i < 2 ? NEXT : 0), next: i + 1 })));
        const last = flags.lastIndexOf(true);
        if (last < 0) return { head: 0, expect: { kind: 'broken' } };
        const statusAt = parts[last] + lengths[last] - 1;
        d.memory.write(statusAt, Buffer.from([0xff]));
        return { head: 0, expect: { kind: 'ioerr', statusAt } };
      }),
  );

  await property(
    'lengths that overflow: 2^32 - 1, a chain past 2^32 bytes, an address + length that wraps 2^64: IOERR',
    fc.oneof(
      fc.constant({ kind: 'max' as const, back: 0n }),
      fc.constant({ kind: 'sum' as const, back: 0n }),
      fc.bigInt({ min: 1n, max: 4096n }).map((back) => ({ kind: 'wrap' as const, back })),
    ),
    async ({ kind, back }: { kind: 'max' | 'sum' | 'wrap'; back: bigint }) =>
      hostileRun((d) => {
        const data = place(d, Buffer.alloc(512));
        const status = place(d, Buffer.from([0xff]));
        const big =
          kind === 'max'
            ? [{ addr: data, len: 0xffffffff }]
            : kind === 'sum'
              ? [{ addr: data, len: 0x80000000 }, { addr: data, len: 0x80000000 }]
              : [{ addr: 2n ** 64n - back, len: 8192 }];
        table(d, [
          { addr: header(d), len: 16, flags: R | NEXT, next: 1 },
          ...big.map((b, i) => ({ ...b, flags: W | NEXT, next: i + 2 })),
          { addr: status, len: 1, flags: W, next: 0 },
        ]);
        return { head: 0, expect: { kind: 'ioerr', statusAt: status } };
      }),
  );

  await property(
    'chains that loop, in the table or in an indirect table: the ring needs reset',
    fc.record({ indirect: fc.boolean(), length: fc.integer({ min: 1, max: QUEUE_SIZE }), back: fc.nat() }),
    async ({ indirect, length, back }: { indirect: boolean; length: number; back: number }) =>
      hostileRun((d) => {
        const status = place(d, Buffer.from([0xff]));
        const chain = Array.from({ length }, (_, i) => ({
          addr: i === 0 ? header(d) : status,
          len: i === 0 ? 16 : 1,
          flags: (i === 0 ? R : W) | NEXT,
          next: i + 1 < length ? i + 1 : back % length,
        }));
        if (indirect) table(d, [{ addr: indirectTable(d, chain), len: 16 * length, flags: INDIRECT, next: 0 }]);
        else table(d, chain);
        return { head: 0, expect: { kind: 'broken' } };
      }),
  );

  await property(
    'an indirect descriptor inside an indirect table: the ring needs reset',
    fc.record({ at: fc.integer({ min: 0, max: 2 }), next: fc.boolean() }),
    async ({ at, next }: { at: number; next: boolean }) =>
      hostileRun((d) => {
        const status = place(d, Buffer.from([0xff]));
        const inner = indirectTable(d, [{ addr: status, len: 1, flags: W, next: 0 }]);
        const entries: Descriptor[] = [
          { addr: header(d), len: 16, flags: R | NEXT, next: 1 },
          { addr: place(d, Buffer.alloc(512)), len: 512, flags: W | NEXT, next: 2 },
          { addr: status, len: 1, flags: W, next: 0 },
        ];
        entries[at] = { addr: inner, len: 16, flags: INDIRECT | (next && at < 2 ? NEXT : 0), next: at + 1 };
        table(d, [{ addr: indirectTable(d, entries), len: 16 * entries.length, flags: INDIRECT, next: 0 }]);
        return { head: 0, expect: { kind: 'broken' } };
      }),
  );

  await property(
    'a head past the table, or avail idx more than the queue size ahead: the ring needs reset',
    fc.oneof(
      fc.integer({ min: QUEUE_SIZE, max: 0xffff }).map((head) => ({ head, jump: undefined })),
      fc.integer({ min: QUEUE_SIZE, max: 0xfffe }).map((jump) => ({ head: 0, jump })),
    ),
    async ({ head, jump }: { head: number; jump: number | undefined }) =>
      hostileRun((d) => {
        table(d, [{ addr: header(d), len: 16, flags: R | NEXT, next: 1 }, { addr: place(d, Buffer.from([0xff])), len: 1, flags: W, next: 0 }]);
        return { head, jump, expect: { kind: 'broken' } };
      }),
  );

  /** A bad message: refused with a failed ack under NEED_REPLY (and the connection works on), else the connection ends. */
  async function badMessage(needReply: boolean, send: (d: VhostUserDriver, flags: number) => Promise<bigint | null>): Promise<void> {
    const driver = await hostileDriver(1);
    try {
      const ack = await send(driver, VERSION | (needReply ? FLAG_NEED_REPLY : 0));
      if (needReply) {
        if (ack === null || ack === 0n) throw new Error(`expected a failed ack, got ${ack}`);
        if (!(await correctIo(driver, 0))) throw new Error('the connection no longer does correct I/O after a refusal');
      } else {
        const outcome = await driver.submitRaw(0, QUEUE_SIZE - 1, 5000);
        if (outcome.kind !== 'closed') throw new Error(`expected the server to close the connection, got ${JSON.stringify(outcome)}`);
      }
    } finally {
      await driver.close();
    }
    if (!(await correctIo(witness, 0))) throw new Error('the witness on the other export no longer does correct I/O');
  }

  async function sendBad(d: VhostUserDriver, flags: number, request: number, payload: Buffer, fds: number[] = []): Promise<bigint | null> {
    if (flags & FLAG_NEED_REPLY) {
      const reply = await d.channel.call(request, payload, { flags, fds });
      return reply.payload.readBigUInt64LE(0);
    }
    await d.channel.post(request, payload, { flags, fds });
    return null;
  }

  await property(
    'a ring size that is not a power of two (SET_VRING_NUM): refused',
    fc.record({
      num: fc.integer({ min: 0, max: 0xffffffff }).filter((n) => n === 0 || (n & (n - 1)) !== 0 || n > 1024),
      needReply: fc.boolean(),
    }),
    async ({ num, needReply }: { num: number; needReply: boolean }) =>
      badMessage(needReply, (d, flags) => sendBad(d, flags, REQ.SET_VRING_NUM, encodeVringState({ index: 1, num }))),
  );

  await property(
    'a memory table whose regions overlap (SET_MEM_TABLE, ADD_MEM_REG): refused',
    fc.record({
      add: fc.boolean(),
      space: fc.constantFrom('guest', 'user'),
      shift: fc.integer({ min: 0, max: (MEMORY >> 12) - 1 }),
      needReply: fc.boolean(),
    }),
    async ({ add, space, shift, needReply }: { add: boolean; space: string; shift: number; needReply: boolean }) =>
      badMessage(needReply, (d, flags) => {
        const [mine] = d.regions;
        // A second region over the first, in guest-physical or in user space, the other space well apart.
        const other = {
          guestAddress: space === 'guest' ? mine.guestAddress + BigInt(shift << 12) : 1n << 40n,
          userAddress: space === 'user' ? mine.userAddress + BigInt(shift << 12) : 1n << 44n,
          size: mine.size,
          mmapOffset: 0n,
        };
        const memfd = d.memfd;
        if (add) return sendBad(d, flags, REQ.ADD_MEM_REG, encodeSingleRegion(other), [memfd]);
        return sendBad(d, flags, REQ.SET_MEM_TABLE, encodeMemoryTable([mine, other]), [memfd, memfd]);
      }),
  );

  t.equal(served.proc.exitCode, null, 'the server is still running');
  const fresh = await VhostUserDriver.connect(hostileSocket, { memoryMiB: 4, numQueues: 2 });
  t.ok(await correctIo(fresh, 0), 'a fresh connection does correct I/O');
  await fresh.close();
  t.ok(await correctIo(witness, 0), 'and so does the witness');
  const resets = served.logs().filter((l) => l.msg === 'vhost-user queue stopped: the device needs reset').length;
  t.ok(resets > 0, `the server logged the rings it stopped (${resets})`);
});
