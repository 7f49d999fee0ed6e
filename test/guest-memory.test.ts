// Guest memory as a vhost-user back end sees it: a memfd the test shares
// like a front end would (its own mapping and pread/pwrite on the file
// stand for the guest), mapped by the MemoryTable. Writes cross both
// ways, every range is bounds-checked, regions of more than 4 GiB work
// through 1 GiB windows, a table replaced or a region removed keeps its
// old views until the caller says in-flight requests are done, and a
// view used after its memory was released never crashes the process.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import t from 'tap';
import { native } from '../src/io/native.js';
import { MemoryRegionError, MemoryTable, type MemoryRegion } from '../src/server/vhost-user/memory-table.js';
import { memfdCreate } from '../src/sys/memfd.js';

const needsAddon = { skip: native ? false : 'no native addon' };
const GiB = 2 ** 30;
const MiB = 2 ** 20;

/** A memfd of `size` bytes (sparse: nothing is allocated until written). */
function guestFile(t: { teardown(fn: () => void): void }, size: number): number {
  const fd = memfdCreate('vblk-test-guest');
  fs.ftruncateSync(fd, size);
  t.teardown(() => fs.closeSync(fd));
  return fd;
}

/** A region over `fd`: the table gets a duplicate descriptor, as it would from recvmsg, and closes it. */
function region(fd: number, gpa: number, size: number, uva: number, mmapOffset = 0): MemoryRegion {
  return { gpa, size, uva, mmapOffset, fd: fs.openSync(`/proc/self/fd/${fd}`, 'r+') };
}

const pwrite = (fd: number, bytes: Buffer, at: number) => fs.writeSync(fd, bytes, 0, bytes.length, at);
function pread(fd: number, length: number, at: number): Buffer {
  const b = Buffer.alloc(length);
  fs.readSync(fd, b, 0, length, at);
  return b;
}
const joined = (views: Buffer[] | null) => Buffer.concat(views ?? []);
const lengths = (views: Buffer[] | null) => views?.map((v) => v.length) ?? null;
const isClosed = (fd: number) => !fs.existsSync(`/proc/self/fd/${fd}`);

t.test('guest and table see each other\'s writes, through the file and through a second mapping', needsAddon, async (t) => {
  const fd = guestFile(t, 4 * MiB);
  const guest = Buffer.from(native!.mapShared(fd, 0, 4 * MiB, true).windows[0]);
  const table = new MemoryTable();
  table.add(region(fd, 0x10000000, 2 * MiB, 0x7f0000000000, 2 * MiB));

  pwrite(fd, Buffer.from('written by the guest'), 2 * MiB + 100);
  t.equal(joined(table.map(0x10000000 + 100, 20)).toString(), 'written by the guest', 'a pwrite shows in the table\'s view');
  guest.write('through the guest mapping', 3 * MiB);
  t.equal(joined(table.map(0x10000000 + MiB, 25)).toString(), 'through the guest mapping');

  const [view] = table.map(0x10000000 + 4096, 16)!;
  view.write('device wrote it');
  t.equal(pread(fd, 15, 2 * MiB + 4096).toString(), 'device wrote it', 'a write to a view reaches the file');
  t.equal(guest.toString('latin1', 2 * MiB + 4096, 2 * MiB + 4096 + 15), 'device wrote it', 'and the guest mapping');

  // A ring's index, written with Atomics as the virtqueue code will.
  const [ring] = table.mapUva(0x7f0000000000 + 8192, 4)!;
  Atomics.store(new Uint16Array(ring.buffer, ring.byteOffset, 2), 1, 0xbeef);
  t.equal(guest.readUInt16LE(2 * MiB + 8192 + 2), 0xbeef, 'mapUva reaches the same memory by front-end address');
});

