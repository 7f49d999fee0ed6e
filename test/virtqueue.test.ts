// The split virtqueue against a guest laid out in plain Buffers: chains
// direct and indirect, views over memory cut into pieces, the used ring
// byte by byte, notification suppression with and without EVENT_IDX
// across the 16-bit wrap, every hostile descriptor shape sorted into
// 'broken' or 'malformed', and two properties: random valid traffic pops
// exactly what a model of the guest put there, and random descriptor
// tables never throw, never loop and never yield memory outside a region.

import fc from 'fast-check';
import t from 'tap';
import type { GuestMemory } from '../src/protocol/vhost-user/guest-memory.js';
import {
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_DESC_SIZE,
} from '../src/protocol/vhost-user/virtio-constants.js';
import {
  MAX_CHAIN_BYTES,
  ringLayoutError,
  ringSizes,
  SplitVirtqueue,
  vringNeedEvent,
  type Chain,
  type Popped,
  type Segment,
} from '../src/protocol/vhost-user/virtqueue.js';
import {
  BufferGuestMemory,
  encodeDescriptor,
  GuestAllocator,
  VirtioGuestQueue,
  type BufferSpec,
} from './helpers/virtio-guest.js';

const BASE = 0x100000;
const RUNS = { seed: 7, numRuns: 150 };
const u16 = fc.integer({ min: 0, max: 0xffff });

interface Setup {
  memory: BufferGuestMemory;
  alloc: GuestAllocator;
  guest: VirtioGuestQueue;
  queue: SplitVirtqueue;
}

function setup(o: { size?: number; eventIdx?: boolean; splitEvery?: number; startIdx?: number; bytes?: number } = {}): Setup {
  const size = o.size ?? 8;
  const bytes = o.bytes ?? 1 << 20;
  const memory = new BufferGuestMemory([{ gpa: BASE, buffer: Buffer.alloc(bytes) }], { splitEvery: o.splitEvery });
  const alloc = new GuestAllocator(BASE, BASE + bytes);
  const guest = VirtioGuestQueue.layout(memory, alloc, size, { indirectEntries: 8, startIdx: o.startIdx });
  const queue = new SplitVirtqueue({
    size,
    ...guest.deviceRings(),
    memory,
    eventIdx: o.eventIdx ?? false,
    lastAvailIdx: o.startIdx ?? 0,
  });
  return { memory, alloc, guest, queue };
}

function chain(p: Popped | null): Chain {
  if (p?.kind !== 'chain') throw new Error(`expected a chain, got ${JSON.stringify(p && { ...p, segments: undefined })}`);
  return p;
}

/** Where a segment's views lie: one contiguous guest range, checked. */
function segmentRange(memory: BufferGuestMemory, seg: Segment): { gpa: number; length: number; writable: boolean } {
  let start = -1;
  let end = -1;
  for (const v of seg.views) {
    const at = memory.locate(v);
    if (!at) throw new Error('a view lies outside guest memory');
    if (start < 0) start = at.gpa;
    else if (at.gpa !== end) throw new Error(`views are not contiguous: ${at.gpa} after ${end}`);
    end = at.gpa + at.length;
  }
  const length = seg.views.reduce((n, v) => n + v.length, 0);
  if (length !== seg.length) throw new Error(`views hold ${length} bytes, the segment says ${seg.length}`);
  return { gpa: start < 0 ? -1 : start, length, writable: seg.writable };
}

function buffers(alloc: GuestAllocator, specs: [number, boolean][]): BufferSpec[] {
  return specs.map(([length, writable]) => ({ gpa: alloc.alloc(Math.max(length, 1), 1), length, writable }));
}

// --- layout -------------------------------------------------------------------

