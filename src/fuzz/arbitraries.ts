// fast-check arbitraries for every NBD message a client sends, and the
// replies a server sends, valid and hostile. They are built on the same
// codecs as vblk itself (src/protocol/nbd), so what they call "valid" is
// what vblk encodes. Numbers at the boundaries are favoured: 0, 1, block
// size ± 1, size − 1, size, size + 1, 2^32 − 1, 2^63, 2^64 − 1. Every
// arbitrary carries a label so a shrunk counterexample reads as prose.
//
// Import them from another project as `vblk/fuzz`:
//   import fc from 'fast-check';
//   import { nbdRequest, optionRequest } from 'vblk/fuzz';
//   fc.assert(fc.property(nbdRequest({ size: 1 << 20 }), (r) => ...));

import fc from 'fast-check';
import {
  CHUNK,
  CMD,
  CMD_FLAG,
  IHAVEOPT,
  INFO,
  MAX_STRING,
  META_ALLOCATION_DEPTH,
  META_BASE_ALLOCATION,
  NBD_ERR,
  OPT,
  REP,
  REPLY_FLAG_DONE,
  REQUEST_MAGIC,
  REQUEST_SIZE,
  SIMPLE_REPLY_MAGIC,
  EXTENDED_REQUEST_MAGIC,
} from '../protocol/nbd/constants.js';
import {
  encodeClientFlags,
  encodeInfoReply,
  encodeInfoRequest,
  encodeMetaContextReply,
  encodeMetaContextRequest,
  encodeOption,
  encodeOptionReply,
  encodeServerReply,
} from '../protocol/nbd/handshake-codec.js';
import {
  blockStatusSize,
  encodeBlockStatus,
  encodeChunkHeader,
  encodeErrorPayload,
  encodeOffsetHole,
  encodeRequest,
  encodeSimpleReply,
  type RequestFields,
} from '../protocol/nbd/transmission-codec.js';
import { commandLabel } from './model.js';

/** What the generators need to know about the export under test. */
export interface ExportShape {
  /** Export size in bytes. */
  size: number;
  /** Preferred block size (default 4096). */
  blockSize?: number;
  /** Largest payload the server takes (default 32 MiB). */
  maxPayload?: number;
  /** Export names the server has (default ['']). */
  names?: string[];
}

const U32_MAX = 0xffffffff;
const TWO63 = 2n ** 63n;
const U64_MAX = 2n ** 64n - 1n;

function shapeOf(s: ExportShape): Required<ExportShape> {
  return { blockSize: 4096, maxPayload: 32 << 20, names: [''], ...s };
}

// --- numbers at the boundaries ----------------------------------------------

/** Offsets: boundaries of the export and of the integer types, and anywhere inside. */
export function boundaryOffset(shape: ExportShape): fc.Arbitrary<number | bigint> {
  const { size, blockSize: bs } = shapeOf(shape);
  const edges = [0, 1, bs - 1, bs, bs + 1, size - bs, size - 1, size, size + 1, U32_MAX].filter((n) => n >= 0);
  return fc.oneof(
    { weight: 3, arbitrary: fc.constantFrom(...new Set(edges)) },
    { weight: 1, arbitrary: fc.constantFrom(TWO63, U64_MAX, TWO63 - 1n) },
    { weight: 4, arbitrary: fc.integer({ min: 0, max: Math.max(0, size - 1) }) },
    { weight: 2, arbitrary: fc.integer({ min: 0, max: Math.max(0, Math.floor(size / bs) - 1) }).map((b) => b * bs) },
  );
}

/** Lengths (u32): the same boundaries, payload limits, and small lengths. */
export function boundaryLength(shape: ExportShape): fc.Arbitrary<number> {
  const { size, blockSize: bs, maxPayload } = shapeOf(shape);
  const edges = [0, 1, bs - 1, bs, bs + 1, size - 1, size, size + 1, maxPayload, maxPayload + 1, U32_MAX].filter(
    (n) => n >= 0 && n <= U32_MAX,
  );
  return fc.oneof(
    { weight: 3, arbitrary: fc.constantFrom(...new Set(edges)) },
    { weight: 4, arbitrary: fc.integer({ min: 1, max: 4 * bs }) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: U32_MAX }) },
  );
}

