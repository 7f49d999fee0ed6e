// memory:SIZE (device/images/memory.ts): a property test against a flat
// buffer (any mix of writes, trims and zero writes, over a size that is
// not a whole number of pages, reads back the same), the memory it holds
// (trimmed and zeroed whole pages are given back), block status, and
// through `vblk serve memory:SIZE` with qemu-io and nbdinfo.

import fc from 'fast-check';
import t from 'tap';
import { MemoryImage } from '../src/device/images/memory.js';
import { joinSegments, request } from '../src/device/types.js';
import { serve, vblk } from './helpers/server.js';
import { run } from './helpers/tools.js';

const SIZE = 300 * 1024 + 123;
const PAGE = 64 << 10;

const op = fc.record({
  kind: fc.constantFrom('write', 'trim', 'zero', 'zero-nohole'),
  offset: fc.nat(SIZE - 1),
  length: fc.integer({ min: 1, max: 3 * PAGE }),
  byte: fc.integer({ min: 1, max: 255 }),
});

t.test('property: reads match a flat buffer after any writes, trims and zero writes', async (t) => {
  await fc.assert(
    fc.asyncProperty(fc.array(op, { maxLength: 40 }), async (ops) => {
      const disk = new MemoryImage(SIZE);
      const model = Buffer.alloc(SIZE);
      for (const o of ops) {
        const length = Math.min(o.length, SIZE - o.offset);
        if (o.kind === 'write') {
          const data = Buffer.alloc(length, o.byte);
          await disk.write(request('write', o.offset, length, { data }));
          data.copy(model, o.offset);
        } else {
          if (o.kind === 'trim') await disk.trim(request('trim', o.offset, length));
          else await disk.writeZeroes(request('writeZeroes', o.offset, length, { noHole: o.kind === 'zero-nohole' }));
          model.fill(0, o.offset, o.offset + length);
        }
      }
      const got = joinSegments(0, SIZE, await disk.read(request('read', 0, SIZE)));
      if (!got.equals(model)) throw new Error('the disk differs from the model');
      const extents = await disk.blockStatus(request('blockStatus', 0, SIZE));
      if (extents.reduce((n, e) => n + e.length, 0) !== SIZE) throw new Error('extents do not cover the disk');
      let at = 0;
      for (const e of extents) {
        if (e.hole && model.subarray(at, at + e.length).some((b) => b !== 0)) throw new Error(`a hole at ${at} holds data`);
        at += e.length;
      }
    }),
    { seed: 5, numRuns: 200 },
  );
  t.pass('200 runs');
});

t.test('pages are allocated by writes and given back by trims and zero writes', async (t) => {
  const disk = new MemoryImage(1 << 20);
  t.equal(disk.allocated, 0, 'a new disk holds nothing');
  await disk.write(request('write', PAGE - 1, 2, { data: Buffer.from([1, 2]) }));
  t.equal(disk.allocated, 2 * PAGE, 'a write across a page boundary allocates both pages');
  await disk.trim(request('trim', 0, PAGE));
  t.equal(disk.allocated, PAGE, 'a trim of a whole page gives it back');
  await disk.writeZeroes(request('writeZeroes', PAGE, 10));
  t.equal(disk.allocated, PAGE, 'zeroing part of a page keeps it');
  await disk.writeZeroes(request('writeZeroes', 2 * PAGE, PAGE, { noHole: true }));
  t.equal(disk.allocated, 2 * PAGE, 'NO_HOLE zeroes allocate');
  t.same(await disk.blockStatus(request('blockStatus', 0, 4 * PAGE)), [
    { length: PAGE, hole: true, zero: true },
    { length: 2 * PAGE, hole: false, zero: false },
    { length: PAGE, hole: true, zero: true },
  ]);
  t.same(await disk.blockStatus(request('blockStatus', 0, 4 * PAGE, { reqOne: true })), [{ length: PAGE, hole: true, zero: true }], 'REQ_ONE');
  const read = await disk.read(request('read', 0, 4 * PAGE));
  t.same(
    read.map((s) => [s.offset, s.length, s.data !== null]),
    [
      [0, PAGE, false],
      [PAGE, PAGE, true],
      [2 * PAGE, PAGE, true],
      [3 * PAGE, PAGE, false],
    ],
    'unallocated pages read as hole segments',
  );
  t.throws(() => new MemoryImage(0), RangeError);
  await disk.close();
  t.equal(disk.allocated, 0, 'close frees everything');
});

t.test('vblk serve memory:SIZE with qemu-io and nbdinfo', async (t) => {
  const served = await serve(t, ['memory:64M']);
  const uri = served.uri();
  const io = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1M 1M', '-c', 'read -P 0x5a 1M 1M', '-c', 'read -P 0 0 1M', '-c', 'discard 1M 64K', '-c', 'read -P 0 1M 64K', uri]);
  t.equal(io.code, 0, io.stderr);
  t.notMatch(io.stdout, /fail|error/i, `qemu-io's pattern checks pass: ${io.stdout}`);
  const size = await run('nbdinfo', ['--size', uri]);
  t.equal(size.stdout.trim(), String(64 << 20), 'nbdinfo sees 64 MiB');
  const map = await run('nbdinfo', ['--map', uri]);
  t.match(map.stdout, new RegExp(`^\\s+${(1 << 20) + PAGE}\\s+${(1 << 20) - PAGE}\\s+0\\s+data`, 'm'), `the written range is data, the rest holes:\n${map.stdout}`);
  t.match(map.stdout, /hole,zero/);
  const bad = await vblk(['serve', 'memory:lots', '--socket', `${served.dir}/x.sock`]);
  t.equal(bad.code, 2, 'a size that is not one is a usage error');
  t.match(bad.stderr, /'lots' is not a size/);
});
