// BufferPool: every buffer it hands out starts on the alignment (as the
// native addon reports it), is exactly the size asked for, and never
// shares bytes with another buffer still in use; small read buffers come
// out of shared slabs and are never reused, larger ones and bounce
// buffers are blocks that come back once released or given.

import t from 'tap';
import { BufferPool } from '../src/io/buffer-pool.js';
import { native } from '../src/io/native.js';

const ALIGN = 4096;
const needsAddon = { skip: native ? false : 'no native addon' };

function counted(): { pool: BufferPool; blocks: () => number } {
  let blocks = 0;
  const pool = new BufferPool((size: number, alignment: number) => (blocks++, native!.alignedBuffer(size, alignment)), ALIGN);
  return { pool, blocks: () => blocks };
}

t.test('read and bounce buffers are aligned, exact and disjoint', needsAddon, async (t) => {
  const { pool, blocks } = counted();
  const sizes = [4096, 1, 512, 4097, 65536, 8192, 3000, 1 << 20, 4096, 100_000, 4096];
  const live = sizes.map((size) => pool.allocate(size)).concat(sizes.map((size) => pool.take(size)));
  live.forEach((b, i) => {
    const size = sizes[i % sizes.length];
    t.equal(b.length, size, `buffer ${i} is ${size} bytes`);
    t.equal(native!.addressModulo(b, ALIGN), 0, `buffer ${i} starts aligned`);
    t.ok(pool.owns(b), `buffer ${i} is the pool's`);
    b.fill(i + 1);
  });
  live.forEach((b, i) => t.ok(b.every((x: number) => x === i + 1), `buffer ${i} kept its bytes`));
  const before = blocks();
  pool.allocate(4096);
  t.equal(blocks(), before, 'a small read buffer comes out of the current slab');
  const bounce = pool.take(8192);
  pool.give(bounce);
  t.equal(pool.take(8000).buffer, bounce.buffer, 'a given-back buffer is taken again');
});

t.test('a released large read buffer is reused; a released small one is not', needsAddon, async (t) => {
  const { pool, blocks } = counted();
  const big = pool.allocate(1 << 20);
  pool.release(big.subarray(4096, 8192));
  t.equal(pool.allocate(1 << 20).buffer, big.buffer, 'released through any view, the block comes back');
  const small = pool.allocate(4096);
  const slabs = blocks();
  pool.release(small);
  const next = pool.allocate(1 << 20);
  t.not(next.buffer, small.buffer, 'a slab is never handed out as a block');
  t.equal(blocks(), slabs + 1);
  const foreign = Buffer.alloc(1 << 20);
  pool.release(foreign);
  const before = blocks();
  t.not(pool.allocate(1 << 20).buffer, foreign.buffer, 'a buffer the pool did not make is never handed out');
  t.equal(blocks(), before + 1, 'a new block was made instead');
});

t.test('giving a block back twice hands it out once', async (t) => {
  const pool = new BufferPool((size: number) => Buffer.alloc(size), 64);
  const big = pool.allocate(256 << 10);
  pool.release(big);
  pool.release(big.subarray(10));
  const first = pool.allocate(256 << 10);
  const second = pool.allocate(256 << 10);
  t.equal(first.buffer, big.buffer, 'the block comes back');
  t.not(second.buffer, big.buffer, 'but only to one taker');
});
