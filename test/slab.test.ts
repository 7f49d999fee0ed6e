// Slab: any sequence of requests gets buffers of exactly the size asked
// for, starting on the alignment, never sharing a byte with another; small
// ones come out of 1 MiB slabs, larger ones are blocks of their own.

import fc from 'fast-check';
import t from 'tap';
import { Slab } from '../src/io/slab.js';

t.test('buffers are exact, aligned and disjoint', async (t) => {
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 0, max: 200_000 }), { maxLength: 300 }), fc.constantFrom(1, 64, 4096), (sizes, alignment) => {
      const blocks: Buffer[] = [];
      const slab = new Slab((size) => {
        const b = Buffer.alloc(size);
        blocks.push(b);
        return b;
      }, alignment);
      const got = sizes.map((size) => slab.carve(size));
      got.forEach((b, i) => {
        if (b.length !== sizes[i]) throw new Error(`buffer ${i} is ${b.length} bytes, not ${sizes[i]}`);
        if (b.byteOffset % alignment !== 0) throw new Error(`buffer ${i} starts at ${b.byteOffset}`);
        b.fill((i % 255) + 1);
      });
      got.forEach((b, i) => {
        if (!b.every((x) => x === (i % 255) + 1)) throw new Error(`buffer ${i} was overwritten`);
      });
      const small = sizes.filter((s) => s <= 64 << 10);
      const slabs = blocks.filter((b) => b.length === 1 << 20).length;
      const needed = small.reduce((sum, s) => sum + Math.max(alignment, Math.ceil(s / alignment) * alignment), 0);
      if (slabs > Math.ceil(needed / ((1 << 20) - (64 << 10))) + 1) throw new Error(`${slabs} slabs for ${needed} bytes`);
    }),
  );
  t.pass('property held');
});

t.test('a request past 64 KiB gets a block of its own', async (t) => {
  const sizes: number[] = [];
  const slab = new Slab((size) => (sizes.push(size), Buffer.alloc(size)), 64);
  slab.carve(4096);
  slab.carve(100_000);
  slab.carve(4096);
  t.same(sizes, [1 << 20, 100_000], 'one slab for both small buffers, one block for the large one');
});
