// Every message of the handshake phase goes through its encoder and comes
// back unchanged through its decoder; decoders of fixed frames answer
// null until all bytes are there, and payload decoders refuse malformed
// payloads with { malformed } instead of throwing or reading past the end.

import fc from 'fast-check';
import t from 'tap';
import {
  EXPORT_NAME_PADDING,
  EXPORT_NAME_REPLY_SIZE,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  GREETING_SIZE,
  IHAVEOPT,
  INFO,
  MAX_STRING,
  NBDMAGIC,
  OPT,
  OPTION_HEADER_SIZE,
  OPTION_REPLY_HEADER_SIZE,
  OPTION_REPLY_MAGIC,
  REP,
} from '../src/protocol/nbd/constants.js';
import {
  decodeClientFlags,
  decodeExportNameReply,
  decodeGreeting,
  decodeInfoReply,
  decodeInfoRequest,
  decodeMetaContextReply,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeOptionReplyHeader,
  decodeServerReply,
  encodeClientFlags,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoReply,
  encodeInfoRequest,
  encodeMetaContextReply,
  encodeMetaContextRequest,
  encodeOption,
  encodeOptionReply,
  encodeServerReply,
  isMalformed,
  type InfoReply,
  type Malformed,
} from '../src/protocol/nbd/handshake-codec.js';

const RUNS = { seed: 42, numRuns: 200 };

const u16 = fc.integer({ min: 0, max: 0xffff });
const u32 = fc.integer({ min: 0, max: 0xffffffff });
/** Sizes a JavaScript number holds exactly. */
const safeU64 = fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER });
/** Any Unicode text without lone surrogates (which UTF-8 cannot carry). */
const text = (maxLength = 64): fc.Arbitrary<string> =>
  fc
    .array(fc.integer({ min: 0, max: 0x10ffff }).filter((c) => c < 0xd800 || c > 0xdfff), { maxLength })
    .map((cps) => String.fromCodePoint(...cps));
const bytes = (maxLength = 64): fc.Arbitrary<Buffer> =>
  fc.uint8Array({ maxLength }).map((a) => Buffer.from(a));

/** ASCII text: any byte string of it decodes back to the same bytes. */
const ascii = (maxLength = 12): fc.Arbitrary<string> => fc.string({ unit: 'grapheme-ascii', maxLength });

/** A valid payload with one byte overwritten (by an ASCII value), cut short, or extended. */
function mutated(valid: fc.Arbitrary<Buffer>): fc.Arbitrary<Buffer> {
  return fc
    .tuple(valid, fc.nat(), fc.integer({ min: 0, max: 0x7f }), fc.constantFrom('poke', 'cut', 'extend'))
    .map(([buf, at, value, how]) => {
      const out = Buffer.from(buf);
      if (how === 'poke' && out.length > 0) out[at % out.length] = value;
      if (how === 'cut') return out.subarray(0, at % (out.length + 1));
      if (how === 'extend') return Buffer.concat([out, Buffer.alloc((at % 7) + 1, value)]);
      return out;
    });
}

/** The payload as a fresh buffer surrounded by junk, so decoders must respect offsets and lengths. */
function embedded(frame: Buffer, before = 3): { buf: Buffer; off: number } {
  const buf = Buffer.alloc(before + frame.length + 5, 0xee);
  frame.copy(buf, before);
  return { buf, off: before };
}

function malformed<T extends object>(v: T | Malformed): string | undefined {
  return isMalformed(v) ? v.malformed : undefined;
}

function ok<T extends object>(v: T | Malformed): T {
  if (isMalformed(v)) throw new Error(`unexpectedly malformed: ${v.malformed}`);
  return v;
}

// --- greeting, client flags -------------------------------------------------

t.test('greeting round-trips', async (t) => {
  const g = encodeGreeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
  t.equal(g.length, GREETING_SIZE, '18 bytes');
  t.same(decodeGreeting(g), { magic: NBDMAGIC, optMagic: IHAVEOPT, handshakeFlags: 3 });
  t.equal(g.toString('latin1', 0, 16), 'NBDMAGICIHAVEOPT', 'the magics spell NBDMAGIC and IHAVEOPT');
  fc.assert(
    fc.property(u16, (flags) => {
      const { buf, off } = embedded(encodeGreeting(flags));
      const d = decodeGreeting(buf, off);
      return d !== null && d.magic === NBDMAGIC && d.optMagic === IHAVEOPT && d.handshakeFlags === flags;
    }),
    RUNS,
  );
});