t.test('ring sizes and layout checks: power-of-two sizes, alignment 16/2/4, lengths', async (t) => {
  t.same(ringSizes(256), { desc: 4096, avail: 518, used: 2054 });
  const ab = new ArrayBuffer(16384);
  const at = (off: number, len: number) => Buffer.from(ab, off, len);
  const ok = { desc: at(0, 128), avail: at(1024, 22), used: at(2048, 70) };
  t.equal(ringLayoutError(8, ok.desc, ok.avail, ok.used), null);
  for (const size of [0, 3, 6, 65536, 32769, 1.5, -8]) t.match(ringLayoutError(size, ok.desc, ok.avail, ok.used), /power of two/);
  t.equal(ringLayoutError(32768, at(0, 0), at(0, 0), at(0, 0))?.includes('power of two'), false, 'the largest size is allowed');
  t.match(ringLayoutError(8, at(8, 128), ok.avail, ok.used), /descriptor table is not 16-byte aligned/);
  t.match(ringLayoutError(8, ok.desc, at(1025, 22), ok.used), /available ring is not 2-byte aligned/);
  t.match(ringLayoutError(8, ok.desc, ok.avail, at(2050, 70)), /used ring is not 4-byte aligned/);
  t.match(ringLayoutError(8, at(0, 127), ok.avail, ok.used), /descriptor table is 127 bytes, a queue of 8 needs 128/);
  t.match(ringLayoutError(8, ok.desc, at(1024, 21), ok.used), /available ring is 21 bytes/);
  t.match(ringLayoutError(8, ok.desc, ok.avail, at(2048, 69)), /used ring is 69 bytes/);
  const memory = new BufferGuestMemory([]);
  t.throws(() => new SplitVirtqueue({ size: 12, ...ok, memory, eventIdx: false }), RangeError);
  t.throws(() => new SplitVirtqueue({ size: 8, ...ok, memory, eventIdx: false, lastAvailIdx: 65536 }), RangeError);
});

// --- chains -------------------------------------------------------------------

t.test('a direct chain pops as mapped segments in order, then the queue is empty', async (t) => {
  const { memory, alloc, guest, queue } = setup();
  t.equal(queue.pop(), null, 'nothing published yet');
  const specs = buffers(alloc, [
    [16, false],
    [4096, false],
    [512, true],
    [1, true],
  ]);
  const head = guest.addChain(specs);
  t.equal(queue.pop(), null, 'an avail entry is invisible until avail idx moves');
  guest.publish();
  const c = chain(queue.pop());
  t.equal(c.head, head);
  t.same(
    c.segments.map((s) => segmentRange(memory, s)),
    specs.map((s) => ({ gpa: s.gpa, length: s.length, writable: s.writable })),
  );
  t.equal(c.readableLength, 16 + 4096);
  t.equal(c.writableLength, 513);
  t.equal(queue.pop(), null);
  t.equal(queue.lastAvailIdx, 1);
});

t.test('views are live guest memory, and a range cut by the memory comes back as several views', async (t) => {
  const { memory, alloc, guest, queue } = setup({ splitEvery: 64 });
  const [b] = buffers(alloc, [[300, true]]);
  guest.addChain([b]);
  guest.publish();
  const c = chain(queue.pop());
  t.ok(c.segments[0].views.length >= 5, `${c.segments[0].views.length} views for 300 bytes cut every 64`);
  t.same(segmentRange(memory, c.segments[0]), { gpa: b.gpa, length: 300, writable: true });
  let n = 0;
  for (const v of c.segments[0].views) for (let i = 0; i < v.length; i++) v[i] = n++ & 0xff;
  t.same([...memory.read(b.gpa, 300)], Array.from({ length: 300 }, (_, i) => i & 0xff));
});

t.test('an indirect chain, and direct descriptors followed by an indirect one', async (t) => {
  const { memory, alloc, guest, queue } = setup({ splitEvery: 40 });
  const specs = buffers(alloc, [
    [16, false],
    [100, false],
    [200, true],
    [1, true],
  ]);
  const head = guest.addChain(specs, { indirect: true });
  guest.publish();
  const c = chain(queue.pop());
  t.equal(c.head, head);
  t.same(
    c.segments.map((s) => segmentRange(memory, s)),
    specs.map((s) => ({ gpa: s.gpa, length: s.length, writable: s.writable })),
    'the indirect table is read even though the memory cuts it into pieces',
  );

  // desc 5 (readable, NEXT) -> desc 6 (INDIRECT, with a WRITE flag the device must ignore) -> table of 2
  const table = alloc.alloc(2 * VIRTQ_DESC_SIZE, 16);
  const [h, r, w] = buffers(alloc, [
    [16, false],
    [8, false],
    [4, true],
  ]);
  guest.writeDescriptor(guest.rings.desc, 5, { addr: h.gpa, len: 16, flags: VIRTQ_DESC_F_NEXT, next: 6 });
  guest.writeDescriptor(guest.rings.desc, 6, { addr: table, len: 32, flags: VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE, next: 0 });
  guest.writeDescriptor(table, 0, { addr: r.gpa, len: 8, flags: VIRTQ_DESC_F_NEXT, next: 1 });
  guest.writeDescriptor(table, 1, { addr: w.gpa, len: 4, flags: VIRTQ_DESC_F_WRITE, next: 0 });
  guest.offer(5);
  guest.publish();
  const mixed = chain(queue.pop());
  t.equal(mixed.head, 5);
  t.same(
    mixed.segments.map((s) => segmentRange(memory, s)),
    [h, r, w].map((s) => ({ gpa: s.gpa, length: s.length, writable: s.writable })),
  );
});

