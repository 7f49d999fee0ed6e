// Inflight I/O tracking (protocol/vhost-user/inflight.ts) through the split
// virtqueue: what a back end records while it pops and pushes, and what
// one started after a crash redoes. The crash is simulated: the queue
// object is dropped while guest memory and the inflight region stay, as
// they do when vblk is killed and QEMU keeps both. The property: after any
// mix of pops, out-of-order pushes and a crash (also in the middle of a
// push), the new queue pops exactly the heads that were in flight, in the
// order they were first popped, then the ones never popped, and never a
// head already returned. Without the region (the negative control) an
// out-of-order completion is redone and an in-flight request is lost.

import fc from 'fast-check';
import t from 'tap';
import { InflightLog, inflightQueueRegionSize } from '../src/protocol/vhost-user/inflight.js';
import { SplitVirtqueue } from '../src/protocol/vhost-user/virtqueue.js';
import { BufferGuestMemory, GuestAllocator, VirtioGuestQueue } from './helpers/virtio-guest.js';

const BASE = 0x100000;
const SIZE = 16;

function setup() {
  const memory = new BufferGuestMemory([{ gpa: BASE, buffer: Buffer.alloc(1 << 20) }]);
  const alloc = new GuestAllocator(BASE, BASE + (1 << 20));
  const guest = VirtioGuestQueue.layout(memory, alloc, SIZE);
  const region = Buffer.alloc(inflightQueueRegionSize(SIZE));
  const open = (lastAvailIdx: number, tracked = true) =>
    new SplitVirtqueue({ size: SIZE, ...guest.deviceRings(), memory, eventIdx: false, lastAvailIdx, inflight: tracked ? new InflightLog(region, SIZE) : undefined });
  /** Offers a one-buffer chain; returns its head. */
  const offer = (): number => {
    const head = guest.addChain([{ gpa: alloc.alloc(512), length: 512, writable: true }]);
    guest.publish();
    return head;
  };
  return { memory, guest, region, open, offer };
}

function popHead(q: SplitVirtqueue): number | null {
  const p = q.pop();
  if (p === null) return null;
  if (p.kind !== 'chain') throw new Error(`unexpected ${p.kind}`);
  return p.head;
}

function popAll(q: SplitVirtqueue): number[] {
  const heads: number[] = [];
  for (let h = popHead(q); h !== null; h = popHead(q)) heads.push(h);
  return heads;
}

t.test('a fresh region is taken over; pops mark heads in order, pushes clear them', async (t) => {
  const { region, open, offer } = setup();
  region.fill(0xee, 16); // whatever was there before version 1 means nothing
  region.writeUInt16LE(0, 8);
  const q = open(0);
  t.equal(q.redoing, 0, 'nothing to redo in a fresh region');
  t.equal(region.readUInt16LE(8), 1, 'version 1');
  t.equal(region.readUInt16LE(10), SIZE, 'desc_num');
  t.equal(region.readUInt16LE(14), 0, 'used_idx');
  const a = offer();
  const b = offer();
  t.same([popHead(q), popHead(q)], [a, b]);
  const entry = (h: number) => ({ inflight: region[16 + 16 * h], counter: region.readBigUInt64LE(16 + 16 * h + 8) });
  t.equal(entry(a).inflight, 1);
  t.equal(entry(b).inflight, 1);
  t.ok(entry(a).counter < entry(b).counter, 'counters follow the pop order');
  q.push(b, 0);
  t.equal(entry(b).inflight, 0, 'a pushed head is no longer in flight');
  t.equal(entry(a).inflight, 1, 'the other still is');
  t.equal(region.readUInt16LE(12), b, 'last_batch_head');
  t.equal(region.readUInt16LE(14), 1, 'used_idx follows the ring');
});

type Step = { kind: 'offer' } | { kind: 'pop' } | { kind: 'push'; pick: number };

const steps = fc.array(
  fc.oneof(
    fc.constant<Step>({ kind: 'offer' }),
    fc.constant<Step>({ kind: 'pop' }),
    fc.nat(100).map((pick): Step => ({ kind: 'push', pick })),
  ),
  { maxLength: 80 },
);

/** Runs the steps on a tracked queue; gives what was in flight (pop order) and what was offered but never popped. */
function runUntilCrash(s: ReturnType<typeof setup>, plan: Step[]) {
  const q = s.open(0);
  const inFlight: number[] = [];
  const waiting: number[] = [];
  for (const step of plan) {
    if (step.kind === 'offer' && inFlight.length + waiting.length < SIZE) waiting.push(s.offer());
    else if (step.kind === 'pop' && waiting.length > 0) {
      const head = popHead(q);
      if (head !== waiting.shift()) throw new Error('popped out of order');
      inFlight.push(head!);
    } else if (step.kind === 'push' && inFlight.length > 0) {
      const [head] = inFlight.splice(step.pick % inFlight.length, 1);
      q.push(head!, 1);
    }
  }
  return { q, inFlight, waiting };
}

t.test('property: after a crash, exactly the heads in flight are redone, in pop order, then the rest', async (t) => {
  fc.assert(
    fc.property(steps, fc.boolean(), (plan, midPush) => {
      const s = setup();
      const { q, inFlight, waiting } = runUntilCrash(s, plan);
      if (midPush && inFlight.length > 0) {
        // Die inside push(): the used element and used idx are written, the flag and the region's used_idx not yet.
        const head = inFlight.pop()!;
        const regionUsed = s.region.readUInt16LE(14);
        q.push(head, 1);
        s.region[16 + 16 * head] = 1;
        s.region.writeUInt16LE(regionUsed, 14);
      }
      const again = s.open(s.guest.usedIdx);
      const popped = popAll(again);
      const want = [...inFlight, ...waiting];
      if (JSON.stringify(popped) !== JSON.stringify(want)) {
        throw new Error(`popped ${JSON.stringify(popped)}, expected ${JSON.stringify(want)}`);
      }
    }),
    { seed: 12, numRuns: 300 },
  );
  t.pass('300 runs');
});

t.test('negative control: without the region a restart redoes a returned head and loses one in flight', async (t) => {
  const s = setup();
  const q = s.open(0, false);
  const a = s.offer();
  const b = s.offer();
  t.same([popHead(q), popHead(q)], [a, b]);
  q.push(b, 1); // b finished first; a is in flight when the back end dies
  const again = s.open(s.guest.usedIdx, false); // QEMU resumes at the used idx
  const popped = popAll(again);
  t.same(popped, [b], 'b, already returned, is popped again; a is never seen');
  t.not(JSON.stringify(popped), JSON.stringify([a]), 'what the tracked queue would redo');
});

t.test('a region too small for the ring is refused', async (t) => {
  t.throws(() => new InflightLog(Buffer.alloc(16 + 16 * 7), 8), /too small/);
});
