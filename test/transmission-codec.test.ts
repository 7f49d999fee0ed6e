// Requests, simple replies, chunk headers and every chunk payload of the
// transmission phase go through their encoders and decoders unchanged;
// decoders answer null until a frame is complete and refuse payloads
// whose length the protocol fixes otherwise.

import fc from 'fast-check';
import t from 'tap';
import {
  CHUNK,
  CHUNK_HEADER_SIZE,
  CMD,
  CMD_FLAG,
  EXTENDED_REPLY_MAGIC,
  EXTENDED_REPLY_SIZE,
  EXTENDED_REQUEST_MAGIC,
  EXTENDED_REQUEST_SIZE,
  REPLY_FLAG_DONE,
  REQUEST_MAGIC,
  REQUEST_SIZE,
  SIMPLE_REPLY_MAGIC,
  SIMPLE_REPLY_SIZE,
  STRUCTURED_REPLY_MAGIC,
} from '../src/protocol/nbd/constants.js';
import { isMalformed, type Malformed } from '../src/protocol/nbd/handshake-codec.js';
import {
  blockStatusExtSize,
  blockStatusPayloadSize,
  blockStatusSize,
  decodeBlockStatusPayload,
  decodeChunkPayload,
  decodeExtendedRequest,
  decodeReplyHeader,
  decodeRequest,
  encodeBlockStatus,
  encodeBlockStatusExt,
  encodeBlockStatusPayload,
  encodeChunkHeader,
  encodeErrorPayload,
  encodeExtendedReplyHeader,
  encodeExtendedRequest,
  encodeOffsetDataPrefix,
  encodeOffsetHole,
  encodeRequest,
  encodeSimpleReply,
  errorPayloadSize,
  OFFSET_DATA_PREFIX,
  OFFSET_HOLE_SIZE,
  type ChunkPayload,
} from '../src/protocol/nbd/transmission-codec.js';
import { readU64, writeU64 } from '../src/protocol/nbd/u64.js';

const RUNS = { seed: 42, numRuns: 200 };
const u16 = fc.integer({ min: 0, max: 0xffff });
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const u64 = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n });
const safe = fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER });
/** Any Unicode text without lone surrogates (UTF-8 cannot carry those). */
const unicode = fc
  .array(fc.integer({ min: 0, max: 0x10ffff }).filter((c) => c < 0xd800 || c > 0xdfff), { maxLength: 40 })
  .map((cps) => String.fromCodePoint(...cps));

/** Encoders return the offset just past what they wrote. */
function expectEnd(got: number, want: number): void {
  if (got !== want) throw new Error(`encoder returned end offset ${got}, expected ${want}`);
}

function request(fields: Parameters<typeof encodeRequest>[2]): Buffer {
  const buf = Buffer.alloc(REQUEST_SIZE);
  expectEnd(encodeRequest(buf, 0, fields), REQUEST_SIZE);
  return buf;
}

function ok<T extends object>(v: T | Malformed): T {
  if (isMalformed(v)) throw new Error(`unexpectedly malformed: ${v.malformed}`);
  return v;
}

// --- u64 --------------------------------------------------------------------

t.test('u64: exact below 2^53, correctly rounded above, never below 2^53 when the value is not', async (t) => {
  const buf = Buffer.alloc(8);
  const cases: [bigint, number][] = [
    [0n, 0],
    [1n, 1],
    [0xffffffffn, 0xffffffff],
    [0x100000000n, 2 ** 32],
    [2n ** 53n - 1n, Number.MAX_SAFE_INTEGER],
    [2n ** 53n, 2 ** 53],
    [2n ** 53n + 1n, 2 ** 53], // rounds (to even) down to 2^53, still past every export
    [2n ** 63n, 2 ** 63],
    [2n ** 64n - 1n, 2 ** 64],
  ];
  for (const [exact, decoded] of cases) {
    buf.writeBigUInt64BE(exact);
    t.equal(readU64(buf, 0), decoded, `${exact} decodes to ${decoded}`);
  }
  fc.assert(
    fc.property(u64, (v) => {
      buf.writeBigUInt64BE(v);
      const n = readU64(buf, 0);
      if (v <= BigInt(Number.MAX_SAFE_INTEGER)) return BigInt(n) === v;
      // The promise of u64.ts: a value no export can reach stays out of reach.
      return n === Number(v) && n > Number.MAX_SAFE_INTEGER;
    }),
    RUNS,
  );
});