/** An (offset, length) range inside the export, biased to its edges; never empty unless the export is. */
export function rangeInside(shape: ExportShape, maxLength = 64 << 10): fc.Arbitrary<{ offset: number; length: number }> {
  const { size, blockSize: bs } = shapeOf(shape);
  const start = fc.oneof(
    fc.constantFrom(0, Math.max(0, size - 1), Math.max(0, size - bs), Math.max(0, bs - 1), bs % Math.max(1, size)),
    fc.integer({ min: 0, max: Math.max(0, Math.floor(size / bs) - 1) }).map((b) => b * bs),
    fc.integer({ min: 0, max: Math.max(0, size - 1) }),
  );
  return start.chain((offset) => {
    const room = Math.min(maxLength, size - offset);
    const length = fc.oneof(
      fc.constantFrom(...new Set([1, Math.min(bs, room), room, Math.max(1, Math.min(bs - 1, room))])),
      fc.integer({ min: 1, max: Math.max(1, room) }),
    );
    return length.map((l) => ({ offset, length: Math.min(l, room) }));
  });
}

// --- the client's answer to the greeting -----------------------------------

/** Client flags: the valid combinations, and unknown bits (which must close the connection). */
export const clientFlags: fc.Arbitrary<number> = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(0, 1, 2, 3) },
  { weight: 1, arbitrary: fc.integer({ min: 2, max: 31 }).map((bit) => (3 | (1 << bit)) >>> 0) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: U32_MAX }) },
);

/** The four bytes of client flags, or fewer (a client that stops early). */
export const greetingAnswer: fc.Arbitrary<Buffer> = fc.oneof(
  { weight: 4, arbitrary: clientFlags.map((f) => encodeClientFlags(f)) },
  { weight: 1, arbitrary: fc.uint8Array({ minLength: 0, maxLength: 3 }).map((b) => Buffer.from(b)) },
);

// --- options ----------------------------------------------------------------

export interface OptionCase {
  option: number;
  payload: Buffer;
  /** Whether the payload is well formed for the option (an unknown option counts as valid). */
  valid: boolean;
  label: string;
}

const KNOWN_CONTEXTS = [META_BASE_ALLOCATION, META_ALLOCATION_DEPTH, 'qemu:dirty-bitmap:fuzz'];

/** An export name: one the server has, an unknown one, or the longest allowed. */
function exportName(names: string[]): fc.Arbitrary<string> {
  return fc.oneof(
    { weight: 6, arbitrary: fc.constantFrom(...names) },
    { weight: 1, arbitrary: fc.string({ maxLength: 12 }) },
    { weight: 1, arbitrary: fc.constant('n'.repeat(MAX_STRING)) },
  );
}

const infoTypes = fc.array(
  fc.oneof(fc.constantFrom(INFO.EXPORT, INFO.NAME, INFO.DESCRIPTION, INFO.BLOCK_SIZE), fc.integer({ min: 0, max: 0xffff })),
  { maxLength: 5 },
);

const metaQuery = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...KNOWN_CONTEXTS, 'base:', 'qemu:', 'qemu:dirty-bitmap:') },
  { weight: 1, arbitrary: fc.string({ maxLength: 12 }) },
  { weight: 1, arbitrary: fc.string({ maxLength: 8 }).map((s) => `x-fuzz:${s}`) },
);

