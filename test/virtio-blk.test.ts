// The virtio-blk request model over chains a test guest lays out: each
// request type becomes the right device Requests (data as guest-memory
// views), malformed requests are answered IOERR or UNSUPP with the status
// byte written in guest memory, a request without a status byte needs a
// reset; the config space and feature bits at the spec's offsets; the
// device error to status mapping.

import fc from 'fast-check';
import t from 'tap';
import type { ErrorCode } from '../src/device/errors.js';
import { blkConfig, blkFeatures, blkIdBytes, type BlkSettings } from '../src/protocol/vhost-user/blk-config.js';
import { virtioStatus } from '../src/protocol/vhost-user/status.js';
import { blkAction, type BlkAction } from '../src/protocol/vhost-user/virtio-blk.js';
import { VIRTIO_BLK_S, VIRTIO_BLK_T } from '../src/protocol/vhost-user/virtio-constants.js';
import { SplitVirtqueue } from '../src/protocol/vhost-user/virtqueue.js';
import { BufferGuestMemory, GuestAllocator, VirtioGuestQueue, type BufferSpec } from './helpers/virtio-guest.js';

const BASE = 0x40000;
const MIB = 1 << 20;
const SETTINGS: BlkSettings = {
  capacity: MIB,
  readOnly: false,
  flush: true,
  blockSize: 512,
  segMax: 126,
  numQueues: 1,
  discard: { maxSectors: 1024, maxSegments: 2, sectorAlignment: 8 },
  writeZeroes: { maxSectors: 1024, maxSegments: 2, mayUnmap: true },
  id: blkIdBytes('vblk-test'),
};

/** A part of a request: bytes the guest writes there (readable), or a writable buffer of some length. */
type Part = { bytes: Buffer } | { length: number; writable?: boolean };

function header(type: number, sector: bigint = 0n): Buffer {
  const h = Buffer.alloc(16);
  h.writeUInt32LE(type, 0);
  h.writeUInt32LE(0xdead, 4); // reserved / ioprio: ignored
  h.writeBigUInt64LE(sector, 8);
  return h;
}

function segment(sector: bigint, sectors: number, flags = 0): Buffer {
  const s = Buffer.alloc(16);
  s.writeBigUInt64LE(sector, 0);
  s.writeUInt32LE(sectors, 8);
  s.writeUInt32LE(flags, 12);
  return s;
}

interface Run {
  action: BlkAction;
  memory: BufferGuestMemory;
  specs: BufferSpec[];
}

/** Lays the parts out as one chain (optionally indirect), pops it and asks the model. */
function run(parts: Part[], settings: BlkSettings = SETTINGS, o: { indirect?: boolean; splitEvery?: number } = {}): Run {
  const memory = new BufferGuestMemory([{ gpa: BASE, buffer: Buffer.alloc(4 * MIB) }], { splitEvery: o.splitEvery });
  const alloc = new GuestAllocator(BASE, BASE + 4 * MIB);
  const guest = VirtioGuestQueue.layout(memory, alloc, 16, { indirectEntries: 16 });
  const specs = parts.map((p): BufferSpec => {
    const length = 'bytes' in p ? p.bytes.length : p.length;
    const gpa = alloc.alloc(Math.max(length, 1), 1);
    if ('bytes' in p) memory.write(gpa, p.bytes);
    else memory.view(gpa, Math.max(length, 1)).fill(0xee);
    return { gpa, length, writable: 'bytes' in p ? false : (p.writable ?? true) };
  });
  guest.addChain(specs, { indirect: o.indirect });
  guest.publish();
  const queue = new SplitVirtqueue({ size: 16, ...guest.deviceRings(), memory, eventIdx: false });
  const popped = queue.pop();
  if (!popped || popped.kind === 'broken') throw new Error(`pop gave ${popped?.kind ?? 'null'}`);
  return { action: blkAction(popped, settings), memory, specs };
}

