// RawImage on real (sparse) temporary files: size, qcow2 refusal, reads
// that return holes, block status that matches the layout written,
// trim and write-zeroes, read-only opening and close.

import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { MAX_EXTENTS, RawImage } from '../src/device/images/raw.js';
import { request, type ReadSegment } from '../src/device/types.js';
import { ThreadsEngine } from '../src/io/threads-engine.js';
import { tempDir } from './helpers/server.js';

const K64 = 64 << 10;
const SIZE = 1 << 20;
/** Where the test files hold data: [offset, length], 64 KiB aligned. */
const DATA: [number, number][] = [
  [2 * K64, K64],
  [8 * K64, 2 * K64],
];

function pattern(offset: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = ((offset + i) * 7 + 1) & 0xff || 1; // never zero
  return b;
}

/** A sparse SIZE-byte file with DATA written into it. */
function sparseFile(t: Test, name = 'disk.img'): string {
  const file = path.join(tempDir(t), name);
  RawImage.create(file, SIZE);
  const fd = fs.openSync(file, 'r+');
  for (const [offset, length] of DATA) fs.writeSync(fd, pattern(offset, length), 0, length, offset);
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  return file;
}

function open(t: Test, file: string, readOnly = false): RawImage {
  const engine = new ThreadsEngine();
  const img = RawImage.open(file, { readOnly, engine });
  let closed = false;
  const close = img.close.bind(img);
  img.close = async () => {
    closed = true;
    await close();
  };
  t.teardown(async () => {
    if (!closed) await close();
    engine.close();
  });
  return img;
}