/** Payload damage: cut, stray bytes appended, or a length field that lies. */
function damaged(valid: Buffer): fc.Arbitrary<Buffer> {
  return fc.oneof(
    fc.integer({ min: 0, max: Math.max(0, valid.length - 1) }).map((n) => valid.subarray(0, n)),
    fc.uint8Array({ minLength: 1, maxLength: 8 }).map((b) => Buffer.concat([valid, b])),
    fc.integer({ min: 0, max: U32_MAX }).map((lie) => {
      const b = Buffer.from(valid);
      if (b.length >= 4) b.writeUInt32BE(lie, 0);
      return b;
    }),
  );
}

function infoOrGo(option: number, names: string[]): fc.Arbitrary<OptionCase> {
  const label = option === OPT.GO ? 'GO' : 'INFO';
  const valid = fc
    .record({ name: exportName(names), requests: infoTypes })
    .map((r) => ({ option, payload: encodeInfoRequest(r), valid: true, label: `${label} ${JSON.stringify(r.name.slice(0, 40))} [${r.requests}]` }));
  const malformed = fc
    .record({ name: fc.constantFrom(...names), requests: infoTypes })
    .chain((r) => damaged(encodeInfoRequest(r)))
    .map((payload) => ({ option, payload, valid: false, label: `${label} malformed ${payload.toString('hex').slice(0, 512)}` }));
  return fc.oneof({ weight: 3, arbitrary: valid }, { weight: 1, arbitrary: malformed });
}

function metaContext(option: number, names: string[]): fc.Arbitrary<OptionCase> {
  const label = option === OPT.SET_META_CONTEXT ? 'SET_META_CONTEXT' : 'LIST_META_CONTEXT';
  const valid = fc
    .record({ name: exportName(names), queries: fc.array(metaQuery, { maxLength: 4 }) })
    .map((r) => ({ option, payload: encodeMetaContextRequest(r), valid: true, label: `${label} ${JSON.stringify(r)}` }));
  const malformed = fc
    .record({ name: fc.constantFrom(...names), queries: fc.array(metaQuery, { maxLength: 3 }) })
    .chain((r) => damaged(encodeMetaContextRequest(r)))
    .map((payload) => ({ option, payload, valid: false, label: `${label} malformed ${payload.toString('hex').slice(0, 512)}` }));
  return fc.oneof({ weight: 3, arbitrary: valid }, { weight: 1, arbitrary: malformed });
}

function noData(option: number, label: string): fc.Arbitrary<OptionCase> {
  return fc.oneof(
    { weight: 3, arbitrary: fc.constant({ option, payload: Buffer.alloc(0), valid: true, label }) },
    {
      weight: 1,
      arbitrary: fc
        .uint8Array({ minLength: 1, maxLength: 16 })
        .map((b) => ({ option, payload: Buffer.from(b), valid: false, label: `${label} with ${b.length} bytes of data` })),
    },
  );
}

/**
 * Any option with a valid or malformed payload. EXPORT_NAME and ABORT end
 * the option phase; use `optionRequest(..., { ending: false })` for those
 * that keep it going.
 */
export function optionRequest(shape: ExportShape, opts: { ending?: boolean } = {}): fc.Arbitrary<OptionCase> {
  const { names } = shapeOf(shape);
  const cases: fc.Arbitrary<OptionCase>[] = [
    noData(OPT.LIST, 'LIST'),
    noData(OPT.STARTTLS, 'STARTTLS'),
    noData(OPT.STRUCTURED_REPLY, 'STRUCTURED_REPLY'),
    noData(OPT.EXTENDED_HEADERS, 'EXTENDED_HEADERS'),
    infoOrGo(OPT.INFO, names),
    metaContext(OPT.LIST_META_CONTEXT, names),
    metaContext(OPT.SET_META_CONTEXT, names),
    fc
      .record({
        option: fc.integer({ min: 0, max: U32_MAX }).filter((o) => !Object.values(OPT).includes(o as never)),
        data: fc.uint8Array({ maxLength: 32 }),
      })
      .map(({ option, data }) => ({ option, payload: Buffer.from(data), valid: true, label: `unknown option ${option}` })),
  ];
  if (opts.ending ?? true) {
    cases.push(
      infoOrGo(OPT.GO, names),
      exportName(names).map((n) => ({ option: OPT.EXPORT_NAME, payload: Buffer.from(n), valid: true, label: `EXPORT_NAME ${JSON.stringify(n.slice(0, 40))}` })),
      noData(OPT.ABORT, 'ABORT'),
    );
  }
  return fc.oneof(...cases);
}