t.test('map checks every range against the regions', needsAddon, async (t) => {
  const fd = guestFile(t, 3 * MiB);
  const table = new MemoryTable();
  // Two regions that touch in guest-physical space (not in uva), and one after a gap.
  table.add(region(fd, 0, MiB, 0x100000000, 0));
  table.add(region(fd, MiB, MiB, 0x300000000, MiB));
  table.add(region(fd, 4 * MiB, MiB, 0x200000000, 2 * MiB));
  t.same(table.regions.map((r) => r.gpa), [0, MiB, 4 * MiB], 'kept in gpa order');

  t.same(lengths(table.map(0, MiB)), [MiB], 'a whole region');
  t.same(lengths(table.map(MiB - 10, 30)), [10, 20], 'a range running on into the adjacent region is split there');
  pwrite(fd, Buffer.from('0123456789abcdefghij'), MiB - 10);
  t.equal(joined(table.map(MiB - 10, 20)).toString(), '0123456789abcdefghij', 'in order');
  t.equal(table.map(2 * MiB - 10, 20), null, 'a range running into the gap');
  t.equal(table.map(3 * MiB, 1), null, 'inside the gap');
  t.equal(table.map(5 * MiB - 1, 2), null, 'one byte past the last region');
  t.same(lengths(table.map(5 * MiB - 1, 1)), [1], 'the last byte');
  t.same(table.map(3 * MiB, 0), [], 'an empty range anywhere is no views');
  t.equal(table.map(-1, 1), null, 'negative');
  t.equal(table.map(0.5, 1), null, 'not an integer');
  t.equal(table.map(0, NaN), null, 'NaN');
  t.equal(table.map(2 ** 53, 1), null, 'past 2^53');
  t.equal(table.map(2 ** 53 - 2, 4), null, 'an end past 2^53');
  t.equal(table.map(0, 2 ** 64), null, 'a u64 length');

  t.same(lengths(table.mapUva(0x100000000 + MiB - 4, 4)), [4], 'by uva');
  t.equal(table.mapUva(0x100000000 + MiB - 4, 8), null, 'uva ranges do not run on where the uvas do not touch');
  t.equal(table.mapUva(MiB, 1), null, 'a gpa is not a uva');
});

t.test('regions that overlap or carry impossible numbers are refused, and their descriptors closed', needsAddon, async (t) => {
  const fd = guestFile(t, 4 * MiB);
  const table = new MemoryTable();
  table.add(region(fd, MiB, MiB, 0x100000, 0));
  const refused = (r: MemoryRegion, why: RegExp, name: string) => {
    t.throws(() => table.add(r), why, name);
    t.ok(isClosed(r.fd), `${name}: its descriptor is closed`);
  };
  refused(region(fd, MiB + MiB / 2, MiB, 0x900000, MiB), /overlaps .* guest-physical/, 'gpa overlap');
  refused(region(fd, 0, MiB + 1, 0x900000, MiB), /overlaps/, 'gpa overlap by one byte');
  refused(region(fd, 8 * MiB, MiB, 0x100000 + MiB - 1, MiB), /overlaps .* front-end virtual/, 'uva overlap');
  refused(region(fd, 8 * MiB, 0, 0x900000, 0), /integers below 2\^53, the size above 0/, 'size 0');
  refused(region(fd, 2 ** 53, MiB, 0x900000, 0), /below 2\^53/, 'gpa of 2^53');
  refused(region(fd, 2 ** 53 - MiB + 1, MiB, 0x900000, 0), /below 2\^53/, 'end past 2^53');
  refused(region(fd, 8 * MiB, MiB, 0x900000, -4096), /below 2\^53/, 'negative offset');
  refused(region(fd, 8 * MiB, MiB, 0x900000, 3.5), /below 2\^53/, 'fractional offset');
  refused(region(fd, 8 * MiB, 4 * MiB, 0x900000, MiB), /past the end of the file/, 'past the end of the file (SIGBUS if touched)');
  table.add(region(fd, 8 * MiB, MiB, 0x900000, 0));
  t.throws(() => table.add(region(fd, 8 * MiB, MiB, 0x900000, 0)), MemoryRegionError, 'the same region twice');
  t.same(table.regions, [
    { gpa: MiB, size: MiB, uva: 0x100000, mmapOffset: 0 },
    { gpa: 8 * MiB, size: MiB, uva: 0x900000, mmapOffset: 0 },
  ], 'only the good regions are in');
  const added = region(fd, 16 * MiB, MiB, 0xa00000, 0);
  table.add(added);
  t.ok(isClosed(added.fd), 'an added region\'s descriptor is closed once mapped');
});