t.test('u64: writeU64 of a number and of a bigint give the same bytes', async (t) => {
  const a = Buffer.alloc(8);
  const b = Buffer.alloc(8);
  fc.assert(
    fc.property(safe, (n) => {
      writeU64(a, 0, n);
      writeU64(b, 0, BigInt(n));
      return a.equals(b) && readU64(a, 0) === n;
    }),
    RUNS,
  );
  writeU64(a, 0, 2 ** 63);
  t.equal(a.readBigUInt64BE(), 2n ** 63n, '2^63 as a number is exact');
  writeU64(a, 0, 2n ** 64n - 1n);
  t.same(a, Buffer.alloc(8, 0xff), 'all ones from a bigint');
});

// --- requests ---------------------------------------------------------------

t.test('request wire layout', async (t) => {
  const buf = request({ flags: CMD_FLAG.FUA, type: CMD.WRITE, cookie: 0x0102030405060708n, offset: 0x1_0000_0200, length: 512 });
  t.same(
    buf,
    Buffer.from('25609513' + '0001' + '0001' + '0102030405060708' + '0000000100000200' + '00000200', 'hex'),
    'magic, flags, type, cookie, offset, length',
  );
  t.same(decodeRequest(buf), {
    magic: REQUEST_MAGIC,
    flags: CMD_FLAG.FUA,
    type: CMD.WRITE,
    cookie: 0x0102030405060708n,
    offset: 0x1_0000_0200,
    length: 512,
  });
});

t.test('requests round-trip', async (t) => {
  fc.assert(
    fc.property(u16, u16, u64, safe, u32, (flags, type, cookie, offset, length) => {
      const buf = Buffer.alloc(REQUEST_SIZE + 7, 0xaa);
      encodeRequest(buf, 7, { flags, type, cookie, offset, length });
      const d = decodeRequest(buf, 7);
      return (
        d !== null &&
        d.magic === REQUEST_MAGIC &&
        d.flags === flags &&
        d.type === type &&
        d.cookie === cookie &&
        d.offset === offset &&
        d.length === length
      );
    }),
    RUNS,
  );
  const other = decodeRequest(request({ magic: 0x21e41c71, flags: 0, type: 0, cookie: 0n, offset: 0, length: 0 }));
  t.equal(other?.magic, 0x21e41c71, 'the magic is not validated, only carried');
});

t.test('requests with 64-bit offsets given as bigint', async (t) => {
  const base = { flags: 0, type: CMD.READ, cookie: 2n ** 64n - 1n, length: 0xffffffff };
  const at63 = request({ ...base, offset: 2n ** 63n });
  t.equal(at63.readBigUInt64BE(16), 2n ** 63n, '2^63 on the wire exactly');
  const d63 = decodeRequest(at63)!;
  t.equal(d63.offset, 2 ** 63, '2^63 decodes exactly (a power of two)');
  t.equal(d63.cookie, 2n ** 64n - 1n, 'cookie keeps all 64 bits');
  t.equal(d63.length, 0xffffffff, 'length keeps all 32 bits');

  const top = request({ ...base, offset: 2n ** 64n - 1n });
  t.equal(top.readBigUInt64BE(16), 2n ** 64n - 1n, '2^64-1 on the wire exactly');
  const dTop = decodeRequest(top)!;
  t.equal(dTop.offset, 2 ** 64, '2^64-1 decodes rounded to 2^64, as u64.ts says');
  t.ok(dTop.offset > Number.MAX_SAFE_INTEGER, 'and stays beyond any export');

  const safeTop = request({ ...base, offset: 2n ** 53n - 1n });
  t.equal(decodeRequest(safeTop)!.offset, Number.MAX_SAFE_INTEGER, '2^53-1 is exact');

  fc.assert(
    fc.property(u64, (offset) => {
      const d = decodeRequest(request({ ...base, offset }))!;
      return d.offset === Number(offset);
    }),
    RUNS,
  );
});