/** The bytes of an option: header and payload, or a frame whose magic or length lies. */
export function optionFrame(shape: ExportShape): fc.Arbitrary<{ bytes: Buffer; label: string }> {
  const good = optionRequest(shape).map((o) => ({ bytes: encodeOption(o.option, o.payload), label: o.label }));
  return fc.oneof(
    { weight: 4, arbitrary: good },
    { weight: 1, arbitrary: good.chain((f) => truncatedFrame(f.bytes).map((bytes) => ({ bytes, label: `${f.label}, truncated to ${bytes.length}` }))) },
    {
      weight: 1,
      arbitrary: fc.tuple(good, fc.integer({ min: 0, max: U32_MAX })).map(([f, length]) => {
        const bytes = Buffer.from(f.bytes);
        bytes.writeUInt32BE(length, 12);
        return { bytes, label: `${f.label}, length field ${length}` };
      }),
    },
    {
      weight: 1,
      arbitrary: fc.tuple(good, fc.bigInt({ min: 0n, max: U64_MAX })).map(([f, magic]) => {
        const bytes = Buffer.from(f.bytes);
        bytes.writeBigUInt64BE(magic === IHAVEOPT ? 0n : magic, 0);
        return { bytes, label: `${f.label}, bad magic` };
      }),
    },
  );
}

// --- transmission requests --------------------------------------------------

export const COMMAND_NAMES: Record<number, string> = Object.fromEntries(Object.entries(CMD).map(([k, v]) => [v, k]));

/** Every command, the reserved RESIZE, and unknown ones. */
export const commandType: fc.Arbitrary<number> = fc.oneof(
  { weight: 8, arbitrary: fc.constantFrom(CMD.READ, CMD.WRITE, CMD.FLUSH, CMD.TRIM, CMD.CACHE, CMD.WRITE_ZEROES, CMD.BLOCK_STATUS) },
  { weight: 1, arbitrary: fc.constantFrom(CMD.RESIZE, 9, 0xffff) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) },
);

/** Command flags: every combination of the defined bits, and undefined ones. */
export const commandFlags: fc.Arbitrary<number> = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 0, max: 0x3f }) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) },
);

export function flagNames(flags: number): string {
  const names = Object.entries(CMD_FLAG)
    .filter(([, bit]) => flags & bit)
    .map(([n]) => n);
  const unknown = flags & ~0x3f;
  if (unknown) names.push(`0x${unknown.toString(16)}`);
  return names.join('|') || '0';
}

export interface RequestCase extends RequestFields {
  /** The fuzzer's lengths are numbers (exact below 2^53, like the server's). */
  length: number;
  /** Payload sent after the header (a WRITE's data, possibly the wrong size). */
  payload?: Buffer;
  /**
   * BLOCK_STATUS with extended headers: send it with PAYLOAD_LEN and a
   * payload naming these contexts (and `length` as the effect length).
   */
  contextIds?: number[];
  label: string;
}

/**
 * Any request header: every command, every flag combination, boundary
 * offsets and lengths. A WRITE carries exactly `length` bytes when that
 * is at most `maxWritePayload` (default 64 KiB); otherwise the request
 * is sent without its payload, which only makes sense as the last frame.
 */