t.test('a region at an unaligned file offset', needsAddon, async (t) => {
  const fd = guestFile(t, 2 * MiB);
  const table = new MemoryTable();
  table.add(region(fd, 0x1000, 4000, 0x5000, 12345));
  pwrite(fd, Buffer.from('start'), 12345);
  pwrite(fd, Buffer.from('end'), 12345 + 3997);
  t.equal(joined(table.map(0x1000, 5)).toString(), 'start');
  t.equal(joined(table.map(0x1000 + 3997, 3)).toString(), 'end');
  t.equal(table.map(0x1000 + 3997, 4), null);
});

t.test('views split at window boundaries', needsAddon, async (t) => {
  const fd = guestFile(t, MiB);
  const table = new MemoryTable(64 * 1024);
  table.add(region(fd, 0x40000000, MiB, 0x40000000));
  const pattern = Buffer.alloc(200 * 1024);
  for (let i = 0; i < pattern.length; i++) pattern[i] = (i * 7) & 0xff;
  pwrite(fd, pattern, 100 * 1024);
  const views = table.map(0x40000000 + 100 * 1024, pattern.length)!;
  t.same(lengths(views), [28 * 1024, 64 * 1024, 64 * 1024, 44 * 1024], 'one view per window touched');
  t.ok(joined(views).equals(pattern), 'together they are the range');
  t.same(lengths(table.map(0x40000000 + 64 * 1024, 64 * 1024)), [64 * 1024], 'a range that is exactly a window');
});

t.test('a sparse 5 GiB region: every byte reachable, nothing allocated but what is touched', needsAddon, async (t) => {
  const size = 5 * GiB;
  const fd = guestFile(t, size);
  const table = new MemoryTable();
  const base = 0x100000000;
  table.add(region(fd, base, size, 0x7e0000000000));

  const end = table.map(base + size - 4096, 4096)!;
  t.same(lengths(end), [4096], 'the last page');
  end[0].write('last page of 5 GiB');
  end[0][4095] = 0x77;
  t.equal(pread(fd, 18, size - 4096).toString(), 'last page of 5 GiB', 'reaches the file at offset 5 GiB - 4 KiB');
  t.equal(pread(fd, 1, size - 1)[0], 0x77, 'and its very last byte');
  t.equal(table.map(base + size - 4096, 4097), null, 'one byte more is out');

  // Across the boundary between the fourth and fifth 1 GiB windows.
  const across = table.map(base + 4 * GiB - 6, 12)!;
  t.same(lengths(across), [6, 6], 'a range across 4 GiB is two views');
  across[0].write('before');
  across[1].write('after!');
  t.equal(pread(fd, 12, 4 * GiB - 6).toString(), 'beforeafter!');
  pwrite(fd, Buffer.from('guest at 3G+'), 3 * GiB - 4);
  t.equal(joined(table.map(base + 3 * GiB - 4, 12)).toString(), 'guest at 3G+', 'and the other way, across 3 GiB');

  const allocated = fs.fstatSync(fd).blocks * 512;
  t.ok(allocated <= 64 * 4096, `only the touched pages are allocated (${allocated} bytes)`);
});