function completed(r: Run, status: number, reason?: RegExp): void {
  const a = r.action;
  if (a.kind !== 'complete') throw new Error(`expected complete, got ${a.kind}`);
  if (a.status !== status) throw new Error(`status ${a.status}, expected ${status} (${a.reason})`);
  if (reason && !reason.test(a.reason ?? '')) throw new Error(`reason ${a.reason} does not match ${reason}`);
  const last = r.specs.filter((s) => s.writable && s.length > 0).pop()!;
  const byte = r.memory.read(last.gpa + last.length - 1, 1)[0];
  if (byte !== status) throw new Error(`status byte in guest memory is ${byte}, expected ${status}`);
}

function submitted(r: Run) {
  if (r.action.kind !== 'submit') throw new Error(`expected submit, got ${JSON.stringify(r.action)}`);
  return r.action;
}

/** The guest range a list of views covers (contiguous, checked). */
function rangeOf(memory: BufferGuestMemory, views: Buffer[]): { gpa: number; length: number } {
  let gpa = -1;
  let end = -1;
  for (const v of views) {
    const at = memory.locate(v);
    if (!at) throw new Error('view outside guest memory');
    if (gpa < 0) gpa = at.gpa;
    else if (at.gpa !== end) throw new Error('views not contiguous');
    end = at.gpa + at.length;
  }
  return { gpa, length: end - gpa };
}

// --- request types ----------------------------------------------------------------

t.test('IN: a read of the writable bytes before the status, at sector * 512', async (t) => {
  const parts = [{ bytes: header(VIRTIO_BLK_T.IN, 10n) }, { length: 1024 }, { length: 3072 }, { length: 1 }];
  const r = run(parts, SETTINGS, { splitEvery: 1000 });
  const a = submitted(r);
  t.equal(a.requests.length, 1);
  const [req] = a.requests;
  t.match(req, { op: 'read', offset: 5120, length: 4096, fua: false });
  t.same(rangeOf(r.memory, (req.into ?? req.from)!.slice(0, 2)).gpa, r.specs[1].gpa);
  t.equal((req.into ?? req.from)!.reduce((n, v) => n + v.length, 0), 4096);
  t.same(rangeOf(r.memory, [a.status]), { gpa: r.specs[3].gpa, length: 1 });
  t.equal(a.usedLength, 4097, 'every writable byte, status included');
  t.equal(a.head, 0);
});

t.test('OUT: a write of the readable bytes after a header split across descriptors, status in the data descriptor', async (t) => {
  const data = Buffer.alloc(1024, 0x5a);
  const h = header(VIRTIO_BLK_T.OUT, 2047n - 1n);
  const parts = [{ bytes: h.subarray(0, 5) }, { bytes: Buffer.concat([h.subarray(5), data]) }, { length: 1 }];
  const r = run(parts, SETTINGS, { indirect: true });
  const a = submitted(r);
  const [req] = a.requests;
  t.match(req, { op: 'write', offset: 2046 * 512, length: 1024 });
  t.same(rangeOf(r.memory, (req.into ?? req.from)!), { gpa: r.specs[1].gpa + 11, length: 1024 });
  t.equal(a.usedLength, 1);
  t.equal(req.data, undefined, 'the payload stays in guest memory');
});

t.test('ranges up to the capacity are fine, past it IOERR', async (t) => {
  const cap = SETTINGS.capacity / 512;
  submitted(run([{ bytes: header(VIRTIO_BLK_T.IN, BigInt(cap - 2)) }, { length: 1025 }]));
  submitted(run([{ bytes: header(VIRTIO_BLK_T.IN, BigInt(cap)) }, { length: 1 }]));
  completed(run([{ bytes: header(VIRTIO_BLK_T.IN, BigInt(cap - 1)) }, { length: 1025 }]), VIRTIO_BLK_S.IOERR, /past the capacity/);
  completed(run([{ bytes: header(VIRTIO_BLK_T.OUT, BigInt(cap + 1)) }, { length: 1, writable: true }]), VIRTIO_BLK_S.IOERR);
  completed(run([{ bytes: header(VIRTIO_BLK_T.IN, 2n ** 64n - 1n) }, { length: 513 }]), VIRTIO_BLK_S.IOERR, /past the capacity/);
  completed(run([{ bytes: header(VIRTIO_BLK_T.IN, 2n ** 44n) }, { length: 1 }]), VIRTIO_BLK_S.IOERR);
  // A capacity that is not a whole number of sectors: the tail is unreachable.
  const odd = { ...SETTINGS, capacity: 1024 + 100 };
  submitted(run([{ bytes: header(VIRTIO_BLK_T.IN, 1n) }, { length: 513 }], odd));
  completed(run([{ bytes: header(VIRTIO_BLK_T.IN, 2n) }, { length: 513 }], odd), VIRTIO_BLK_S.IOERR);
  t.pass('each range answered as expected');
});