t.test('greeting decoder wants all 18 bytes', async (t) => {
  const g = encodeGreeting(3);
  for (let n = 0; n < GREETING_SIZE; n++) t.equal(decodeGreeting(g.subarray(0, n)), null, `${n} bytes`);
  t.equal(decodeGreeting(g, 1), null, '17 bytes after the offset');
  t.not(decodeGreeting(g), null);
});

t.test('client flags round-trip as 32 bits', async (t) => {
  t.same(encodeClientFlags(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES), Buffer.from([0, 0, 0, 3]));
  t.equal(decodeClientFlags(encodeClientFlags(0x80000000)), 0x80000000, 'top bit stays unsigned');
  for (let n = 0; n < 4; n++) t.equal(decodeClientFlags(Buffer.alloc(n)), null, `${n} bytes are too few`);
  t.equal(decodeClientFlags(Buffer.alloc(5), 2), null, 'offset counts');
  fc.assert(
    fc.property(u32, (flags) => {
      const { buf, off } = embedded(encodeClientFlags(flags));
      return decodeClientFlags(buf, off) === flags;
    }),
    RUNS,
  );
});

// --- option header ----------------------------------------------------------

t.test('option header round-trips and the payload follows it', async (t) => {
  const frame = encodeOption(OPT.GO, Buffer.from('abc'));
  t.equal(frame.length, OPTION_HEADER_SIZE + 3);
  t.same(decodeOptionHeader(frame), { magic: IHAVEOPT, option: OPT.GO, length: 3 });
  t.equal(frame.toString('latin1', OPTION_HEADER_SIZE), 'abc');
  t.same(decodeOptionHeader(encodeOption(OPT.ABORT)), { magic: IHAVEOPT, option: OPT.ABORT, length: 0 }, 'no payload');
  fc.assert(
    fc.property(u32, bytes(), (option, payload) => {
      const { buf, off } = embedded(encodeOption(option, payload));
      const h = decodeOptionHeader(buf, off);
      return (
        h !== null &&
        h.magic === IHAVEOPT &&
        h.option === option &&
        h.length === payload.length &&
        buf.subarray(off + OPTION_HEADER_SIZE, off + OPTION_HEADER_SIZE + h.length).equals(payload)
      );
    }),
    RUNS,
  );
  for (let n = 0; n < OPTION_HEADER_SIZE; n++) t.equal(decodeOptionHeader(frame.subarray(0, n)), null, `${n} bytes`);
});

// --- INFO / GO request ------------------------------------------------------

t.test('INFO/GO request round-trips', async (t) => {
  const req = { name: 'disk', requests: [INFO.NAME, INFO.BLOCK_SIZE] };
  const payload = encodeInfoRequest(req);
  t.same(payload, Buffer.from([0, 0, 0, 4, 0x64, 0x69, 0x73, 0x6b, 0, 2, 0, 1, 0, 3]), 'wire layout');
  t.same(ok(decodeInfoRequest(payload)), req);
  t.same(ok(decodeInfoRequest(encodeInfoRequest({ name: '', requests: [] }))), { name: '', requests: [] }, 'empty');
  fc.assert(
    fc.property(text(), fc.array(u16, { maxLength: 20 }), (name, requests) => {
      const d = decodeInfoRequest(encodeInfoRequest({ name, requests }));
      return !isMalformed(d) && d.name === name && d.requests.length === requests.length && d.requests.every((r, i) => r === requests[i]);
    }),
    RUNS,
  );
});

t.test('INFO/GO request: a name of exactly 4096 bytes is fine, 4097 is not', async (t) => {
  const max = 'é'.repeat(MAX_STRING / 2); // 2 bytes each in UTF-8
  t.equal(ok(decodeInfoRequest(encodeInfoRequest({ name: max, requests: [] }))).name, max);
  const over = encodeInfoRequest({ name: 'x'.repeat(MAX_STRING + 1), requests: [] });
  t.match(malformed(decodeInfoRequest(over)), /4096/);
});