t.test('request decoder wants all 28 bytes', async (t) => {
  const buf = request({ flags: 0, type: 0, cookie: 1n, offset: 0, length: 1 });
  for (let n = 0; n < REQUEST_SIZE; n++) t.equal(decodeRequest(buf.subarray(0, n)), null, `${n} bytes`);
  t.equal(decodeRequest(Buffer.concat([Buffer.alloc(1), buf.subarray(0, 27)]), 1), null, 'offset counts');
});

t.test('compact requests carry the low 32 bits of a bigint length', async (t) => {
  const buf = request({ flags: 0, type: CMD.TRIM, cookie: 1n, offset: 0, length: 0x1_0000_0200n });
  t.equal(buf.readUInt32BE(24), 0x200);
});

// --- extended requests ------------------------------------------------------

function extendedRequest(fields: Parameters<typeof encodeExtendedRequest>[2]): Buffer {
  const buf = Buffer.alloc(EXTENDED_REQUEST_SIZE);
  expectEnd(encodeExtendedRequest(buf, 0, fields), EXTENDED_REQUEST_SIZE);
  return buf;
}

t.test('extended request wire layout', async (t) => {
  const buf = extendedRequest({ flags: CMD_FLAG.PAYLOAD_LEN, type: CMD.WRITE, cookie: 0x0102030405060708n, offset: 0x1_0000_0200, length: 512 });
  t.same(
    buf,
    Buffer.from('21e41c71' + '0020' + '0001' + '0102030405060708' + '0000000100000200' + '0000000000000200', 'hex'),
    'magic, flags, type, cookie, offset, 64-bit length',
  );
  t.same(decodeExtendedRequest(buf), {
    magic: EXTENDED_REQUEST_MAGIC,
    flags: CMD_FLAG.PAYLOAD_LEN,
    type: CMD.WRITE,
    cookie: 0x0102030405060708n,
    offset: 0x1_0000_0200,
    length: 512,
  });
  const big = extendedRequest({ flags: 0, type: CMD.WRITE_ZEROES, cookie: 1n, offset: 0, length: 5 * 2 ** 30 });
  t.equal(big.readBigUInt64BE(24), 5n * 2n ** 30n, 'a 5 GiB effect length on the wire');
  t.equal(decodeExtendedRequest(big)!.length, 5 * 2 ** 30, 'and back');
  const top = decodeExtendedRequest(extendedRequest({ flags: 0, type: 0, cookie: 0n, offset: 0, length: 2n ** 64n - 1n }))!;
  t.equal(top.length, 2 ** 64, '2^64-1 decodes rounded, beyond any export');
  t.equal(top.exactOffset, undefined, 'an offset a number holds needs no exact copy');
  const far = decodeExtendedRequest(extendedRequest({ flags: 0, type: 0, cookie: 0n, offset: 2n ** 64n - 1n, length: 1 }))!;
  t.equal(far.offset, 2 ** 64, 'an offset past 2^53 decodes rounded');
  t.equal(far.exactOffset, 2n ** 64n - 1n, 'and exactly beside it, for the reply to echo');
  const echo = Buffer.alloc(EXTENDED_REPLY_SIZE);
  encodeExtendedReplyHeader(echo, 0, 0, CHUNK.NONE, 0n, far.exactOffset!, 0);
  t.equal(echo.readBigUInt64BE(16), 2n ** 64n - 1n, 'the reply header takes it as a bigint');
  t.equal(EXTENDED_REQUEST_MAGIC, 0x21e41c71);
});

t.test('extended requests round-trip', async (t) => {
  fc.assert(
    fc.property(u16, u16, u64, u64, u64, fc.nat({ max: 9 }), (flags, type, cookie, offset, length, at) => {
      const buf = Buffer.alloc(at + EXTENDED_REQUEST_SIZE, 0xaa);
      expectEnd(encodeExtendedRequest(buf, at, { flags, type, cookie, offset, length }), at + EXTENDED_REQUEST_SIZE);
      const d = decodeExtendedRequest(buf, at);
      return (
        d !== null &&
        d.magic === EXTENDED_REQUEST_MAGIC &&
        d.flags === flags &&
        d.type === type &&
        d.cookie === cookie &&
        d.offset === Number(offset) &&
        d.length === Number(length)
      );
    }),
    RUNS,
  );
  fc.assert(
    fc.property(safe, safe, (offset, length) => {
      const d = decodeExtendedRequest(extendedRequest({ flags: 0, type: 0, cookie: 0n, offset, length }))!;
      return d.offset === offset && d.length === length;
    }),
    RUNS,
  );
  const other = decodeExtendedRequest(extendedRequest({ magic: REQUEST_MAGIC, flags: 0, type: 0, cookie: 0n, offset: 0, length: 0 }));
  t.equal(other?.magic, REQUEST_MAGIC, 'the magic is not validated, only carried');
});