t.test('FLUSH becomes a flush whatever its sector; GET_ID writes the id', async (t) => {
  const f = submitted(run([{ bytes: header(VIRTIO_BLK_T.FLUSH, 77n) }, { length: 1 }]));
  t.match(f.requests, [{ op: 'flush', offset: 0, length: 0 }]);

  const r = run([{ bytes: header(VIRTIO_BLK_T.GET_ID) }, { length: 20 }, { length: 1 }]);
  completed(r, VIRTIO_BLK_S.OK);
  t.same(r.memory.read(r.specs[1].gpa, 20), Buffer.concat([Buffer.from('vblk-test'), Buffer.alloc(11)]));
  t.equal(r.action.kind === 'complete' && r.action.usedLength, 21);

  const full = run([{ bytes: header(VIRTIO_BLK_T.GET_ID) }, { length: 21 }], { ...SETTINGS, id: blkIdBytes('ABCDEFGHIJKLMNOPQRST') });
  completed(full, VIRTIO_BLK_S.OK);
  t.equal(full.memory.read(full.specs[1].gpa, 20).toString('latin1'), 'ABCDEFGHIJKLMNOPQRST', '20 bytes, no NUL');

  const short = run([{ bytes: header(VIRTIO_BLK_T.GET_ID) }, { length: 5 }]);
  completed(short, VIRTIO_BLK_S.OK);
  t.equal(short.memory.read(short.specs[1].gpa, 4).toString('latin1'), 'vblk', 'as much as fits');
});

t.test('DISCARD: one trim per segment; flags, limits and capacity checked', async (t) => {
  const d = (segs: Buffer[], settings = SETTINGS) =>
    run([{ bytes: header(VIRTIO_BLK_T.DISCARD) }, { bytes: Buffer.concat(segs) }, { length: 1 }], settings);
  const a = submitted(d([segment(8n, 16), segment(100n, 1024)]));
  t.match(a.requests, [
    { op: 'trim', offset: 4096, length: 8192 },
    { op: 'trim', offset: 51200, length: 1024 * 512 },
  ]);
  completed(d([segment(8n, 16, 1)]), VIRTIO_BLK_S.UNSUPP, /flags 0x1/);
  completed(d([segment(8n, 16), segment(8n, 16, 4)]), VIRTIO_BLK_S.UNSUPP, /flags 0x4/);
  completed(d([segment(8n, 16), segment(8n, 16), segment(8n, 16)]), VIRTIO_BLK_S.IOERR, /3 segments, more than 2/);
  completed(d([segment(8n, 1025)]), VIRTIO_BLK_S.IOERR, /1025 sectors, more than 1024/);
  completed(d([segment(2040n, 16)]), VIRTIO_BLK_S.IOERR, /past the capacity/);
  completed(d([segment(8n, 16).subarray(0, 12)]), VIRTIO_BLK_S.IOERR, /12 bytes/);
  completed(run([{ bytes: header(VIRTIO_BLK_T.DISCARD) }, { length: 1 }]), VIRTIO_BLK_S.IOERR, /0 bytes/);
  completed(d([segment(8n, 16)], { ...SETTINGS, discard: null }), VIRTIO_BLK_S.UNSUPP, /not offered/);
  completed(d([segment(8n, 16)], { ...SETTINGS, readOnly: true }), VIRTIO_BLK_S.IOERR, /read-only/);
  completed(
    run([{ bytes: header(VIRTIO_BLK_T.DISCARD) }, { bytes: segment(8n, 16) }, { length: 8 }, { length: 1 }]),
    VIRTIO_BLK_S.IOERR,
    /device-writable data/,
  );
});