t.test('INFO/GO request: malformed payloads', async (t) => {
  for (let n = 0; n < 6; n++) t.ok(malformed(decodeInfoRequest(Buffer.alloc(n))), `${n} bytes are too short`);

  const good = encodeInfoRequest({ name: 'abc', requests: [INFO.NAME] });
  const pastEnd = Buffer.from(good);
  pastEnd.writeUInt32BE(100, 0);
  t.match(malformed(decodeInfoRequest(pastEnd)), /name length/, 'name length past the payload');
  const justPast = Buffer.from(good);
  justPast.writeUInt32BE(good.length - 6 + 1, 0); // leaves fewer than 2 bytes for the count
  t.ok(malformed(decodeInfoRequest(justPast)), 'name length that leaves no room for the count');
  const huge = Buffer.from(good);
  huge.writeUInt32BE(0xffffffff, 0);
  t.ok(malformed(decodeInfoRequest(huge)), 'name length 2^32-1');

  const more = Buffer.from(good);
  more.writeUInt16BE(2, 4 + 3);
  t.ok(malformed(decodeInfoRequest(more)), 'count larger than the requests present');
  const fewer = Buffer.from(good);
  fewer.writeUInt16BE(0, 4 + 3);
  t.ok(malformed(decodeInfoRequest(fewer)), 'count smaller than the requests present');
  t.ok(malformed(decodeInfoRequest(Buffer.concat([good, Buffer.from([0])]))), 'one stray byte');
  t.ok(malformed(decodeInfoRequest(Buffer.concat([good, Buffer.from([0, 1])]))), 'a stray request beyond the count');
  t.ok(malformed(decodeInfoRequest(good.subarray(0, good.length - 1))), 'truncated last request');

  fc.assert(
    fc.property(mutated(fc.record({ name: ascii(), requests: fc.array(u16, { maxLength: 6 }) }).map(encodeInfoRequest)), (payload) => {
      // A damaged payload is refused or decodes to something that encodes back to exactly it.
      const d = decodeInfoRequest(payload);
      return isMalformed(d) || encodeInfoRequest(d).equals(payload);
    }),
    RUNS,
  );
});

// --- meta-context request ---------------------------------------------------

t.test('meta-context request round-trips', async (t) => {
  const req = { name: 'e', queries: ['base:allocation', 'qemu:'] };
  const payload = encodeMetaContextRequest(req);
  t.equal(payload.length, 4 + 1 + 4 + (4 + 15) + (4 + 5));
  t.same(ok(decodeMetaContextRequest(payload)), req);
  t.same(ok(decodeMetaContextRequest(encodeMetaContextRequest({ name: '', queries: [] }))), { name: '', queries: [] });
  t.same(ok(decodeMetaContextRequest(encodeMetaContextRequest({ name: 'x', queries: [''] }))), { name: 'x', queries: [''] }, 'an empty query');
  fc.assert(
    fc.property(text(), fc.array(text(40), { maxLength: 8 }), (name, queries) => {
      const d = decodeMetaContextRequest(encodeMetaContextRequest({ name, queries }));
      return !isMalformed(d) && d.name === name && d.queries.length === queries.length && d.queries.every((q, i) => q === queries[i]);
    }),
    RUNS,
  );
});

t.test('meta-context request: malformed payloads', async (t) => {
  for (let n = 0; n < 8; n++) t.ok(malformed(decodeMetaContextRequest(Buffer.alloc(n))), `${n} bytes are too short`);
  const good = encodeMetaContextRequest({ name: 'ab', queries: ['base:allocation'] });
  const countAt = 4 + 2;

  const pastEnd = Buffer.from(good);
  pastEnd.writeUInt32BE(good.length, 0);
  t.match(malformed(decodeMetaContextRequest(pastEnd)), /name length/, 'name length past the payload');
  const noCount = Buffer.from(good);
  noCount.writeUInt32BE(good.length - 8 + 1, 0);
  t.ok(malformed(decodeMetaContextRequest(noCount)), 'name length that leaves no room for the count');

  const lying = Buffer.from(good);
  lying.writeUInt32BE(1_000_000, countAt);
  t.match(malformed(decodeMetaContextRequest(lying)), /cannot fit/, 'a query count that cannot fit');
  const maxCount = Buffer.from(good);
  maxCount.writeUInt32BE(0xffffffff, countAt);
  t.match(malformed(decodeMetaContextRequest(maxCount)), /cannot fit/, 'query count 2^32-1');
  // 19 bytes of queries hold at most 4 length fields, so 4 passes the fit test and then runs out.
  const truncated = Buffer.from(good);
  truncated.writeUInt32BE(2, countAt);
  t.ok(malformed(decodeMetaContextRequest(truncated)), 'count of 2 with one query present');

  const qLen = Buffer.from(good);
  qLen.writeUInt32BE(16, countAt + 4);
  t.match(malformed(decodeMetaContextRequest(qLen)), /length exceeds/, 'query length past the payload');
  t.match(malformed(decodeMetaContextRequest(Buffer.concat([good, Buffer.from([1, 2, 3])]))), /stray/, 'stray bytes');
  const zeroCount = encodeMetaContextRequest({ name: 'ab', queries: [] });
  t.match(malformed(decodeMetaContextRequest(Buffer.concat([zeroCount, Buffer.from([0])]))), /stray/, 'stray byte after zero queries');

  const bigName = encodeMetaContextRequest({ name: 'n'.repeat(MAX_STRING + 1), queries: [] });
  t.match(malformed(decodeMetaContextRequest(bigName)), /4096/, 'name over 4096 bytes');
  const bigQuery = encodeMetaContextRequest({ name: '', queries: ['base:' + 'q'.repeat(MAX_STRING)] });
  t.match(malformed(decodeMetaContextRequest(bigQuery)), /4096/, 'query over 4096 bytes');
  const maxQuery = 'base:' + 'q'.repeat(MAX_STRING - 5);
  t.same(ok(decodeMetaContextRequest(encodeMetaContextRequest({ name: '', queries: [maxQuery] }))).queries, [maxQuery], 'query of exactly 4096 bytes');

  fc.assert(
    fc.property(
      mutated(fc.record({ name: ascii(), queries: fc.array(ascii(), { maxLength: 4 }) }).map(encodeMetaContextRequest)),
      (payload) => {
        const d = decodeMetaContextRequest(payload);
        return isMalformed(d) || encodeMetaContextRequest(d).equals(payload);
      },
    ),
    RUNS,
  );
});