export function nbdRequest(shape: ExportShape, opts: { maxWritePayload?: number } = {}): fc.Arbitrary<RequestCase> {
  const maxWrite = opts.maxWritePayload ?? 64 << 10;
  return fc
    .record({
      type: commandType,
      flags: commandFlags,
      cookie: fc.bigInt({ min: 0n, max: U64_MAX }),
      offset: boundaryOffset(shape),
      length: boundaryLength(shape),
      fill: fc.integer({ min: 0, max: 255 }),
    })
    .map(({ fill, ...r }) => {
      const payload = r.type === CMD.WRITE && r.length <= maxWrite ? Buffer.alloc(r.length, fill) : undefined;
      return { ...r, payload, label: `${commandLabel(r.type)} flags=${flagNames(r.flags)} offset=${r.offset} length=${r.length}` };
    });
}

export function encodeRequestCase(r: RequestCase): Buffer {
  const header = Buffer.alloc(REQUEST_SIZE);
  encodeRequest(header, 0, r);
  return r.payload ? Buffer.concat([header, r.payload]) : header;
}

/** A request frame: whole, truncated, with stray bytes after, or with a bad magic. */
export function requestFrame(shape: ExportShape): fc.Arbitrary<{ bytes: Buffer; label: string }> {
  const good = nbdRequest(shape).map((r) => ({ bytes: encodeRequestCase(r), label: r.label }));
  return fc.oneof(
    { weight: 5, arbitrary: good },
    { weight: 1, arbitrary: good.chain((f) => truncatedFrame(f.bytes).map((bytes) => ({ bytes, label: `${f.label}, truncated to ${bytes.length}` }))) },
    { weight: 1, arbitrary: good.chain((f) => oversizedFrame(f.bytes).map((bytes) => ({ bytes, label: `${f.label}, ${bytes.length - f.bytes.length} stray bytes` }))) },
    {
      weight: 1,
      arbitrary: fc.tuple(good, fc.oneof(fc.constantFrom(EXTENDED_REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, 0), fc.integer({ min: 0, max: U32_MAX }))).map(([f, magic]) => {
        const bytes = Buffer.from(f.bytes);
        bytes.writeUInt32BE(magic === REQUEST_MAGIC ? 0 : magic, 0);
        return { bytes, label: `${f.label}, magic 0x${magic.toString(16)}` };
      }),
    },
  );
}

// --- frames cut short, frames with too much -------------------------------------

/** A proper prefix of the frame (possibly empty). */
export function truncatedFrame(frame: Buffer): fc.Arbitrary<Buffer> {
  return fc.integer({ min: 0, max: Math.max(0, frame.length - 1) }).map((n) => frame.subarray(0, n));
}

/** The frame followed by stray bytes. */
export function oversizedFrame(frame: Buffer, maxExtra = 64): fc.Arbitrary<Buffer> {
  return fc.uint8Array({ minLength: 1, maxLength: maxExtra }).map((b) => Buffer.concat([frame, b]));
}

/** A byte stream mutated the way fuzzers do: bit flips, overwrites, inserts, deletes, splices. */
export function mutatedBytes(base: Buffer, maxMutations = 4): fc.Arbitrary<Buffer> {
  const mutation = fc.oneof(
    fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
    fc.record({ kind: fc.constant('set' as const), at: fc.nat(), value: fc.constantFrom(0, 0xff, 0x7f, 0x80, 1) }),
    fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
    fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), count: fc.integer({ min: 1, max: 16 }) }),
  );
  return fc.array(mutation, { minLength: 1, maxLength: maxMutations }).map((ms) => {
    let b = Buffer.from(base);
    for (const m of ms) {
      const at = b.length === 0 ? 0 : m.at % b.length;
      if (m.kind === 'flip' && b.length) b[at] ^= 1 << m.bit;
      else if (m.kind === 'set' && b.length) b[at] = m.value;
      else if (m.kind === 'insert') b = Buffer.concat([b.subarray(0, at), Buffer.from(m.bytes), b.subarray(at)]);
      else if (m.kind === 'delete') b = Buffer.concat([b.subarray(0, at), b.subarray(at + m.count)]);
    }
    return b;
  });
}

