// withoutZeroBlocks: the segments cover what was read, in order, holes are
// exactly the aligned all-zero blocks, and no aligned zero block is left
// in a data segment.

import fc from 'fast-check';
import t from 'tap';
import { withoutZeroBlocks, ZERO_BLOCK } from '../src/device/zero-blocks.js';

const B = ZERO_BLOCK;

t.test('examples', async (t) => {
  const data = Buffer.alloc(4 * B, 1);
  data.fill(0, B, 3 * B);
  t.same(
    withoutZeroBlocks(0, data).map((s) => [s.offset, s.length, s.data !== null]),
    [[0, B, true], [B, 2 * B, false], [3 * B, B, true]],
    'two zero blocks in the middle become one hole',
  );
  t.same(withoutZeroBlocks(B, Buffer.alloc(B)).map((s) => s.data), [null], 'a whole zero read is one hole');
  t.same(
    withoutZeroBlocks(100, Buffer.alloc(B)).map((s) => [s.offset, s.length, s.data !== null]),
    [[100, B, true]],
    'an unaligned read holds no whole aligned block: all data',
  );
  const aligned = withoutZeroBlocks(B - 10, Buffer.alloc(B + 20));
  t.same(aligned.map((s) => [s.offset, s.length, s.data !== null]), [[B - 10, 10, true], [B, B, false], [2 * B, 10, true]], 'the block inside is found');
  t.same(withoutZeroBlocks(0, Buffer.alloc(0)), [], 'nothing read, no segments');
});

t.test('property: covers the data, holes are exactly the aligned zero blocks', async (t) => {
  // 'onebyte': zero but its last byte, found only by the whole compare; 'secondbyte': zero but its second, like fio's data.
  const blocks = fc.array(fc.constantFrom('zero', 'data', 'onebyte', 'secondbyte'), { maxLength: 12 });
  fc.assert(
    fc.property(fc.nat(3 * B), blocks, fc.nat(B), fc.nat(B), (offset, kinds, head, tail) => {
      const data = Buffer.alloc(head + kinds.length * B + tail, 0);
      kinds.forEach((k, i) => {
        const at = head + i * B;
        if (k === 'data') data.fill(7, at, at + B);
        if (k === 'onebyte') data[at + B - 1] = 1;
        if (k === 'secondbyte') data[at + 1] = 1;
      });
      const segments = withoutZeroBlocks(offset, data);
      let pos = offset;
      const rebuilt = Buffer.alloc(data.length);
      for (const s of segments) {
        if (s.offset !== pos || s.length <= 0) return false;
        if (s.data) {
          if (s.data.length !== s.length) return false;
          s.data.copy(rebuilt, s.offset - offset);
          // No whole aligned zero block inside a data segment.
          for (let b = Math.ceil(s.offset / B) * B; b + B <= s.offset + s.length; b += B) {
            if (s.data.subarray(b - s.offset, b - s.offset + B).every((x) => x === 0)) return false;
          }
        } else if (s.offset % B !== 0 || s.length % B !== 0) {
          return false;
        }
        pos += s.length;
      }
      return pos === offset + data.length && rebuilt.equals(data);
    }),
    { seed: 42, numRuns: 500 },
  );
  t.pass('500 cases');
});
