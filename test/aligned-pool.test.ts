// AlignedPool: every buffer it hands out starts on the alignment (as the
// native addon reports it), is exactly the size asked for, and never
// shares bytes with another buffer still in use; carved read buffers come
// out of shared slabs, larger ones get blocks of their own, and given-back
// bounce buffers are reused.

import t from 'tap';
import { AlignedPool } from '../src/io/aligned-pool.js';
import { native } from '../src/io/native.js';

const ALIGN = 4096;

t.test('carved and taken buffers are aligned, exact and disjoint', { skip: native ? false : 'no native addon' }, async (t) => {
  let blocks = 0;
  const pool = new AlignedPool((size, alignment) => (blocks++, native!.alignedBuffer(size, alignment)), ALIGN);
  const sizes = [4096, 1, 512, 4097, 65536, 8192, 3000, 1 << 20, 4096, 100_000, 4096];
  const live = sizes.map((size) => pool.carve(size)).concat(sizes.map((size) => pool.take(size)));
  live.forEach((b, i) => {
    const size = sizes[i % sizes.length];
    t.equal(b.length, size, `buffer ${i} is ${size} bytes`);
    t.equal(native!.addressModulo(b, ALIGN), 0, `buffer ${i} starts aligned`);
    t.ok(pool.owns(b), `buffer ${i} is the pool's`);
    b.fill(i + 1);
  });
  live.forEach((b, i) => t.ok(b.every((x) => x === i + 1), `buffer ${i} kept its bytes`));
  const before = blocks;
  pool.carve(4096);
  t.equal(blocks, before, 'a small read buffer comes out of the current slab');
  const bounce = pool.take(8192);
  pool.give(bounce);
  t.equal(pool.take(8000).buffer, bounce.buffer, 'a given-back buffer is taken again');
});

t.test('a full slab is replaced by a new one', { skip: native ? false : 'no native addon' }, async (t) => {
  let blocks = 0;
  const pool = new AlignedPool((size, alignment) => (blocks++, native!.alignedBuffer(size, alignment)), ALIGN);
  const first = pool.carve(4096);
  for (let i = 1; i < 256; i++) pool.carve(4096);
  t.equal(blocks, 1, '256 buffers of 4 KiB fill one 1 MiB slab');
  const next = pool.carve(4096);
  t.equal(blocks, 2, 'the 257th starts a new slab');
  t.not(next.buffer, first.buffer);
});