t.test('zero-length descriptors are segments without views', async (t) => {
  const { alloc, guest, queue } = setup();
  guest.addChain(buffers(alloc, [
    [16, false],
    [0, false],
    [0, true],
    [1, true],
  ]));
  guest.publish();
  const c = chain(queue.pop());
  t.same(c.segments.map((s) => [s.length, s.views.length]), [
    [16, 1],
    [0, 0],
    [0, 0],
    [1, 1],
  ]);
});

// --- used ring ------------------------------------------------------------------

t.test('push writes {u32 id, u32 len} little-endian at slot used_idx % size, then used idx; flags untouched', async (t) => {
  const { memory, alloc, guest, queue } = setup({ size: 4, startIdx: 65534 });
  const used = guest.rings.used;
  memory.view(used, 2).writeUInt16LE(0xa5a5); // the device must not touch used.flags when it does not suppress
  for (let i = 0; i < 3; i++) guest.addChain(buffers(alloc, [[1, true]]));
  guest.publish();
  const heads = [chain(queue.pop()).head, chain(queue.pop()).head, chain(queue.pop()).head];
  queue.push(heads[0], 0x01020304);
  t.same([...memory.read(used + 4 + 8 * 2, 8)], [heads[0], 0, 0, 0, 0x04, 0x03, 0x02, 0x01], 'slot 65534 % 4 = 2');
  t.same([...memory.read(used + 2, 2)], [0xff, 0xff], 'used idx 65535');
  queue.push(heads[1], 7);
  queue.push(heads[2], 0xffffffff);
  t.same([...memory.read(used + 4 + 8 * 3, 8)], [heads[1], 0, 0, 0, 7, 0, 0, 0], 'slot 65535 % 4 = 3');
  t.same([...memory.read(used + 4 + 8 * 0, 8)], [heads[2], 0, 0, 0, 0xff, 0xff, 0xff, 0xff], 'slot 0 after the wrap');
  t.same([...memory.read(used + 2, 2)], [1, 0], 'used idx wrapped to 1');
  t.same([...memory.read(used, 2)], [0xa5, 0xa5]);
  t.equal(queue.usedIdx, 1);
  t.same(guest.takeUsed(), [
    { id: heads[0], len: 0x01020304 },
    { id: heads[1], len: 7 },
    { id: heads[2], len: 0xffffffff },
  ]);
  t.throws(() => queue.push(4, 0), RangeError, 'a head past the table is a bug of ours');
  t.throws(() => queue.push(0, 2 ** 32), RangeError);
});

t.test('a queue picks up used idx from the ring and last avail idx from SET_VRING_BASE', async (t) => {
  const { memory, alloc, guest } = setup({ size: 8, startIdx: 65533 });
  for (let i = 0; i < 6; i++) guest.addChain(buffers(alloc, [[1, true]]));
  guest.publish();
  const queue = new SplitVirtqueue({ size: 8, ...guest.deviceRings(), memory, eventIdx: false, lastAvailIdx: 65533 });
  t.equal(queue.usedIdx, 65533);
  let n = 0;
  for (let p = queue.pop(); p; p = queue.pop()) {
    queue.push(chain(p).head, 1);
    n++;
  }
  t.equal(n, 6);
  t.equal(queue.lastAvailIdx, 3, '65533 + 6 wraps to 3');
  t.equal(queue.usedIdx, 3);
  t.equal(guest.takeUsed().length, 6);
});

// --- notifications --------------------------------------------------------------