t.test('extended request decoder wants all 32 bytes', async (t) => {
  const buf = extendedRequest({ flags: 0, type: 0, cookie: 1n, offset: 0, length: 1 });
  for (let n = 0; n < EXTENDED_REQUEST_SIZE; n++) t.equal(decodeExtendedRequest(buf.subarray(0, n)), null, `${n} bytes`);
  t.equal(decodeExtendedRequest(Buffer.concat([Buffer.alloc(1), buf.subarray(0, 31)]), 1), null, 'offset counts');
});

// --- reply headers ----------------------------------------------------------

t.test('simple replies round-trip', async (t) => {
  const buf = Buffer.alloc(SIMPLE_REPLY_SIZE);
  t.equal(encodeSimpleReply(buf, 0, 22, 0xabcdn), SIMPLE_REPLY_SIZE);
  t.same(buf, Buffer.from('67446698' + '00000016' + '000000000000abcd', 'hex'));
  t.same(decodeReplyHeader(buf), { kind: 'simple', error: 22, cookie: 0xabcdn });
  fc.assert(
    fc.property(u32, u64, fc.nat({ max: 9 }), (error, cookie, at) => {
      const b = Buffer.alloc(at + SIMPLE_REPLY_SIZE);
      encodeSimpleReply(b, at, error, cookie);
      const d = decodeReplyHeader(b, at);
      return d !== null && d.kind === 'simple' && d.error === error && d.cookie === cookie;
    }),
    RUNS,
  );
});

t.test('chunk headers round-trip', async (t) => {
  const buf = Buffer.alloc(CHUNK_HEADER_SIZE);
  t.equal(encodeChunkHeader(buf, 0, REPLY_FLAG_DONE, CHUNK.OFFSET_DATA, 7n, 520), CHUNK_HEADER_SIZE);
  t.same(buf, Buffer.from('668e33ef' + '0001' + '0001' + '0000000000000007' + '00000208', 'hex'));
  t.same(decodeReplyHeader(buf), { kind: 'chunk', flags: 1, type: CHUNK.OFFSET_DATA, cookie: 7n, length: 520 });
  fc.assert(
    fc.property(u16, u16, u64, u32, fc.nat({ max: 9 }), (flags, type, cookie, length, at) => {
      const b = Buffer.alloc(at + CHUNK_HEADER_SIZE);
      encodeChunkHeader(b, at, flags, type, cookie, length);
      const d = decodeReplyHeader(b, at);
      return d !== null && d.kind === 'chunk' && d.flags === flags && d.type === type && d.cookie === cookie && d.length === length;
    }),
    RUNS,
  );
});

t.test('extended reply headers round-trip', async (t) => {
  const buf = Buffer.alloc(EXTENDED_REPLY_SIZE);
  t.equal(encodeExtendedReplyHeader(buf, 0, REPLY_FLAG_DONE, CHUNK.BLOCK_STATUS_EXT, 7n, 0x1_0000_0000, 24), EXTENDED_REPLY_SIZE);
  t.same(buf, Buffer.from('6e8a278c' + '0001' + '0006' + '0000000000000007' + '0000000100000000' + '0000000000000018', 'hex'));
  t.same(decodeReplyHeader(buf), {
    kind: 'extended',
    flags: 1,
    type: CHUNK.BLOCK_STATUS_EXT,
    cookie: 7n,
    offset: 0x1_0000_0000,
    length: 24,
  });
  fc.assert(
    fc.property(u16, u16, u64, safe, safe, fc.nat({ max: 9 }), (flags, type, cookie, offset, length, at) => {
      const b = Buffer.alloc(at + EXTENDED_REPLY_SIZE);
      expectEnd(encodeExtendedReplyHeader(b, at, flags, type, cookie, offset, length), at + EXTENDED_REPLY_SIZE);
      const d = decodeReplyHeader(b, at);
      return (
        d !== null &&
        d.kind === 'extended' &&
        d.flags === flags &&
        d.type === type &&
        d.cookie === cookie &&
        d.offset === offset &&
        d.length === length
      );
    }),
    RUNS,
  );
  for (let n = 4; n < EXTENDED_REPLY_SIZE; n++) {
    t.equal(decodeReplyHeader(buf.subarray(0, n)), null, `extended, ${n} bytes`);
  }
  t.equal(decodeReplyHeader(Buffer.concat([Buffer.alloc(3), buf.subarray(0, 31)]), 3), null, 'offset counts');
  t.same(Buffer.from([0x6e, 0x8a, 0x27, 0x8c]).readUInt32BE(), EXTENDED_REPLY_MAGIC);
});

