// ByteQueue: frames taken from inside one chunk are views of it, frames
// spanning chunks are copied once into a buffer of exactly their size, and
// any chunking of a byte string reads back the same through any sequence
// of take, skip and copyInto.

import fc from 'fast-check';
import t from 'tap';
import { ByteQueue } from '../src/server/byte-queue.js';

/** Fresh, non-pooled memory, so sharing can be told apart from copying. */
function chunk(...bytes: number[]): Buffer {
  const b = Buffer.alloc(bytes.length);
  b.set(bytes);
  return b;
}

function sharesMemory(a: Buffer, b: Buffer): boolean {
  return a.buffer === b.buffer;
}

t.test('take within a chunk returns a view, not a copy', async (t) => {
  const c = chunk(1, 2, 3, 4, 5, 6, 7, 8);
  const q = new ByteQueue();
  q.push(c);
  const first = q.take(3)!;
  t.same([...first], [1, 2, 3]);
  t.ok(sharesMemory(first, c), 'same underlying memory');
  t.equal(first.byteOffset, c.byteOffset, 'at the start of the chunk');
  const second = q.take(4)!;
  t.same([...second], [4, 5, 6, 7]);
  t.equal(second.byteOffset, c.byteOffset + 3, 'right after the first frame');
  second[0] = 99;
  t.equal(c[3], 99, 'writing the view writes the chunk');
  t.equal(q.length, 1);
  const last = q.take(1)!;
  t.same([...last], [8]);
  t.ok(sharesMemory(last, c), 'the tail of the chunk is a view too');
  t.equal(q.length, 0);
});

t.test('take across chunks copies exactly the frame', async (t) => {
  const a = chunk(1, 2, 3);
  const b = chunk(4, 5);
  const c = chunk(6, 7, 8, 9);
  const q = new ByteQueue();
  q.push(a);
  q.push(b);
  q.push(c);
  t.equal(q.length, 9);
  q.take(2);
  const frame = q.take(5)!;
  t.same([...frame], [3, 4, 5, 6, 7]);
  t.equal(frame.length, 5, 'exactly the frame');
  for (const src of [a, b, c]) t.notOk(sharesMemory(frame, src), 'not a view of any chunk');
  frame.fill(0);
  t.same([...a, ...b, ...c], [1, 2, 3, 4, 5, 6, 7, 8, 9], 'writing the copy leaves the chunks alone');
  t.equal(q.length, 2);
  t.same([...q.take(2)!], [8, 9]);
});

t.test('take of more than is queued gives null and consumes nothing', async (t) => {
  const q = new ByteQueue();
  t.equal(q.take(1), null, 'empty queue');
  q.push(chunk(1, 2));
  q.push(chunk(3));
  t.equal(q.take(4), null);
  t.equal(q.length, 3, 'nothing consumed');
  t.same([...q.take(3)!], [1, 2, 3]);
  t.equal(q.take(0)?.length, 0, 'take(0) of an empty queue is an empty buffer');
});

t.test('empty chunks are ignored', async (t) => {
  const q = new ByteQueue();
  q.push(Buffer.alloc(0));
  t.equal(q.length, 0);
  q.push(chunk(1));
  q.push(Buffer.alloc(0));
  q.push(chunk(2));
  t.equal(q.length, 2);
  t.same([...q.take(2)!], [1, 2]);
});

t.test('copyInto moves up to max bytes into the target at an offset', async (t) => {
  const q = new ByteQueue();
  q.push(chunk(1, 2, 3));
  q.push(chunk(4, 5, 6));
  const target = Buffer.alloc(10, 0xee);
  t.equal(q.copyInto(target, 2, 4), 4, 'four bytes');
  t.same([...target], [0xee, 0xee, 1, 2, 3, 4, 0xee, 0xee, 0xee, 0xee]);
  t.equal(q.length, 2);
  t.equal(q.copyInto(target, 8, 100), 2, 'only what is queued');
  t.same([...target.subarray(8)], [5, 6]);
  t.equal(q.length, 0);
  t.equal(q.copyInto(target, 0, 5), 0, 'nothing left');
  t.equal(target[0], 0xee, 'and nothing written');
});