t.test('vring_need_event agrees with unbounded counters, across the 16-bit wrap', async (t) => {
  t.equal(vringNeedEvent(65535, 0, 65535), true, 'used_event 65535, idx 65535 -> 0');
  t.equal(vringNeedEvent(0, 0, 65535), false, 'entry 0 not written yet');
  t.equal(vringNeedEvent(0, 1, 65535), true, '65535 -> 1 passes 0');
  t.equal(vringNeedEvent(5, 5, 5), false, 'no movement, no event');
  fc.assert(
    fc.property(u16, u16, u16, (old, step, event) => {
      // The entries written are old, old+1, ..., old+step-1 (mod 2^16); is event among them?
      const expected = ((event - old) & 0xffff) < step;
      return vringNeedEvent(event, (old + step) & 0xffff, old) === expected;
    }),
    RUNS,
  );
});

t.test('EVENT_IDX: notify exactly when the used idx passes used_event, across 65535 -> 0', async (t) => {
  const { alloc, guest, queue } = setup({ size: 4, eventIdx: true, startIdx: 65534 });
  for (let i = 0; i < 4; i++) guest.addChain(buffers(alloc, [[1, true]]));
  guest.publish();
  const heads: number[] = [];
  for (let p = queue.pop(); p; p = queue.pop()) heads.push(chain(p).head);
  t.equal(heads.length, 4);
  t.equal(guest.availEvent, 2, 'the null-returning pop asks for a kick once entry 2 (65534 + 4) is written');

  guest.usedEvent = 65534;
  t.equal(queue.needsNotify(), false, 'nothing pushed, nothing to say');
  queue.push(heads[0], 1); // used idx 65534 -> 65535
  t.equal(queue.needsNotify(), true, 'the first decision after creation is always yes');
  guest.usedEvent = 0;
  queue.push(heads[1], 1); // 65535 -> 0
  t.equal(queue.needsNotify(), false, 'entry 65535 written, the driver waits for entry 0');
  queue.push(heads[2], 1); // 0 -> 1
  t.equal(queue.needsNotify(), true, 'entry 0 written: notify');
  queue.push(heads[3], 1); // 1 -> 2
  t.equal(queue.needsNotify(), false, 'used_event 0 was already passed');
  t.equal(queue.needsNotify(), false);
});

t.test('without EVENT_IDX: NO_INTERRUPT suppresses, avail_event is left alone', async (t) => {
  const { alloc, guest, queue } = setup({ size: 4 });
  guest.addChain(buffers(alloc, [[1, true]]));
  guest.addChain(buffers(alloc, [[1, true]]));
  guest.publish();
  const a = chain(queue.pop()).head;
  const b = chain(queue.pop()).head;
  t.equal(queue.pop(), null);
  t.equal(guest.availEvent, 0);
  queue.push(a, 1);
  guest.availFlags = VIRTQ_AVAIL_F_NO_INTERRUPT;
  t.equal(queue.needsNotify(), false);
  queue.push(b, 1);
  guest.availFlags = 0;
  t.equal(queue.needsNotify(), true);
  t.equal(queue.needsNotify(), false, 'nothing new since');
});

// --- hostile shapes -------------------------------------------------------------

function broken(p: Popped | null): string {
  if (p?.kind !== 'broken') throw new Error(`expected broken, got ${p?.kind ?? 'null'}`);
  return p.reason;
}

t.test('shapes the chain cannot be walked through break the queue, for good', async (t) => {
  type Case = [string, (s: Setup) => void, RegExp];
  const cases: Case[] = [
    ['avail idx too far ahead', (s) => s.memory.view(s.guest.rings.avail + 2, 2).writeUInt16LE(9), /more than the queue size 8 ahead/],
    ['head past the table', (s) => (s.guest.offer(8), s.guest.publish()), /names descriptor 8, past the table of 8/],
    [
      'next past the table',
      (s) => {
        s.guest.writeDescriptor(s.guest.rings.desc, 0, { addr: BASE, len: 1, flags: VIRTQ_DESC_F_NEXT, next: 8 });
        s.guest.offer(0);
        s.guest.publish();
      },
      /chains to 8, past a table of 8/,
    ],
    [
      'a loop',
      (s) => {
        s.guest.writeDescriptor(s.guest.rings.desc, 0, { addr: BASE, len: 1, flags: VIRTQ_DESC_F_NEXT, next: 1 });
        s.guest.writeDescriptor(s.guest.rings.desc, 1, { addr: BASE, len: 1, flags: VIRTQ_DESC_F_NEXT, next: 0 });
        s.guest.offer(0);
        s.guest.publish();
      },
      /longer than the queue \(a loop\)/,
    ],
    ...indirectCases(),
  ];
  for (const [name, arrange, reason] of cases) {
    const s = setup();
    arrange(s);
    const calls = s.memory.mapCalls;
    t.match(broken(s.queue.pop()), reason, name);
    t.ok(s.memory.mapCalls - calls <= 20, `${name}: bounded work`);
    t.match(broken(s.queue.pop()), reason, `${name}: sticky`);
    t.match(s.queue.brokenReason, reason);
  }
});

