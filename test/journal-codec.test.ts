// The journal's on-disk format (device/journal/codec.ts) and its crash
// states (device/journal/crash-states.ts): any run of entries reads back
// as written; a journal cut at any byte reads back as the entries whose
// frames are whole; a flipped byte stops the reader at that frame and
// never throws past the header; the crash states of a journal are exactly
// the certain entries plus every subset of the possible ones at each
// cut, and sampling with a seed is repeatable.

import fc from 'fast-check';
import t from 'tap';
import { decodeJournal, encodeFrame, JOURNAL_FORMAT, JOURNAL_VERSION, type HeaderEntry, type JournalEntry } from '../src/device/journal/codec.js';
import { crashStates, cutsOf } from '../src/device/journal/crash-states.js';

const header: HeaderEntry = { type: 'header', format: JOURNAL_FORMAT, version: JOURNAL_VERSION, size: 1 << 30, created: 1_700_000_000_000 };

const body = fc.oneof(
  fc.record({ type: fc.constant('write' as const), offset: fc.nat(), data: fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)), fua: fc.boolean() }),
  fc.record({ type: fc.constantFrom('trim' as const, 'zero' as const), offset: fc.nat(), length: fc.nat(), fua: fc.boolean(), noHole: fc.boolean() }),
  fc.record({ type: fc.constant('flush' as const), covers: fc.nat() }),
  fc.record({ type: fc.constant('mark' as const), name: fc.string() }),
);
const journal = fc.array(body, { maxLength: 20 }).map((bodies) => bodies.map((b, i) => ({ ...b, seq: i + 1 }) as JournalEntry));

const frames = (entries: JournalEntry[]): Buffer[] => [encodeFrame(header), ...entries.map(encodeFrame)];

t.test('entries read back as written', async (t) => {
  fc.assert(
    fc.property(journal, (entries) => {
      const j = decodeJournal(Buffer.concat(frames(entries)));
      t.same(j.header, header);
      t.same(j.entries, entries);
      t.equal(j.stopped, null);
    }),
  );
});

t.test('a journal torn at any byte reads back as its whole frames', async (t) => {
  fc.assert(
    fc.property(journal, fc.nat(), (entries, at) => {
      const f = frames(entries);
      const all = Buffer.concat(f);
      const cut = f[0].length + (at % (all.length - f[0].length + 1));
      const j = decodeJournal(all.subarray(0, cut));
      let whole = 0;
      for (let pos = f[0].length, i = 1; i < f.length && pos + f[i].length <= cut; pos += f[i++].length) whole++;
      t.same(j.entries, entries.slice(0, whole));
      t.equal(j.stopped === null, cut === all.length || j.end === cut);
      if (j.stopped) t.match(j.stopped, /torn/);
    }),
    { numRuns: 300 },
  );
});

t.test('a garbled byte stops the reader at its frame', async (t) => {
  fc.assert(
    fc.property(journal.filter((e) => e.length > 0), fc.nat(), fc.integer({ min: 1, max: 255 }), (entries, at, xor) => {
      const f = frames(entries);
      const all = Buffer.concat(f);
      const pos = f[0].length + (at % (all.length - f[0].length));
      all[pos] ^= xor;
      const j = decodeJournal(all);
      let before = 0;
      for (let p = f[0].length, i = 1; p + f[i].length <= pos; p += f[i++].length) before++;
      t.same(j.entries.slice(0, before), entries.slice(0, before), 'the frames before it are intact');
      t.ok(j.entries.length === before, 'nothing from the garbled frame on');
      t.not(j.stopped, null);
    }),
    { numRuns: 300 },
  );
});

t.test('what is not a journal is an error, not a crash', async (t) => {
  t.throws(() => decodeJournal(Buffer.alloc(0)), /not a vblk journal: it is empty/);
  t.throws(() => decodeJournal(Buffer.from('hello, this is a text file\n')), /not a vblk journal/);
  t.throws(() => decodeJournal(encodeFrame({ type: 'mark', seq: 1, name: 'x' })), /does not begin with a header/);
  t.throws(() => decodeJournal(encodeFrame({ ...header, version: 99 })), /version 99/);
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 200 }), (junk) => {
      try {
        decodeJournal(Buffer.concat([encodeFrame(header), Buffer.from(junk)]));
      } catch {
        t.fail('garbage after a header must not throw');
      }
    }),
  );
  const dup = decodeJournal(Buffer.concat([encodeFrame(header), encodeFrame({ type: 'flush', seq: 2, covers: 0 }), encodeFrame({ type: 'flush', seq: 2, covers: 0 })]));
  t.equal(dup.entries.length, 1);
  t.match(dup.stopped, /seq 2 after 2/, 'seq must grow');
});

const w = (seq: number, fua = false): JournalEntry => ({ type: 'write', seq, offset: seq * 512, data: Buffer.alloc(512, seq), fua });
const seqs = (es: { seq: number }[]): number[] => es.map((e) => e.seq);

t.test('cuts: certain = covered by a completed flush or FUA; possible = the rest logged', async (t) => {
  // 1 write, 2 write in flight when the flush began (covers 1), 3 the flush, 4 FUA write, 5 mark, 6 write
  const entries: JournalEntry[] = [w(1), w(2), { type: 'flush', seq: 3, covers: 1 }, w(4, true), { type: 'mark', seq: 5, name: 'm' }, w(6)];
  const cuts = cutsOf(entries);
  t.same(
    cuts.map((c) => [c.label, seqs(c.certain), seqs(c.possible)]),
    [
      ['before flush seq 3 completed', [], [1, 2]],
      ['at the end', [1, 4], [2, 6]],
    ],
  );
  const states = crashStates(cuts, 100, 0);
  t.same(
    states.map((s) => seqs(s.entries)),
    [[], [1], [2], [1, 2], [1, 4], [1, 2, 4], [1, 4, 6], [1, 2, 4, 6]],
    'every subset of each cut, entries in seq order',
  );
});

t.test('sampling: --max states, each certain ⊆ state ⊆ certain ∪ possible, repeatable by seed', async (t) => {
  const entries: JournalEntry[] = [];
  for (let i = 1; i <= 40; i++) entries.push(i % 10 === 0 ? { type: 'flush', seq: i, covers: i - 3 } : w(i));
  const cuts = cutsOf(entries);
  const a = crashStates(cuts, 25, 7);
  t.equal(a.length, 25);
  for (const s of a) {
    const have = new Set(seqs(s.entries));
    t.ok(s.cut.certain.every((e) => have.has(e.seq)) && s.entries.every((e) => s.cut.certain.includes(e) || s.cut.possible.includes(e)));
  }
  t.same(crashStates(cuts, 25, 7).map((s) => seqs(s.entries)), a.map((s) => seqs(s.entries)), 'same seed, same states');
  t.notSame(crashStates(cuts, 25, 8).map((s) => seqs(s.entries)), a.map((s) => seqs(s.entries)), 'another seed, other states');
});