t.test('decodeReplyHeader: unknown magic and short buffers', async (t) => {
  const unknown = Buffer.from('deadbeef', 'hex');
  t.same(decodeReplyHeader(unknown), { kind: 'unknown', magic: 0xdeadbeef }, 'four bytes are enough to judge the magic');
  t.same(decodeReplyHeader(Buffer.from('0025609513', 'hex'), 1), { kind: 'unknown', magic: REQUEST_MAGIC }, 'at an offset');
  for (let n = 0; n < 4; n++) t.equal(decodeReplyHeader(Buffer.alloc(n, 0x67)), null, `${n} bytes: null`);

  const simple = Buffer.alloc(SIMPLE_REPLY_SIZE);
  encodeSimpleReply(simple, 0, 0, 1n);
  for (let n = 4; n < SIMPLE_REPLY_SIZE; n++) t.equal(decodeReplyHeader(simple.subarray(0, n)), null, `simple, ${n} bytes`);

  const chunk = Buffer.alloc(CHUNK_HEADER_SIZE);
  encodeChunkHeader(chunk, 0, 0, CHUNK.NONE, 1n, 0);
  for (let n = 4; n < CHUNK_HEADER_SIZE; n++) {
    t.equal(decodeReplyHeader(chunk.subarray(0, n)), null, `chunk, ${n} bytes (${n >= 16 ? 'enough for a simple reply, not a chunk' : 'short'})`);
  }
  t.equal(decodeReplyHeader(Buffer.concat([Buffer.alloc(2), chunk.subarray(0, 19)]), 2), null, 'offset counts');
  t.same(Buffer.from([0x66, 0x8e, 0x33, 0xef]).readUInt32BE(), STRUCTURED_REPLY_MAGIC);
  t.same(Buffer.from([0x67, 0x44, 0x66, 0x98]).readUInt32BE(), SIMPLE_REPLY_MAGIC);
});

// --- chunk payloads ---------------------------------------------------------

function offsetData(offset: number, data: Buffer): Buffer {
  const buf = Buffer.alloc(OFFSET_DATA_PREFIX + data.length);
  expectEnd(encodeOffsetDataPrefix(buf, 0, offset), OFFSET_DATA_PREFIX);
  data.copy(buf, OFFSET_DATA_PREFIX);
  return buf;
}

function offsetHole(offset: number, size: number): Buffer {
  const buf = Buffer.alloc(OFFSET_HOLE_SIZE);
  expectEnd(encodeOffsetHole(buf, 0, offset, size), OFFSET_HOLE_SIZE);
  return buf;
}

function blockStatus(id: number, extents: { length: number; flags: number }[]): Buffer {
  const buf = Buffer.alloc(blockStatusSize(extents.length));
  expectEnd(encodeBlockStatus(buf, 0, id, extents), buf.length);
  return buf;
}

function errorPayload(error: number, message: string): Buffer {
  const msg = Buffer.from(message, 'utf8');
  const buf = Buffer.alloc(errorPayloadSize(msg.length));
  expectEnd(encodeErrorPayload(buf, 0, error, msg), buf.length);
  return buf;
}

/** There is no encoder for ERROR_OFFSET (the server never sends it): error, message, then the offset. */
function errorOffsetPayload(error: number, message: string, offset: number | bigint): Buffer {
  const where = Buffer.alloc(8);
  writeU64(where, 0, offset);
  return Buffer.concat([errorPayload(error, message), where]);
}