t.test('replace: the new table at once, the old views until the requests are drained', needsAddon, async (t) => {
  const fd = guestFile(t, 4 * MiB);
  const table = new MemoryTable();
  table.add(region(fd, 0, 2 * MiB, 0x1000000));
  const [old] = table.map(4096, 64)!;
  pwrite(fd, Buffer.from('before'), 4096);

  let drain!: () => void;
  const drained = new Promise<void>((resolve) => (drain = resolve));
  table.replace([region(fd, 0, 2 * MiB, 0x2000000, 2 * MiB)], drained);
  t.same(table.regions, [{ gpa: 0, size: 2 * MiB, uva: 0x2000000, mmapOffset: 2 * MiB }], 'the new regions serve at once');
  t.equal(table.mapUva(0x1000000, 1), null, 'the old uvas are gone');
  pwrite(fd, Buffer.from('new map'), 2 * MiB + 4096);
  t.equal(joined(table.map(4096, 7)).toString(), 'new map');

  await new Promise(setImmediate);
  t.equal(old.toString('latin1', 0, 6), 'before', 'an in-flight request still sees the old guest memory');
  old.write('late write');
  t.equal(pread(fd, 10, 4096).toString(), 'late write', 'and still writes to it');

  drain();
  await drained;
  await new Promise(setImmediate);
  pwrite(fd, Buffer.from('after the drain'), 4096);
  t.ok(old.subarray(0, 15).equals(Buffer.alloc(15)), 'once drained, an old view reads zeros, not the guest');
  old.write('stray write');
  t.equal(pread(fd, 15, 4096).toString(), 'after the drain', 'and its writes no longer reach the guest');
});

t.test('a failed replace leaves the old table and closes every descriptor', needsAddon, async (t) => {
  const fd = guestFile(t, 2 * MiB);
  const table = new MemoryTable();
  table.add(region(fd, 0, MiB, 0x1000000));
  const good = region(fd, 0, MiB, 0x3000000);
  const overlapping = region(fd, MiB / 2, MiB, 0x4000000);
  t.throws(() => table.replace([good, overlapping], Promise.resolve()), /overlaps/);
  const pastEnd = region(fd, 4 * MiB, 4 * MiB, 0x5000000);
  const good2 = region(fd, 0, MiB, 0x3000000);
  t.throws(() => table.replace([good2, pastEnd], Promise.resolve()), /could not be mapped: .*past the end of the file/);
  t.ok([good, overlapping, good2, pastEnd].every((r) => isClosed(r.fd)), 'all four descriptors closed');
  t.same(table.regions, [{ gpa: 0, size: MiB, uva: 0x1000000, mmapOffset: 0 }], 'the old table is untouched');
  pwrite(fd, Buffer.from('still mapped'), 0);
  t.equal(joined(table.map(0, 12)).toString(), 'still mapped');
});

t.test('remove: by gpa, size and uva, released once drained', needsAddon, async (t) => {
  const fd = guestFile(t, 2 * MiB);
  const table = new MemoryTable();
  table.add(region(fd, 0, MiB, 0x1000000));
  table.add(region(fd, MiB, MiB, 0x2000000, MiB));
  t.equal(table.remove({ gpa: MiB, size: MiB, uva: 0x9000000 }), false, 'a different uva matches nothing');
  t.equal(table.remove({ gpa: MiB, size: MiB / 2, uva: 0x2000000 }), false, 'a different size matches nothing');
  const [view] = table.map(MiB, 16)!;
  let drain!: () => void;
  t.equal(table.remove({ gpa: MiB, size: MiB, uva: 0x2000000 }, new Promise<void>((resolve) => (drain = resolve))), true);
  t.equal(table.map(MiB, 1), null, 'the region is gone from the table at once');
  t.same(lengths(table.map(0, MiB)), [MiB], 'the other stays');
  pwrite(fd, Buffer.from('guest'), MiB);
  await new Promise(setImmediate);
  t.equal(view.toString('latin1', 0, 5), 'guest', 'an old view still works until drained');
  drain();
  await new Promise(setImmediate);
  t.equal(view.toString('latin1', 0, 5), '\0\0\0\0\0', 'then reads zeros');
  table.clear();
  t.same(table.regions, [], 'clear empties the table');
});