t.test('WRITE_ZEROES: UNMAP allows a hole, without it the range stays allocated', async (t) => {
  const z = (segs: Buffer[], settings = SETTINGS) =>
    run([{ bytes: header(VIRTIO_BLK_T.WRITE_ZEROES) }, { bytes: Buffer.concat(segs) }, { length: 1 }], settings);
  const a = submitted(z([segment(0n, 8, 1), segment(16n, 8, 0)]));
  t.match(a.requests, [
    { op: 'writeZeroes', offset: 0, length: 4096, noHole: false },
    { op: 'writeZeroes', offset: 8192, length: 4096, noHole: true },
  ]);
  completed(z([segment(0n, 8, 2)]), VIRTIO_BLK_S.UNSUPP);
  completed(z([segment(0n, 8)], { ...SETTINGS, writeZeroes: null }), VIRTIO_BLK_S.UNSUPP);
  completed(z([segment(0n, 8)], { ...SETTINGS, readOnly: true }), VIRTIO_BLK_S.IOERR);
  completed(z([segment(2047n, 2)]), VIRTIO_BLK_S.IOERR);
});

t.test('types the device does not do are UNSUPP', async (t) => {
  for (const type of [VIRTIO_BLK_T.GET_LIFETIME, VIRTIO_BLK_T.SECURE_ERASE, 2, 16, 0xffffffff]) {
    completed(run([{ bytes: header(type) }, { length: 8 }, { length: 1 }]), VIRTIO_BLK_S.UNSUPP, /not supported/);
  }
  t.pass();
});

// --- malformed requests ---------------------------------------------------------------

t.test('malformed requests fail with IOERR in their status byte', async (t) => {
  completed(run([{ bytes: header(VIRTIO_BLK_T.IN).subarray(0, 15) }, { length: 513 }]), VIRTIO_BLK_S.IOERR, /header is 15 bytes/);
  completed(run([{ length: 513 }]), VIRTIO_BLK_S.IOERR, /header is 0 bytes/);
  completed(run([{ bytes: header(VIRTIO_BLK_T.IN) }, { length: 500 }]), VIRTIO_BLK_S.IOERR, /499 is not a multiple of 512/);
  const withData = (type: number) => ({ bytes: Buffer.concat([header(type), Buffer.alloc(512)]) });
  const shortOut = run([{ bytes: header(VIRTIO_BLK_T.OUT) }, { bytes: Buffer.alloc(100) }, { length: 1 }]);
  completed(shortOut, VIRTIO_BLK_S.IOERR, /100 is not a multiple/);
  completed(run([withData(VIRTIO_BLK_T.IN), { length: 513 }]), VIRTIO_BLK_S.IOERR, /read carries device-readable data/);
  completed(run([withData(VIRTIO_BLK_T.OUT), { length: 513 }]), VIRTIO_BLK_S.IOERR, /write carries device-writable data/);
  completed(
    run([withData(VIRTIO_BLK_T.OUT), { length: 1 }], { ...SETTINGS, readOnly: true }),
    VIRTIO_BLK_S.IOERR,
    /read-only/,
  );
  t.pass();
});

t.test('a malformed chain fails with IOERR when its last writable byte maps; without a status byte the device needs reset', async (t) => {
  // readable after writable: the virtqueue calls it malformed, the model answers IOERR
  const r = run([{ bytes: header(VIRTIO_BLK_T.IN) }, { length: 512 }, { bytes: Buffer.alloc(4) }, { length: 1 }]);
  completed(r, VIRTIO_BLK_S.IOERR, /device-readable after a device-writable/);
  t.equal(r.action.kind === 'complete' && r.action.usedLength, 513);

  const none = run([{ bytes: header(VIRTIO_BLK_T.OUT) }, { bytes: Buffer.alloc(512) }]);
  t.match(none.action, { kind: 'reset', head: 0, reason: /no device-writable status byte/ });
  const empty = run([{ bytes: header(VIRTIO_BLK_T.FLUSH) }, { length: 0 }]);
  t.equal(empty.action.kind, 'reset', 'a zero-length writable descriptor holds no status either');

  const unmapped = blkAction({ kind: 'malformed', head: 3, reason: 'x', writableLength: 1, lastWritableByte: null }, SETTINGS);
  t.match(unmapped, { kind: 'reset', head: 3, reason: /no status byte maps/ });
});