function indirectCases(): [string, (s: Setup) => void, RegExp][] {
  const withTable = (desc: { len: number; flags: number; addr?: number }, table: Buffer[] = []) => (s: Setup) => {
    const gpa = s.alloc.alloc(Math.max(16 * table.length, 16), 16);
    table.forEach((d, i) => s.memory.write(gpa + 16 * i, d));
    s.guest.writeDescriptor(s.guest.rings.desc, 0, { addr: desc.addr ?? gpa, len: desc.len, flags: desc.flags, next: 1 });
    s.guest.offer(0);
    s.guest.publish();
  };
  const I = VIRTQ_DESC_F_INDIRECT;
  const N = VIRTQ_DESC_F_NEXT;
  const d = (next: number, flags: number, len = 1) => encodeDescriptor({ addr: BASE, len, flags, next });
  return [
    ['indirect with NEXT', withTable({ len: 16, flags: I | N }), /both INDIRECT and NEXT/],
    ['indirect table of 0 bytes', withTable({ len: 0, flags: I }), /indirect table of 0 bytes/],
    ['indirect table of 24 bytes', withTable({ len: 24, flags: I }), /indirect table of 24 bytes/],
    ['indirect table larger than any queue', withTable({ len: 32769 * 16, flags: I }), /indirect table of 524304 bytes/],
    ['indirect table outside memory', withTable({ len: 32, flags: I, addr: 0x1000 }), /indirect table outside guest memory/],
    [
      'indirect inside indirect',
      withTable({ len: 32, flags: I }, [d(1, N), d(0, I, 16)]),
      /indirect descriptor 1 of head 0 is an indirect descriptor inside an indirect table/,
    ],
    [
      'a loop inside an indirect table',
      withTable({ len: 32, flags: I }, [d(1, N), d(0, N)]),
      /longer than its indirect table/,
    ],
    [
      'next past an indirect table',
      withTable({ len: 32, flags: I }, [d(2, N), d(0, 0)]),
      /chains to 2, past a table of 2/,
    ],
  ];
}

function malformed(p: Popped | null) {
  if (p?.kind !== 'malformed') throw new Error(`expected malformed, got ${p?.kind ?? 'null'}`);
  return p;
}

t.test('chains that walk but cannot be served are malformed, with their last writable byte; the queue carries on', async (t) => {
  const { memory, alloc, guest, queue } = setup({ size: 16 });
  const [h, w1, st] = buffers(alloc, [
    [16, false],
    [512, true],
    [1, true],
  ]);
  const outside = { gpa: BASE + (1 << 20) - 8, length: 16, writable: true }; // runs off the end of the region
  const a = guest.addChain([h, outside, st]);
  const b = guest.addChain([h, w1, { ...h, length: 8 }, st]); // readable after writable
  const c = guest.addChain([h, { gpa: 0x2000, length: 4, writable: true }]); // status byte unmapped
  guest.publish();

  const ma = malformed(queue.pop());
  t.equal(ma.head, a);
  t.match(ma.reason, /descriptor 1 of head .* covers guest memory no region maps/);
  t.same(memory.locate(ma.lastWritableByte!), { gpa: st.gpa, length: 1 });
  t.equal(ma.writableLength, 17);

  const mb = malformed(queue.pop());
  t.equal(mb.head, b);
  t.match(mb.reason, /device-readable after a device-writable one/);
  t.same(memory.locate(mb.lastWritableByte!), { gpa: st.gpa, length: 1 });

  const mc = malformed(queue.pop());
  t.equal(mc.head, c);
  t.equal(mc.lastWritableByte, null);

  t.equal(queue.pop(), null, 'the queue is not broken');
  guest.addChain([h, st]);
  guest.publish();
  t.equal(chain(queue.pop()).segments.length, 2);
});