/** How a byte stream is cut into writes: each write's size. */
export const chunking: fc.Arbitrary<number[]> = fc.array(fc.integer({ min: 1, max: 64 }), { minLength: 1, maxLength: 8 });

export function splitBytes(bytes: Buffer, sizes: number[]): Buffer[] {
  const out: Buffer[] = [];
  let p = 0;
  for (let i = 0; p < bytes.length; i++) {
    const n = i < sizes.length ? sizes[i] : bytes.length - p;
    out.push(bytes.subarray(p, p + n));
    p += n;
  }
  return out;
}

// --- server replies (for fuzzing NBD clients) ---------------------------------

/** An option reply: ACK, SERVER, INFO, META_CONTEXT or any error, for an option. */
export const optionReply: fc.Arbitrary<Buffer> = fc
  .record({
    option: fc.constantFrom(...Object.values(OPT)),
    body: fc.oneof(
      fc.constant({ type: REP.ACK as number, payload: Buffer.alloc(0) }),
      fc.record({ name: fc.string({ maxLength: 16 }), details: fc.string({ maxLength: 16 }) }).map((s) => ({ type: REP.SERVER as number, payload: encodeServerReply(s) })),
      fc.record({ size: fc.nat(), flags: fc.integer({ min: 0, max: 0xffff }) }).map((i) => ({ type: REP.INFO as number, payload: encodeInfoReply({ type: INFO.EXPORT, ...i }) })),
      fc.record({ id: fc.nat(), name: fc.constantFrom(...KNOWN_CONTEXTS) }).map((m) => ({ type: REP.META_CONTEXT as number, payload: encodeMetaContextReply(m) })),
      fc.record({ type: fc.constantFrom(...Object.values(REP).filter((t) => t >= 0x80000000)), message: fc.string({ maxLength: 32 }) }).map((e) => ({ type: e.type as number, payload: Buffer.from(e.message) })),
    ),
  })
  .map(({ option, body }) => encodeOptionReply(option, body.type, body.payload));

/** A simple reply or a structured chunk, for a cookie. */
export function transmissionReply(cookie: fc.Arbitrary<bigint> = fc.bigInt({ min: 0n, max: U64_MAX })): fc.Arbitrary<Buffer> {
  const errno = fc.constantFrom(0, ...Object.values(NBD_ERR));
  const done = fc.boolean().map((d) => (d ? REPLY_FLAG_DONE : 0));
  return fc.oneof(
    fc.tuple(cookie, errno).map(([c, e]) => {
      const b = Buffer.alloc(16);
      encodeSimpleReply(b, 0, e, c);
      return b;
    }),
    fc.tuple(cookie, done, fc.nat(), fc.integer({ min: 1, max: 4096 })).map(([c, f, offset, size]) => {
      const b = Buffer.alloc(32);
      encodeOffsetHole(b, encodeChunkHeader(b, 0, f, CHUNK.OFFSET_HOLE, c, 12), offset, size);
      return b;
    }),
    fc.tuple(cookie, done, fc.array(fc.record({ length: fc.integer({ min: 1, max: U32_MAX }), flags: fc.integer({ min: 0, max: 3 }) }), { minLength: 1, maxLength: 4 })).map(([c, f, ext]) => {
      const size = blockStatusSize(ext.length);
      const b = Buffer.alloc(20 + size);
      encodeBlockStatus(b, encodeChunkHeader(b, 0, f, CHUNK.BLOCK_STATUS, c, size), 1, ext);
      return b;
    }),
    fc.tuple(cookie, errno, fc.string({ maxLength: 32 })).map(([c, e, m]) => {
      const msg = Buffer.from(m);
      const b = Buffer.alloc(20 + 6 + msg.length);
      encodeErrorPayload(b, encodeChunkHeader(b, 0, REPLY_FLAG_DONE, CHUNK.ERROR, c, 6 + msg.length), e || NBD_ERR.EIO, msg);
      return b;
    }),
  );
}