function openFds(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

async function readAll(img: RawImage, offset: number, length: number, df = false): Promise<Buffer> {
  const segments = await img.read(request('read', offset, length, { df }));
  const out = Buffer.alloc(length);
  for (const s of segments) s.data?.copy(out, s.offset - offset);
  return out;
}

function expected(offset: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  for (const [o, l] of DATA) {
    const from = Math.max(o, offset);
    const to = Math.min(o + l, offset + length);
    if (from < to) pattern(from, to - from).copy(out, from - offset);
  }
  return out;
}

function summary(segments: ReadSegment[]): [number, number, 'data' | 'hole'][] {
  return segments.map((s) => [s.offset, s.length, s.data ? 'data' : 'hole']);
}

t.test('create makes a sparse file of the size and never replaces one', async (t) => {
  const file = path.join(tempDir(t), 'sub', 'new.img');
  RawImage.create(file, 3 * SIZE + 512);
  const st = fs.statSync(file);
  t.equal(st.size, 3 * SIZE + 512, 'size');
  t.equal(st.blocks, 0, 'no blocks allocated');
  fs.writeFileSync(file, 'keep me');
  t.throws(() => RawImage.create(file, SIZE), { code: 'EEXIST' });
  t.equal(fs.readFileSync(file, 'utf8'), 'keep me', 'the existing file is untouched');
});

t.test('open reports size, capabilities and description', async (t) => {
  const file = sparseFile(t);
  const img = open(t, file);
  t.equal(img.size, SIZE);
  t.equal(img.capabilities.readOnly, false);
  t.equal(img.capabilities.extents, true, 'ext4 reports holes');
  t.equal(img.capabilities.trim, true, 'ext4 punches holes');
  t.equal(img.capabilities.zero, true);
  t.same(img.capabilities.blockSizes, { minimum: 1, preferred: 4096, maximum: 32 << 20 });
  t.match(img.description, file);
});

t.test('a qcow2 file is refused', async (t) => {
  const file = path.join(tempDir(t), 'disk.qcow2');
  const head = Buffer.alloc(4096);
  head.writeUInt32BE(0x514649fb, 0);
  head.writeUInt32BE(3, 4);
  fs.writeFileSync(file, head);
  const before = openFds();
  t.throws(() => RawImage.open(file, { readOnly: false, engine: new ThreadsEngine() }), /qcow2/);
  t.throws(() => RawImage.open(file, { readOnly: true, engine: new ThreadsEngine() }), /qcow2/, 'read-only too');
  t.equal(openFds(), before, 'no descriptor leaked');
  const almost = path.join(tempDir(t), 'almost.img');
  head.writeUInt32BE(0x514649fa, 0);
  fs.writeFileSync(almost, head);
  t.equal(open(t, almost).size, 4096, 'another magic is just data');
});

t.test('a directory is refused', async (t) => {
  const dir = tempDir(t);
  t.throws(() => RawImage.open(dir, { readOnly: true, engine: new ThreadsEngine() }));
});

t.test('read of a sparse file returns holes as null and data as bytes', async (t) => {
  const img = open(t, sparseFile(t));
  const segments = await img.read(request('read', 0, SIZE));
  t.same(summary(segments), [
    [0, 2 * K64, 'hole'],
    [2 * K64, K64, 'data'],
    [3 * K64, 5 * K64, 'hole'],
    [8 * K64, 2 * K64, 'data'],
    [10 * K64, SIZE - 10 * K64, 'hole'],
  ]);
  for (const s of segments) if (s.data) t.ok(s.data.equals(pattern(s.offset, s.length)), `data at ${s.offset}`);
  t.ok((await readAll(img, 0, SIZE)).equals(expected(0, SIZE)), 'the whole image reads back');

  const mid = await img.read(request('read', 2 * K64 + 100, K64));
  t.same(summary(mid), [[2 * K64 + 100, K64, 'data']], 'a range starting inside data: its last partial block is sent as data');
  t.ok(mid[0].data!.equals(expected(2 * K64 + 100, K64)));
  const across = await img.read(request('read', 2 * K64 + 100, K64 + 8192));
  t.same(summary(across), [
    [2 * K64 + 100, K64 - 100, 'data'],
    [3 * K64, 8192, 'hole'],
    [3 * K64 + 8192, 100, 'data'],
  ], 'only whole aligned blocks become holes');
  t.same(summary(await img.read(request('read', 4 * K64, 4096))), [[4 * K64, 4096, 'hole']], 'inside a hole');
  t.same(await img.read(request('read', 0, 0)), [], 'zero bytes');

  await img.write(request('write', 4 * K64, 8192, { data: Buffer.alloc(8192) }));
  t.same(summary(await img.read(request('read', 4 * K64, 8192))), [[4 * K64, 8192, 'hole']], 'zeroes written (allocated) are sent as a hole too');
});

t.test('a df read gives one buffer with zeroes for the holes', async (t) => {
  const img = open(t, sparseFile(t));
  const segments = await img.read(request('read', K64, 4 * K64, { df: true }));
  t.equal(segments.length, 1);
  t.equal(segments[0].offset, K64);
  t.equal(segments[0].length, 4 * K64);
  t.ok(segments[0].data?.equals(expected(K64, 4 * K64)), 'bytes and zeroes in place');
});

t.test('blockStatus matches the layout written', async (t) => {
  const img = open(t, sparseFile(t));
  t.same(await img.blockStatus(request('blockStatus', 0, SIZE)), [
    { length: 2 * K64, hole: true, zero: true },
    { length: K64, hole: false, zero: false },
    { length: 5 * K64, hole: true, zero: true },
    { length: 2 * K64, hole: false, zero: false },
    { length: SIZE - 10 * K64, hole: true, zero: true },
  ]);
  t.same(await img.blockStatus(request('blockStatus', 2 * K64 + 512, 2 * K64)), [
    { length: K64 - 512, hole: false, zero: false },
    { length: K64 + 512, hole: true, zero: true },
  ], 'a range starting inside data');
  t.same(await img.blockStatus(request('blockStatus', 9 * K64, K64)), [{ length: K64, hole: false, zero: false }], 'inside data');
  const all = await img.blockStatus(request('blockStatus', 0, SIZE));
  t.equal(all.reduce((n, e) => n + e.length, 0), SIZE, 'extents cover the range exactly');
});

t.test('blockStatus with reqOne gives one extent', async (t) => {
  const img = open(t, sparseFile(t));
  t.same(await img.blockStatus(request('blockStatus', 0, SIZE, { reqOne: true })), [{ length: 2 * K64, hole: true, zero: true }]);
  t.same(await img.blockStatus(request('blockStatus', 2 * K64, SIZE - 2 * K64, { reqOne: true })), [{ length: K64, hole: false, zero: false }]);
  t.same(await img.blockStatus(request('blockStatus', 0, 4096, { reqOne: true })), [{ length: 4096, hole: true, zero: true }], 'no longer than asked');
});

t.test('blockStatus describes at most MAX_EXTENTS extents, contiguous from the offset', async (t) => {
  const file = path.join(tempDir(t), 'striped.img');
  const stripes = MAX_EXTENTS; // data, hole, data, hole...: twice as many extents as stripes
  RawImage.create(file, stripes * 8192);
  const fd = fs.openSync(file, 'r+');
  const block = Buffer.alloc(4096, 1);
  for (let i = 0; i < stripes; i++) fs.writeSync(fd, block, 0, 4096, i * 8192);
  fs.closeSync(fd);
  const img = open(t, file);
  const extents = await img.blockStatus(request('blockStatus', 0, img.size));
  t.equal(extents.length, MAX_EXTENTS, 'capped');
  t.ok(extents.every((e, i) => e.length === 4096 && e.hole === (i % 2 === 1)), 'alternating 4 KiB data and holes');
  t.equal(extents.reduce((n, e) => n + e.length, 0), (MAX_EXTENTS / 2) * 8192, 'covering a prefix of the request');
});

t.test('write, with and without FUA, reads back', async (t) => {
  const file = sparseFile(t);
  const img = open(t, file);
  const a = Buffer.alloc(4096, 0x5a);
  const b = Buffer.alloc(1000, 0xa5);
  await img.write(request('write', 5 * K64, 4096, { data: a }));
  await img.write(request('write', 5 * K64 + 4096, 1000, { data: b, fua: true }));
  await img.flush();
  t.ok((await readAll(img, 5 * K64, 4096)).equals(a));
  t.ok((await readAll(img, 5 * K64 + 4096, 1000)).equals(b), 'the FUA write');
  const onDisk = fs.readFileSync(file);
  t.ok(onDisk.subarray(5 * K64, 5 * K64 + 4096).equals(a), 'in the file');
  t.ok(onDisk.subarray(5 * K64 + 4096, 5 * K64 + 5096).equals(b));
  t.same((await img.blockStatus(request('blockStatus', 5 * K64, 4096)))[0], { length: 4096, hole: false, zero: false }, 'now data');
  await img.cache(request('cache', 0, SIZE));
  t.pass('cache succeeds');
});

t.test('trim punches a hole', async (t) => {
  const file = sparseFile(t);
  const img = open(t, file);
  const before = fs.statSync(file).blocks;
  t.ok(before > 0, 'data is allocated');
  await img.trim(request('trim', 8 * K64, 2 * K64, { fua: true }));
  const after = fs.statSync(file).blocks;
  t.equal(before - after, (2 * K64) / 512, 'exactly the trimmed blocks are freed');
  t.ok((await readAll(img, 8 * K64, 2 * K64, true)).equals(Buffer.alloc(2 * K64)), 'reads as zeroes');
  t.same(summary(await img.read(request('read', 8 * K64, 2 * K64))), [[8 * K64, 2 * K64, 'hole']], 'and as a hole');
  t.same(await img.blockStatus(request('blockStatus', 8 * K64, 2 * K64)), [{ length: 2 * K64, hole: true, zero: true }]);
  t.ok((await readAll(img, 2 * K64, K64)).equals(pattern(2 * K64, K64)), 'other data untouched');
});

t.test('writeZeroes without noHole reads back zero and frees the blocks', async (t) => {
  const file = sparseFile(t);
  const img = open(t, file);
  const before = fs.statSync(file).blocks;
  await img.writeZeroes(request('writeZeroes', 2 * K64, K64));
  t.ok((await readAll(img, 2 * K64, K64, true)).equals(Buffer.alloc(K64)), 'zeroes');
  t.ok(fs.statSync(file).blocks < before, 'blocks freed');
  t.ok((await readAll(img, 8 * K64, 2 * K64)).equals(pattern(8 * K64, 2 * K64)), 'other data untouched');
});

t.test('writeZeroes with noHole reads back zero and keeps the range allocated', async (t) => {
  const file = sparseFile(t);
  const img = open(t, file);
  const before = fs.statSync(file).blocks;
  await img.writeZeroes(request('writeZeroes', 8 * K64 + 4096, K64, { noHole: true, fua: true }));
  t.ok((await readAll(img, 8 * K64 + 4096, K64, true)).equals(Buffer.alloc(K64)), 'zeroes');
  t.equal(fs.statSync(file).blocks, before, 'nothing freed');
  const unaligned = 2 * K64 + 100;
  await img.writeZeroes(request('writeZeroes', unaligned, 300, { noHole: true }));
  const back = await readAll(img, 2 * K64, K64, true);
  t.ok(back.subarray(100, 400).equals(Buffer.alloc(300)), 'an unaligned range is zeroed');
  t.ok(back.subarray(0, 100).equals(pattern(2 * K64, 100)), 'the bytes before stay');
  t.ok(back.subarray(400).equals(pattern(2 * K64 + 400, K64 - 400)), 'the bytes after stay');
  t.ok(fs.readFileSync(file).subarray(8 * K64 + 4096, 9 * K64 + 4096).equals(Buffer.alloc(K64)), 'zero in the file too');
});

t.test('read-only open', async (t) => {
  const file = sparseFile(t);
  const before = openFds();
  const img = open(t, file, true);
  t.equal(openFds(), before + 1, 'one descriptor (no O_DSYNC twin)');
  t.equal(img.capabilities.readOnly, true);
  t.equal(img.capabilities.trim, false);
  t.equal(img.capabilities.zero, false);
  t.equal(img.capabilities.fastZero, false);
  t.equal(img.capabilities.flush, false);
  t.match(img.description, /read-only/);
  t.ok((await readAll(img, 0, SIZE)).equals(expected(0, SIZE)), 'reads work');
  t.same(summary(await img.read(request('read', 0, 3 * K64))), [[0, 2 * K64, 'hole'], [2 * K64, K64, 'data']]);
  await t.rejects(img.write(request('write', 0, 4, { data: Buffer.alloc(4, 1) })), { code: 'EBADF' }, 'the descriptor cannot write');
  t.ok(fs.readFileSync(file).subarray(0, 4).equals(Buffer.alloc(4)), 'file unchanged');
  fs.chmodSync(file, 0o444);
  const again = open(t, file, true);
  t.equal(again.size, SIZE, 'a file without write permission opens read-only');
});

t.test('close releases the descriptors', async (t) => {
  const file = sparseFile(t);
  const before = openFds();
  const img = open(t, file);
  t.equal(openFds(), before + 2, 'two descriptors (plain and O_DSYNC)');
  await img.close();
  t.equal(openFds(), before, 'both closed');
  const ro = open(t, file, true);
  await ro.close();
  t.equal(openFds(), before, 'read-only: closed');
});

t.test('direct I/O: a read-only image may have any size, a writable one must be whole blocks', async (t) => {
  const file = path.join(tempDir(t), 'odd.img');
  const size = 3 * 4096 + 100;
  fs.writeFileSync(file, pattern(0, size));
  const engine = new ThreadsEngine();
  t.teardown(() => engine.close());
  const img = RawImage.open(file, { readOnly: true, engine, direct: true });
  const tail = await img.read(request('read', 2 * 4096 + 50, 4096 + 50, { df: true }));
  t.ok(tail[0].data!.equals(pattern(2 * 4096 + 50, 4096 + 50)), 'a read across the unaligned end');
  const head = await img.read(request('read', 0, 4096, { df: true }));
  t.ok(head[0].data!.equals(pattern(0, 4096)), 'an aligned read');
  await img.close();
  t.throws(() => RawImage.open(file, { readOnly: false, engine, direct: true }), /multiple of 4096 bytes long, not 12388/);
});

t.test('readInto and writeFrom move bytes straight between the file and several buffers', async (t) => {
  const file = sparseFile(t);
  const img = open(t, file);
  const into = [Buffer.alloc(1000), Buffer.alloc(3096), Buffer.alloc(4096)];
  await img.readInto(request('read', 4096, 8192), into);
  t.same(Buffer.concat(into), expected(4096, 8192), 'a read lands in the buffers in order');
  const from = [pattern(1, 512), pattern(2, 1536), pattern(3, 2048)];
  for (const fua of [false, true]) {
    await img.writeFrom(request('write', 65536, 4096, { fua }), from);
    t.same(await readAll(img, 65536, 4096), Buffer.concat(from), `a write from buffers reads back (fua ${fua})`);
  }
});