t.test('a chain over 2^32 bytes is malformed', async (t) => {
  const { guest } = setup();
  // A memory that maps any range (with empty views), so the length check is what trips.
  const everywhere: GuestMemory = { map: () => [] };
  const queue = new SplitVirtqueue({ size: 8, ...guest.deviceRings(), memory: everywhere, eventIdx: false });
  guest.addChain([
    { gpa: BASE, length: 0xffffffff, writable: false },
    { gpa: BASE, length: 1, writable: true },
  ]);
  guest.addChain([
    { gpa: BASE, length: 0xffffffff, writable: false },
    { gpa: BASE, length: 2, writable: true },
  ]);
  guest.publish();
  t.equal(queue.pop()?.kind, 'chain', `exactly 2^32 = ${MAX_CHAIN_BYTES} bytes is allowed`);
  t.match(malformed(queue.pop()).reason, /longer than 2\^32 bytes/);
});

// --- properties -----------------------------------------------------------------

const chainPlan = fc
  .record({
    readable: fc.array(fc.integer({ min: 0, max: 300 }), { maxLength: 4 }),
    writable: fc.array(fc.integer({ min: 0, max: 300 }), { maxLength: 4 }),
    indirect: fc.boolean(),
  })
  .filter((p) => p.readable.length + p.writable.length > 0);

t.test('property: random valid traffic pops what the guest put there and returns what the device pushed', async () => {
  fc.assert(
    fc.property(
      fc.record({
        sizeLog: fc.integer({ min: 0, max: 5 }),
        startIdx: fc.oneof(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0xfff0, max: 0xffff })),
        splitEvery: fc.constantFrom(0, 7, 64, 4096),
        eventIdx: fc.boolean(),
        plans: fc.array(chainPlan, { minLength: 1, maxLength: 60 }),
        batch: fc.integer({ min: 1, max: 6 }),
        seed: fc.integer(),
      }),
      ({ sizeLog, startIdx, splitEvery, eventIdx, plans, batch, seed }) => {
        const size = 1 << sizeLog;
        const { memory, alloc, guest, queue } = setup({ size, startIdx, splitEvery, eventIdx, bytes: 4 << 20 });
        const expected = new Map<number, BufferSpec[]>();
        const pushed: { id: number; len: number }[] = [];
        const inFlight: number[] = [];
        let rng = seed >>> 0;
        const rand = (n: number) => ((rng = (Math.imul(rng, 1103515245) + 12345) >>> 0) >>> 8) % n;
        let next = 0;
        while (next < plans.length || inFlight.length > 0) {
          // The guest offers what fits, in batches.
          let offered = 0;
          while (next < plans.length && offered < batch) {
            const p = plans[next];
            const count = p.readable.length + p.writable.length;
            const indirect = p.indirect || count > size; // a plan never holds more than 8 buffers, what a table takes
            if (guest.freeDescriptors < (indirect ? 1 : count)) break;
            const specs = buffers(alloc, [
              ...p.readable.map((n): [number, boolean] => [n, false]),
              ...p.writable.map((n): [number, boolean] => [n, true]),
            ]);
            expected.set(guest.addChain(specs, { indirect }), specs);
            next++;
            offered++;
          }
          guest.publish();
          // The device drains and checks every chain against the plan.
          for (let p = queue.pop(); p; p = queue.pop()) {
            const c = chain(p);
            const want = expected.get(c.head);
            if (!want) throw new Error(`head ${c.head} popped but not outstanding`);
            expected.delete(c.head);
            const got = c.segments.map((s) => segmentRange(memory, s));
            const wantRanges = want.map((s) => ({ gpa: s.length ? s.gpa : -1, length: s.length, writable: s.writable }));
            if (JSON.stringify(got) !== JSON.stringify(wantRanges)) {
              throw new Error(`segments ${JSON.stringify(got)} != ${JSON.stringify(wantRanges)}`);
            }
            inFlight.push(c.head);
          }
          if (eventIdx && guest.availEvent !== queue.lastAvailIdx) throw new Error('avail_event lags the last avail idx');
          // Completes some, in any order.
          const n = inFlight.length === 0 ? 0 : 1 + rand(inFlight.length);
          for (let i = 0; i < n; i++) {
            const [id] = inFlight.splice(rand(inFlight.length), 1);
            const len = rand(1000);
            queue.push(id, len);
            pushed.push({ id, len });
          }
          const used = guest.takeUsed();
          if (JSON.stringify(used) !== JSON.stringify(pushed.splice(0))) throw new Error('used ring differs from the pushes');
          if (next >= plans.length && inFlight.length === 0 && expected.size > 0) throw new Error('chains never popped');
        }
        return queue.lastAvailIdx === ((startIdx + plans.length) & 0xffff) && queue.usedIdx === queue.lastAvailIdx;
      },
    ),
    RUNS,
  );
});