t.test('NONE', async (t) => {
  t.same(ok(decodeChunkPayload(CHUNK.NONE, Buffer.alloc(0))), { type: CHUNK.NONE });
  t.ok(isMalformed(decodeChunkPayload(CHUNK.NONE, Buffer.alloc(1))), 'NONE with a payload');
});

t.test('OFFSET_DATA', async (t) => {
  const p = offsetData(4096, Buffer.from('hello'));
  t.same(p, Buffer.from('0000000000001000' + Buffer.from('hello').toString('hex'), 'hex'));
  const d = ok(decodeChunkPayload(CHUNK.OFFSET_DATA, p)) as Extract<ChunkPayload, { data: Buffer }>;
  t.equal(d.offset, 4096);
  t.equal(d.data.toString(), 'hello');
  t.ok(isMalformed(decodeChunkPayload(CHUNK.OFFSET_DATA, Buffer.alloc(8))), 'an offset without data');
  t.ok(isMalformed(decodeChunkPayload(CHUNK.OFFSET_DATA, Buffer.alloc(3))), 'shorter than the offset');
  t.ok(!isMalformed(decodeChunkPayload(CHUNK.OFFSET_DATA, Buffer.alloc(9))), 'one byte of data is enough');
  fc.assert(
    fc.property(safe, fc.uint8Array({ minLength: 1, maxLength: 64 }), (offset, data) => {
      const r = decodeChunkPayload(CHUNK.OFFSET_DATA, offsetData(offset, Buffer.from(data)));
      return !isMalformed(r) && 'data' in r && r.offset === offset && r.data.equals(Buffer.from(data));
    }),
    RUNS,
  );
});

t.test('OFFSET_HOLE', async (t) => {
  t.same(offsetHole(512, 1024), Buffer.from('0000000000000200' + '00000400', 'hex'));
  t.same(ok(decodeChunkPayload(CHUNK.OFFSET_HOLE, offsetHole(512, 1024))), { type: CHUNK.OFFSET_HOLE, offset: 512, size: 1024 });
  t.ok(isMalformed(decodeChunkPayload(CHUNK.OFFSET_HOLE, Buffer.alloc(11))), '11 bytes');
  t.ok(isMalformed(decodeChunkPayload(CHUNK.OFFSET_HOLE, Buffer.alloc(13))), '13 bytes');
  fc.assert(
    fc.property(safe, u32, (offset, size) => {
      const r = decodeChunkPayload(CHUNK.OFFSET_HOLE, offsetHole(offset, size));
      return !isMalformed(r) && 'size' in r && r.offset === offset && r.size === size;
    }),
    RUNS,
  );
});

t.test('BLOCK_STATUS', async (t) => {
  const p = blockStatus(1, [{ length: 65536, flags: 3 }]);
  t.same(p, Buffer.from('00000001' + '00010000' + '00000003', 'hex'));
  t.same(ok(decodeChunkPayload(CHUNK.BLOCK_STATUS, p)), { type: CHUNK.BLOCK_STATUS, contextId: 1, extents: [{ length: 65536, flags: 3 }] });
  t.equal(blockStatusSize(0), 4);
  t.ok(isMalformed(decodeChunkPayload(CHUNK.BLOCK_STATUS, blockStatus(1, []))), 'no descriptor at all');
  t.ok(isMalformed(decodeChunkPayload(CHUNK.BLOCK_STATUS, Buffer.alloc(11))), '11 bytes');
  t.ok(isMalformed(decodeChunkPayload(CHUNK.BLOCK_STATUS, Buffer.alloc(13))), 'a partial descriptor');
  t.ok(isMalformed(decodeChunkPayload(CHUNK.BLOCK_STATUS, Buffer.alloc(27))), 'two and a bit descriptors');
  fc.assert(
    fc.property(u32, fc.array(fc.record({ length: u32, flags: u32 }), { minLength: 1, maxLength: 16 }), (id, extents) => {
      const r = decodeChunkPayload(CHUNK.BLOCK_STATUS, blockStatus(id, extents));
      return !isMalformed(r) && 'extents' in r && r.contextId === id && JSON.stringify(r.extents) === JSON.stringify(extents);
    }),
    RUNS,
  );
});

function blockStatusExt(id: number, extents: { length: number; flags: number }[]): Buffer {
  const buf = Buffer.alloc(blockStatusExtSize(extents.length));
  expectEnd(encodeBlockStatusExt(buf, 0, id, extents), buf.length);
  return buf;
}