t.test('a malformed chain of more than 2^32 - 1 writable bytes reports a used length that fits the used element', async (t) => {
  // Two writable descriptors of 2^31 bytes: the chain is past the spec's 2^32 bytes (this once crashed vblk serve).
  const memory = new BufferGuestMemory([{ gpa: BASE, buffer: Buffer.alloc(MIB) }]);
  const guest = VirtioGuestQueue.layout(memory, new GuestAllocator(BASE, BASE + MIB), 16);
  const status = BASE + MIB - 1;
  memory.write(BASE + MIB - 32, header(VIRTIO_BLK_T.IN));
  guest.addChain([
    { gpa: BASE + MIB - 32, length: 16, writable: false },
    { gpa: BASE, length: 2 ** 31, writable: true },
    { gpa: BASE, length: 2 ** 31, writable: true },
    { gpa: status, length: 1, writable: true },
  ]);
  guest.publish();
  const queue = new SplitVirtqueue({ size: 16, ...guest.deviceRings(), memory, eventIdx: false });
  const popped = queue.pop();
  if (!popped || popped.kind !== 'malformed') throw new Error(`pop gave ${popped?.kind ?? 'null'}`);
  const action = blkAction(popped, SETTINGS);
  t.match(action, { kind: 'complete', status: VIRTIO_BLK_S.IOERR, usedLength: 0xffffffff });
  t.equal(memory.read(status, 1)[0], VIRTIO_BLK_S.IOERR, 'IOERR in the status byte');
  if (action.kind === 'complete') t.doesNotThrow(() => queue.push(action.head, action.usedLength), 'and the used element takes it');
});

t.test('property: any header and layout is answered without throwing, and what is submitted is in range', async () => {
  const part = fc.oneof(
    fc.record({ bytes: fc.uint8Array({ maxLength: 40 }).map((a) => Buffer.from(a)) }),
    fc.record({ length: fc.integer({ min: 0, max: 1600 }), writable: fc.boolean() }),
  );
  fc.assert(
    fc.property(
      fc.constantFrom(0, 1, 4, 8, 10, 11, 13, 14, 99),
      fc.oneof(fc.bigInt({ min: 0n, max: 2100n }), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })),
      fc.array(part, { maxLength: 5 }),
      fc.boolean(),
      (type, sector, rest, readOnly) => {
        const r = run([{ bytes: header(type, sector) }, ...rest], { ...SETTINGS, readOnly });
        if (r.action.kind === 'submit') {
          for (const q of r.action.requests) {
            if (q.offset % 512 !== 0 || q.length % 512 !== 0 || q.offset + q.length > SETTINGS.capacity) {
              throw new Error(`bad request ${JSON.stringify(q)}`);
            }
            if (readOnly && q.op !== 'read' && q.op !== 'flush') throw new Error(`${q.op} on a read-only device`);
            if ((q.into ?? q.from) && (q.into ?? q.from)!.reduce((n, v) => n + v.length, 0) !== q.length) throw new Error('iov length differs');
          }
        } else if (r.action.kind === 'complete') {
          completed(r, r.action.status);
        } else if (r.specs.some((s) => s.writable && s.length > 0)) {
          throw new Error('reset although a status byte exists');
        }
      },
    ),
    { seed: 5, numRuns: 300 },
  );
});

// --- config space and features --------------------------------------------------------