// In a child process: a crash there fails this test instead of the run.
t.test('views used after unmap, then collected: no crash, and the address space is given back', needsAddon, async (t) => {
  const script = `
    import fs from 'node:fs';
    import { native } from ${JSON.stringify(new URL('../src/io/native.js', import.meta.url).href)};
    import { memfdCreate } from ${JSON.stringify(new URL('../src/sys/memfd.js', import.meta.url).href)};
    const maps = () => fs.readFileSync('/proc/self/maps', 'utf8');
    const fd = memfdCreate('vblk-gc-probe');
    fs.ftruncateSync(fd, 6 * 2 ** 30);
    let m = native.mapShared(fd, 0, 6 * 2 ** 30, true);
    fs.closeSync(fd);
    let views = m.windows.map((w) => Buffer.from(w));
    views[5][views[5].length - 1] = 1;
    const out = { mappedBefore: maps().includes('vblk-gc-probe') };
    out.unmapped = m.unmap();
    out.unmappedAgain = m.unmap();
    out.probeAfterUnmap = maps().includes('vblk-gc-probe');
    out.placeholder = maps().includes('vblk-unmapped-guest-memory');
    views[5][views[5].length - 1] = 2;
    views[0].fill(9, 0, 4096);
    out.readsAfterUnmap = [views[5][views[5].length - 1], views[0][0], views[3][12345]];
    m = null;
    globalThis.gc();
    out.afterFirstGc = views[1][0];
    views = null;
    for (let i = 0; i < 5; i++) { globalThis.gc(); await new Promise(setImmediate); }
    out.placeholderAfterGc = maps().includes('vblk-unmapped-guest-memory');
    console.log(JSON.stringify(out));
  `;
  const r = spawnSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', script], { encoding: 'utf8' });
  t.equal(r.signal, null, 'no signal killed the child');
  t.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  t.equal(out.mappedBefore, true, 'the memfd was mapped');
  t.same([out.unmapped, out.unmappedAgain], [true, true], 'unmap succeeds, and again');
  t.equal(out.probeAfterUnmap, false, 'the guest file is no longer mapped');
  t.equal(out.placeholder, true, 'a placeholder holds the addresses');
  t.same(out.readsAfterUnmap, [2, 9, 0], 'views still read and write, into the placeholder');
  t.equal(out.afterFirstGc, 0);
  t.equal(out.placeholderAfterGc, false, 'once the views are collected the addresses are released');
});

t.test('mapShared refuses bad arguments with errors', needsAddon, async (t) => {
  const fd = guestFile(t, MiB);
  t.throws(() => native!.mapShared(fd, 0, 0, true), TypeError, 'length 0');
  t.throws(() => native!.mapShared(fd, -4096, 4096, true), TypeError, 'negative offset');
  t.throws(() => native!.mapShared(fd, 0, 2 ** 53, true), TypeError, 'length past 2^53');
  t.throws(() => native!.mapShared(fd, 0, 4096, true, 2 ** 30 + 1), TypeError, 'a window over 1 GiB');
  t.throws(() => native!.mapShared(fd, 0, MiB + 1, true), RangeError, 'past the end of the file');
  const badFd = fs.openSync('/dev/null', 'r');
  fs.closeSync(badFd);
  t.throws(() => native!.mapShared(badFd, 0, 4096, true), /fstat failed: Bad file descriptor/, 'a closed descriptor');
  const ro = fs.openSync(`/proc/self/fd/${fd}`, 'r');
  t.teardown(() => fs.closeSync(ro));
  const cow = native!.mapShared(ro, 0, 4096, false);
  const view = Buffer.from(cow.windows[0]);
  pwrite(fd, Buffer.from('file'), 0);
  t.equal(view.toString('latin1', 0, 4), 'file', 'writable=false follows the file while unwritten');
  view.write('mine');
  t.equal(pread(fd, 4, 0).toString(), 'file', 'and its writes stay private');
  t.throws(() => native!.mapShared(ro, 0, 4096, true), /mmap failed: Permission denied/, 'writable needs a writable descriptor');
});