t.test('BLOCK_STATUS_EXT', async (t) => {
  const p = blockStatusExt(1, [{ length: 5 * 2 ** 30, flags: 3 }]);
  t.same(p, Buffer.from('00000001' + '00000001' + '0000000140000000' + '0000000000000003', 'hex'), 'id, count, 64-bit length, 64-bit status');
  t.same(ok(decodeChunkPayload(CHUNK.BLOCK_STATUS_EXT, p)), {
    type: CHUNK.BLOCK_STATUS_EXT,
    contextId: 1,
    extents: [{ length: 5 * 2 ** 30, flags: 3 }],
  });
  t.equal(blockStatusExtSize(0), 8);
  t.equal(blockStatusExtSize(2), 40);
  t.ok(isMalformed(decodeChunkPayload(CHUNK.BLOCK_STATUS_EXT, blockStatusExt(1, []))), 'no descriptor at all');
  const zeroCount = Buffer.from(p);
  zeroCount.writeUInt32BE(0, 4);
  t.ok(isMalformed(decodeChunkPayload(CHUNK.BLOCK_STATUS_EXT, zeroCount)), 'a count of zero with one descriptor');
  const twoClaimed = Buffer.from(p);
  twoClaimed.writeUInt32BE(2, 4);
  t.ok(isMalformed(decodeChunkPayload(CHUNK.BLOCK_STATUS_EXT, twoClaimed)), 'a count that disagrees with the length');
  const highStatus = Buffer.from(p);
  highStatus.writeUInt32BE(1, 16);
  t.ok(isMalformed(decodeChunkPayload(CHUNK.BLOCK_STATUS_EXT, highStatus)), 'status with the high 32 bits set');
  for (let n = 0; n < p.length; n++) {
    t.ok(isMalformed(decodeChunkPayload(CHUNK.BLOCK_STATUS_EXT, p.subarray(0, n))), `cut to ${n} bytes`);
  }
  const two = blockStatusExt(9, [{ length: 512, flags: 0 }, { length: 1024, flags: 1 }]);
  t.ok(isMalformed(decodeChunkPayload(CHUNK.BLOCK_STATUS_EXT, two.subarray(0, 32))), 'a partial second descriptor');
  t.ok(isMalformed(decodeChunkPayload(CHUNK.BLOCK_STATUS_EXT, Buffer.concat([two, Buffer.alloc(16)]))), 'one descriptor more than counted');
  const u64safe = fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER });
  fc.assert(
    fc.property(u32, fc.array(fc.record({ length: u64safe, flags: u32 }), { minLength: 1, maxLength: 16 }), (id, extents) => {
      const r = decodeChunkPayload(CHUNK.BLOCK_STATUS_EXT, blockStatusExt(id, extents));
      return !isMalformed(r) && 'extents' in r && r.contextId === id && JSON.stringify(r.extents) === JSON.stringify(extents);
    }),
    RUNS,
  );
});

t.test('BLOCK_STATUS request payload (NBD_CMD_FLAG_PAYLOAD_LEN)', async (t) => {
  const buf = Buffer.alloc(blockStatusPayloadSize(2));
  expectEnd(encodeBlockStatusPayload(buf, 0, { length: 5 * 2 ** 30, contextIds: [1, 3] }), 16);
  t.same(buf, Buffer.from('0000000140000000' + '00000001' + '00000003', 'hex'), 'effect length, then the ids');
  t.same(ok(decodeBlockStatusPayload(buf)), { length: 5 * 2 ** 30, contextIds: [1, 3] });
  for (let n = 0; n < 12; n++) t.ok(isMalformed(decodeBlockStatusPayload(buf.subarray(0, n))), `${n} bytes: no context id`);
  t.ok(isMalformed(decodeBlockStatusPayload(buf.subarray(0, 14))), 'a partial id');
  t.ok(isMalformed(decodeBlockStatusPayload(Buffer.alloc(17))), '17 bytes');
  fc.assert(
    fc.property(u64, fc.array(u32, { minLength: 1, maxLength: 16 }), fc.nat({ max: 5 }), (length, contextIds, at) => {
      const b = Buffer.alloc(at + blockStatusPayloadSize(contextIds.length));
      expectEnd(encodeBlockStatusPayload(b, at, { length, contextIds }), b.length);
      const d = decodeBlockStatusPayload(b.subarray(at));
      return !isMalformed(d) && d.length === Number(length) && JSON.stringify(d.contextIds) === JSON.stringify(contextIds);
    }),
    RUNS,
  );
});