t.test('property: random descriptor tables never throw, never loop, never hand out memory outside a region', async () => {
  const SIZE_LOG_MAX = 5;
  const REGION = 0x10000;
  // Mostly plausible values, so that many chains walk far; sometimes anything at all.
  const addr = fc.oneof(
    { weight: 8, arbitrary: fc.integer({ min: BASE - 64, max: BASE + REGION + 64 }) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffffffff }) },
    { weight: 1, arbitrary: fc.constantFrom(2 ** 53, 2 ** 64 - 2048, 2 ** 63) },
  );
  const desc = fc.record({
    addr,
    len: fc.oneof(
      { weight: 8, arbitrary: fc.integer({ min: 0, max: 600 }) },
      { weight: 2, arbitrary: fc.constantFrom(16, 32, 48, 0xffffffff) },
      { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffffffff }) },
    ),
    flags: fc.oneof({ weight: 8, arbitrary: fc.integer({ min: 0, max: 7 }) }, { weight: 1, arbitrary: u16 }),
    next: fc.oneof({ weight: 8, arbitrary: fc.integer({ min: 0, max: 40 }) }, { weight: 1, arbitrary: u16 }),
  });
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: SIZE_LOG_MAX }),
      fc.array(desc, { minLength: 32, maxLength: 32 }),
      fc.array(desc, { minLength: 64, maxLength: 64 }),
      fc.array(fc.oneof(fc.integer({ min: 0, max: 40 }), fc.integer({ min: 0, max: 0xffff })), { minLength: 32, maxLength: 32 }),
      fc.integer({ min: 0, max: 0xffff }),
      fc.integer({ min: 0, max: 40 }),
      fc.boolean(),
      (sizeLog, table, scattered, ring, startIdx, advance, eventIdx) => {
        const size = 1 << sizeLog;
        const memory = new BufferGuestMemory(
          [
            { gpa: BASE, buffer: Buffer.alloc(REGION) },
            { gpa: BASE + REGION + 4096, buffer: Buffer.alloc(4096) },
          ],
          { splitEvery: 48 },
        );
        const alloc = new GuestAllocator(BASE, BASE + REGION);
        const guest = VirtioGuestQueue.layout(memory, alloc, size, { startIdx });
        table.slice(0, size).forEach((d, i) => guest.writeDescriptor(guest.rings.desc, i, d));
        // Scatter more descriptors over memory, where random indirect addresses may land.
        scattered.forEach((d, i) => memory.write(BASE + 1024 + 16 * i, encodeDescriptor(d)));
        for (let i = 0; i < size; i++) guest.offer(ring[i]);
        memory.view(guest.rings.avail + 2, 2).writeUInt16LE((startIdx + advance) & 0xffff);
        const queue = new SplitVirtqueue({ size, ...guest.deviceRings(), memory, eventIdx, lastAvailIdx: startIdx });
        let brokenOnce: string | null = null;
        for (let i = 0; i < 2 * size + 2; i++) {
          const before = memory.mapCalls;
          const p = queue.pop();
          if (memory.mapCalls - before > size + 32768 + 2) throw new Error('a pop did unbounded work');
          if (p === null) break;
          if (p.kind === 'broken') {
            if (brokenOnce !== null && p.reason !== brokenOnce) throw new Error('broken is not sticky');
            brokenOnce = p.reason;
            continue;
          }
          if (brokenOnce !== null) throw new Error('a chain after the queue broke');
          if (p.kind === 'malformed') {
            if (p.lastWritableByte && !memory.locate(p.lastWritableByte)) throw new Error('status byte outside memory');
          } else {
            if (p.segments.length > size + 32768) throw new Error('too many segments');
            let writable = false;
            for (const s of p.segments) {
              segmentRange(memory, s);
              if (writable && !s.writable) throw new Error('readable after writable in a chain');
              writable ||= s.writable;
            }
          }
          queue.push(p.head, 0);
        }
        return true;
      },
    ),
    { seed: 11, numRuns: 400 },
  );
});