t.test('config space: every field at its offset, little-endian', async (t) => {
  const c = blkConfig({
    ...SETTINGS,
    capacity: 10 * 1024 ** 4 + 300,
    blockSize: 4096,
    physicalBlockSize: 16384,
    minIoSize: 8192,
    optIoSize: 1024 * 1024,
    sizeMax: 65536,
    segMax: 254,
    numQueues: 4,
    discard: { maxSectors: 0x10000, maxSegments: 1, sectorAlignment: 8 },
    writeZeroes: { maxSectors: 0x20000, maxSegments: 3, mayUnmap: true },
  });
  t.equal(c.length, 96);
  t.equal(c.readBigUInt64LE(0), (10n * 1024n ** 4n) / 512n, 'capacity in whole sectors');
  t.equal(c.readUInt32LE(8), 65536, 'size_max');
  t.equal(c.readUInt32LE(12), 254, 'seg_max');
  t.same([...c.subarray(16, 20)], [0, 0, 0, 0], 'geometry');
  t.equal(c.readUInt32LE(20), 4096, 'blk_size');
  t.equal(c[24], 2, 'physical_block_exp: 16384 = 4096 << 2');
  t.equal(c[25], 0, 'alignment_offset');
  t.equal(c.readUInt16LE(26), 2, 'min_io_size in blocks');
  t.equal(c.readUInt32LE(28), 256, 'opt_io_size in blocks');
  t.equal(c[32], 1, 'writeback');
  t.equal(c[33], 0, 'unused0');
  t.equal(c.readUInt16LE(34), 4, 'num_queues');
  t.equal(c.readUInt32LE(36), 0x10000, 'max_discard_sectors');
  t.equal(c.readUInt32LE(40), 1, 'max_discard_seg');
  t.equal(c.readUInt32LE(44), 8, 'discard_sector_alignment');
  t.equal(c.readUInt32LE(48), 0x20000, 'max_write_zeroes_sectors');
  t.equal(c.readUInt32LE(52), 3, 'max_write_zeroes_seg');
  t.equal(c[56], 1, 'write_zeroes_may_unmap');
  t.same([...c.subarray(57)], new Array(96 - 57).fill(0), 'unused1, secure erase and zoned are zero');

  const plain = blkConfig({ ...SETTINGS, flush: false, discard: null, writeZeroes: null });
  t.equal(plain[32], 0, 'write-through without FLUSH');
  t.same([...plain.subarray(36, 60)], new Array(24).fill(0), 'no discard or write-zeroes limits when not offered');
  t.equal(plain.readUInt32LE(8), 0, 'no size_max');
  t.equal(plain[24], 0, 'physical block = logical block');

  const bad: [Partial<BlkSettings>, RegExp][] = [
    [{ blockSize: 1000 }, /block size 1000/],
    [{ blockSize: 256 }, /block size 256/],
    [{ physicalBlockSize: 256 }, /physical block size/],
    [{ numQueues: 0 }, /number of queues 0/],
    [{ numQueues: 65536 }, /number of queues/],
    [{ optIoSize: 1000 }, /opt_io_size 1000/],
    [{ minIoSize: 512 * 65536 }, /min_io_size/],
    [{ segMax: -1 }, /seg_max -1/],
    [{ capacity: -1 }, /capacity/],
    [{ id: Buffer.alloc(21) }, /longer than 20/],
  ];
  for (const [patch, message] of bad) t.throws(() => blkConfig({ ...SETTINGS, ...patch }), message);
});

t.test('feature bits', async (t) => {
  const bits = (f: bigint) => [...Array(64).keys()].filter((b) => (f >> BigInt(b)) & 1n);
  t.same(bits(blkFeatures({ ...SETTINGS, flush: false, discard: null, writeZeroes: null })), [2, 6, 10, 12, 28, 29, 32]);
  t.same(bits(blkFeatures({ ...SETTINGS, readOnly: true, sizeMax: 4096 })), [1, 2, 5, 6, 9, 10, 12, 13, 14, 28, 29, 32]);
});

t.test('device ids: NUL-padded printable ASCII of at most 20 bytes', async (t) => {
  t.same(blkIdBytes(''), Buffer.alloc(20));
  t.same(blkIdBytes('abc'), Buffer.concat([Buffer.from('abc'), Buffer.alloc(17)]));
  t.throws(() => blkIdBytes('x'.repeat(21)), /at most 20/);
  t.throws(() => blkIdBytes('disk\u00e9'), /printable ASCII/);
  t.throws(() => blkIdBytes('a\nb'), /printable ASCII/);
});

t.test('device errors map to IOERR, ENOTSUP to UNSUPP', async (t) => {
  const codes: ErrorCode[] = ['EPERM', 'EIO', 'ENOMEM', 'EINVAL', 'ENOSPC', 'EOVERFLOW', 'ESHUTDOWN'];
  for (const code of codes) t.equal(virtioStatus(code), VIRTIO_BLK_S.IOERR, code);
  t.equal(virtioStatus('ENOTSUP'), VIRTIO_BLK_S.UNSUPP);
});