t.test('ERROR', async (t) => {
  const p = errorPayload(5, 'oops');
  t.same(p, Buffer.from('00000005' + '0004' + Buffer.from('oops').toString('hex'), 'hex'));
  t.same(ok(decodeChunkPayload(CHUNK.ERROR, p)), { type: CHUNK.ERROR, error: 5, message: 'oops' });
  t.same(ok(decodeChunkPayload(CHUNK.ERROR, errorPayload(22, ''))), { type: CHUNK.ERROR, error: 22, message: '' }, 'empty message');
  t.ok(isMalformed(decodeChunkPayload(CHUNK.ERROR, Buffer.alloc(5))), 'shorter than 6 bytes');
  t.ok(isMalformed(decodeChunkPayload(CHUNK.ERROR, p.subarray(0, p.length - 1))), 'message length past the chunk');
  fc.assert(
    fc.property(u32, unicode, (error, message) => {
      const r = decodeChunkPayload(CHUNK.ERROR, errorPayload(error, message));
      return !isMalformed(r) && 'error' in r && r.error === error && r.message === message;
    }),
    RUNS,
  );
});

t.test('ERROR_OFFSET', async (t) => {
  const p = errorOffsetPayload(5, 'bad', 8192);
  t.equal(p.length, 6 + 3 + 8);
  t.same(ok(decodeChunkPayload(CHUNK.ERROR_OFFSET, p)), { type: CHUNK.ERROR_OFFSET, error: 5, message: 'bad', offset: 8192 });
  t.same(ok(decodeChunkPayload(CHUNK.ERROR_OFFSET, errorOffsetPayload(1, '', 0))), { type: CHUNK.ERROR_OFFSET, error: 1, message: '', offset: 0 });
  t.ok(isMalformed(decodeChunkPayload(CHUNK.ERROR_OFFSET, Buffer.alloc(13))), 'shorter than 14 bytes');
  t.ok(isMalformed(decodeChunkPayload(CHUNK.ERROR_OFFSET, p.subarray(0, p.length - 1))), 'the offset cut short');
  t.ok(isMalformed(decodeChunkPayload(CHUNK.ERROR_OFFSET, errorPayload(5, 'an error without offset'))), 'the offset missing');
  fc.assert(
    fc.property(u32, unicode, safe, (error, message, offset) => {
      const r = decodeChunkPayload(CHUNK.ERROR_OFFSET, errorOffsetPayload(error, message, offset));
      return !isMalformed(r) && 'offset' in r && 'message' in r && r.error === error && r.message === message && r.offset === offset;
    }),
    RUNS,
  );
});

t.test('unknown chunk types come back whole', async (t) => {
  for (const type of [3, 4, 7, 0x7fff, 0x8003, 0xffff]) {
    const payload = Buffer.from([type & 0xff, 1, 2]);
    const r = decodeChunkPayload(type, payload);
    t.same(r, { type, unknown: payload }, `type ${type}`);
  }
  t.same(decodeChunkPayload(100, Buffer.alloc(0)), { type: 100, unknown: Buffer.alloc(0) }, 'empty');
});

t.test('random payloads never make the chunk decoder throw or change the type', async (t) => {
  const types = [CHUNK.NONE, CHUNK.OFFSET_DATA, CHUNK.OFFSET_HOLE, CHUNK.BLOCK_STATUS, CHUNK.BLOCK_STATUS_EXT, CHUNK.ERROR, CHUNK.ERROR_OFFSET, 77];
  let decoded = 0;
  fc.assert(
    fc.property(fc.constantFrom(...types), fc.uint8Array({ maxLength: 40 }), (type, bytes) => {
      const r = decodeChunkPayload(type, Buffer.from(bytes));
      if (!isMalformed(r)) decoded++;
      return isMalformed(r) || r.type === type;
    }),
    { seed: 42, numRuns: 500 },
  );
  t.ok(decoded > 0, 'some random payloads decode');
});