// --- option replies ---------------------------------------------------------

t.test('option reply header round-trips', async (t) => {
  const frame = encodeOptionReply(OPT.LIST, REP.ERR_UNSUP, Buffer.from('no'));
  t.equal(frame.length, OPTION_REPLY_HEADER_SIZE + 2);
  t.same(decodeOptionReplyHeader(frame), { magic: OPTION_REPLY_MAGIC, option: OPT.LIST, type: REP.ERR_UNSUP, length: 2 });
  t.same(decodeOptionReplyHeader(encodeOptionReply(OPT.ABORT, REP.ACK)), { magic: OPTION_REPLY_MAGIC, option: OPT.ABORT, type: REP.ACK, length: 0 });
  for (let n = 0; n < OPTION_REPLY_HEADER_SIZE; n++) t.equal(decodeOptionReplyHeader(frame.subarray(0, n)), null, `${n} bytes`);
  fc.assert(
    fc.property(u32, u32, bytes(), (option, type, payload) => {
      const { buf, off } = embedded(encodeOptionReply(option, type, payload));
      const h = decodeOptionReplyHeader(buf, off);
      return (
        h !== null &&
        h.magic === OPTION_REPLY_MAGIC &&
        h.option === option &&
        h.type === type &&
        h.length === payload.length &&
        buf.subarray(off + OPTION_REPLY_HEADER_SIZE, off + OPTION_REPLY_HEADER_SIZE + h.length).equals(payload)
      );
    }),
    RUNS,
  );
});

t.test('NBD_REP_SERVER round-trips', async (t) => {
  t.same(encodeServerReply({ name: 'ab', details: 'c' }), Buffer.from([0, 0, 0, 2, 0x61, 0x62, 0x63]));
  t.same(ok(decodeServerReply(encodeServerReply({ name: '', details: '' }))), { name: '', details: '' });
  fc.assert(
    fc.property(text(), text(), (name, details) => {
      const d = decodeServerReply(encodeServerReply({ name, details }));
      return !isMalformed(d) && d.name === name && d.details === details;
    }),
    RUNS,
  );
  for (let n = 0; n < 4; n++) t.ok(malformed(decodeServerReply(Buffer.alloc(n))), `${n} bytes are too short`);
  const past = encodeServerReply({ name: 'ab', details: '' });
  past.writeUInt32BE(3, 0);
  t.match(malformed(decodeServerReply(past)), /name length/, 'name length past the reply');
});