t.test('skip drops up to n bytes', async (t) => {
  const q = new ByteQueue();
  q.push(chunk(1, 2, 3));
  q.push(chunk(4, 5, 6));
  t.equal(q.skip(0), 0);
  t.equal(q.skip(4), 4, 'across a chunk boundary');
  t.equal(q.length, 2);
  t.same([...q.take(1)!], [5]);
  t.equal(q.skip(10), 1, 'only what is queued');
  t.equal(q.length, 0);
  t.equal(q.skip(1), 0, 'empty');
});

t.test('length accounting across pushes and partial reads', async (t) => {
  const q = new ByteQueue();
  let expected = 0;
  for (let i = 1; i <= 10; i++) {
    q.push(Buffer.alloc(i, i));
    expected += i;
    t.equal(q.length, expected, `after push ${i}`);
    q.take(1);
    expected -= 1;
    t.equal(q.length, expected, `after take ${i}`);
  }
  const out = Buffer.alloc(expected);
  t.equal(q.copyInto(out, 0, expected), expected);
  t.equal(q.length, 0);
});


t.test('any chunking reads back identically through any sequence of take/skip/copyInto', async (t) => {
  const data = fc.uint8Array({ minLength: 0, maxLength: 200 });
  const cuts = fc.array(fc.nat({ max: 200 }), { maxLength: 20 });
  const ops = fc.array(
    fc.oneof(
      fc.record({ kind: fc.constant('take' as const), n: fc.nat({ max: 60 }) }),
      fc.record({ kind: fc.constant('skip' as const), n: fc.nat({ max: 60 }) }),
      fc.record({ kind: fc.constant('copy' as const), n: fc.nat({ max: 60 }), at: fc.nat({ max: 5 }) }),
    ),
    { maxLength: 30 },
  );
  let runs = 0;
  fc.assert(
    fc.property(data, cuts, ops, fc.nat({ max: 200 }), (bytes, rawCuts, sequence, pushesBefore) => {
      const src = Buffer.from(bytes);
      const points = [...new Set(rawCuts.map((c) => c % (src.length + 1)))].sort((a, b) => a - b);
      const pieces: Buffer[] = [];
      let prev = 0;
      for (const p of [...points, src.length]) {
        const piece = Buffer.alloc(p - prev);
        src.copy(piece, 0, prev, p);
        pieces.push(piece);
        prev = p;
      }
      // Some pieces arrive before the reads start, the rest interleaved with them.
      const q = new ByteQueue();
      const early = Math.min(pieces.length, pushesBefore % (pieces.length + 1));
      pieces.slice(0, early).forEach((p) => q.push(p));
      const late = pieces.slice(early);
      let pushed = pieces.slice(0, early).reduce((n, p) => n + p.length, 0);
      let pos = 0;
      for (const op of sequence) {
        if (q.length !== pushed - pos) return false;
        const available = pushed - pos;
        if (op.kind === 'take') {
          const got = q.take(op.n);
          if (op.n > available) {
            if (got !== null || q.length !== available) return false;
          } else {
            if (got === null || got.length !== op.n || !got.equals(src.subarray(pos, pos + op.n))) return false;
            pos += op.n;
          }
        } else if (op.kind === 'skip') {
          const n = q.skip(op.n);
          if (n !== Math.min(op.n, available)) return false;
          pos += n;
        } else {
          const target = Buffer.alloc(op.at + op.n, 0xee);
          const n = q.copyInto(target, op.at, op.n);
          if (n !== Math.min(op.n, available)) return false;
          if (!target.subarray(op.at, op.at + n).equals(src.subarray(pos, pos + n))) return false;
          if (target.subarray(0, op.at).some((b) => b !== 0xee) || target.subarray(op.at + n).some((b) => b !== 0xee)) return false;
          pos += n;
        }
        const next = late.shift();
        if (next) {
          q.push(next);
          pushed += next.length;
        }
      }
      late.forEach((p) => {
        q.push(p);
        pushed += p.length;
      });
      // Whatever is left reads back as the rest of the string.
      const rest = q.take(q.length);
      runs++;
      return rest !== null && rest.equals(src.subarray(pos)) && q.length === 0;
    }),
    { seed: 42, numRuns: 300 },
  );
  t.equal(runs, 300, 'every run reached the end');
});