t.test('every NBD_REP_INFO type round-trips', async (t) => {
  const cases: [string, InfoReply, number][] = [
    ['EXPORT', { type: INFO.EXPORT, size: 1 << 30, flags: 0x1234 }, 12],
    ['EXPORT of 2^53-1 bytes', { type: INFO.EXPORT, size: Number.MAX_SAFE_INTEGER, flags: 0xffff }, 12],
    ['NAME', { type: INFO.NAME, name: 'disk ü' }, 2 + 7],
    ['empty NAME', { type: INFO.NAME, name: '' }, 2],
    ['DESCRIPTION', { type: INFO.DESCRIPTION, description: 'raw image /x' }, 2 + 12],
    ['BLOCK_SIZE', { type: INFO.BLOCK_SIZE, minimum: 1, preferred: 4096, maximum: 32 << 20 }, 14],
    ['unknown type', { type: 0x7777, unknown: Buffer.from([9, 8, 7]) }, 5],
    ['unknown type, no body', { type: 4, unknown: Buffer.alloc(0) }, 2],
  ];
  for (const [what, info, length] of cases) {
    const payload = encodeInfoReply(info);
    t.equal(payload.length, length, `${what}: ${length} bytes`);
    t.equal(payload.readUInt16BE(0), info.type, `${what}: type first`);
    t.same(ok(decodeInfoReply(payload)), info, `${what}: round-trips`);
  }
  fc.assert(
    fc.property(
      fc.oneof(
        fc.record({ type: fc.constant(INFO.EXPORT), size: safeU64, flags: u16 }),
        fc.record({ type: fc.constant(INFO.NAME), name: text() }),
        fc.record({ type: fc.constant(INFO.DESCRIPTION), description: text() }),
        fc.record({ type: fc.constant(INFO.BLOCK_SIZE), minimum: u32, preferred: u32, maximum: u32 }),
        fc.record({ type: fc.integer({ min: 4, max: 0xffff }), unknown: bytes() }),
      ),
      (info) => {
        const d = decodeInfoReply(encodeInfoReply(info as InfoReply));
        return !isMalformed(d) && JSON.stringify(d) === JSON.stringify(info);
      },
    ),
    RUNS,
  );
});

t.test('NBD_REP_INFO length checks', async (t) => {
  t.ok(malformed(decodeInfoReply(Buffer.alloc(0))), 'empty');
  t.ok(malformed(decodeInfoReply(Buffer.alloc(1))), 'one byte');
  const exp = encodeInfoReply({ type: INFO.EXPORT, size: 5, flags: 1 });
  t.ok(malformed(decodeInfoReply(exp.subarray(0, 11))), 'EXPORT of 11 bytes');
  t.ok(malformed(decodeInfoReply(Buffer.concat([exp, Buffer.alloc(1)]))), 'EXPORT of 13 bytes');
  const bs = encodeInfoReply({ type: INFO.BLOCK_SIZE, minimum: 1, preferred: 2, maximum: 3 });
  t.ok(malformed(decodeInfoReply(bs.subarray(0, 13))), 'BLOCK_SIZE of 13 bytes');
  t.ok(malformed(decodeInfoReply(Buffer.concat([bs, Buffer.alloc(1)]))), 'BLOCK_SIZE of 15 bytes');
});

t.test('NBD_REP_META_CONTEXT round-trips', async (t) => {
  t.same(encodeMetaContextReply({ id: 1, name: 'a:b' }), Buffer.from([0, 0, 0, 1, 0x61, 0x3a, 0x62]));
  fc.assert(
    fc.property(u32, text(), (id, name) => {
      const d = decodeMetaContextReply(encodeMetaContextReply({ id, name }));
      return !isMalformed(d) && d.id === id && d.name === name;
    }),
    RUNS,
  );
  for (let n = 0; n < 4; n++) t.ok(malformed(decodeMetaContextReply(Buffer.alloc(n))), `${n} bytes are too short`);
});

// --- export-name reply ------------------------------------------------------

t.test('export-name reply with and without the 124 zero bytes', async (t) => {
  const reply = { size: 16 << 20, flags: 0x1ff };
  const padded = encodeExportNameReply(reply, false);
  t.equal(padded.length, EXPORT_NAME_REPLY_SIZE + EXPORT_NAME_PADDING, '134 bytes without NO_ZEROES');
  t.ok(padded.subarray(EXPORT_NAME_REPLY_SIZE).every((b) => b === 0), 'the padding is zeroes');
  t.same(decodeExportNameReply(padded), reply);
  const bare = encodeExportNameReply(reply, true);
  t.equal(bare.length, EXPORT_NAME_REPLY_SIZE, '10 bytes with NO_ZEROES');
  t.same(decodeExportNameReply(bare), reply);
  t.same(bare, padded.subarray(0, EXPORT_NAME_REPLY_SIZE), 'same leading bytes');
  for (let n = 0; n < EXPORT_NAME_REPLY_SIZE; n++) t.equal(decodeExportNameReply(bare.subarray(0, n)), null, `${n} bytes`);
  fc.assert(
    fc.property(safeU64, u16, fc.boolean(), (size, flags, noZeroes) => {
      const frame = encodeExportNameReply({ size, flags }, noZeroes);
      const { buf, off } = embedded(frame);
      const d = decodeExportNameReply(buf, off);
      return (
        frame.length === (noZeroes ? 10 : 134) &&
        d !== null &&
        d.size === size &&
        d.flags === flags
      );
    }),
    RUNS,
  );
});
