// Pure encoders and decoders for the transmission phase: requests (compact
// 28-byte and extended 32-byte), simple replies, structured and extended
// reply chunks and their payloads. Header encoders
// write into a buffer they are given, so the server can put a reply
// header and its payload into one corked write without copying the data.
// Decoders return null when the frame is not complete yet and never
// validate magics or semantics; that is the caller's job.

import {
  CHUNK,
  CHUNK_HEADER_SIZE,
  EXTENDED_REPLY_MAGIC,
  EXTENDED_REPLY_SIZE,
  EXTENDED_REQUEST_MAGIC,
  EXTENDED_REQUEST_SIZE,
  REQUEST_MAGIC,
  REQUEST_SIZE,
  SIMPLE_REPLY_MAGIC,
  SIMPLE_REPLY_SIZE,
  STRUCTURED_REPLY_MAGIC,
} from './constants.js';
import type { Malformed } from './handshake-codec.js';
import { readU64, writeU64 } from './u64.js';

// --- requests ---------------------------------------------------------------

export interface RequestHeader {
  magic: number;
  flags: number;
  type: number;
  cookie: bigint;
  /** Exact below 2^53; see u64.ts for why that is enough. */
  offset: number;
  /** 32 bits in a compact request; 64 bits (exact below 2^53) in an extended one. */
  length: number;
  /**
   * An extended request's offset when `offset` cannot hold it exactly
   * (past 2^53): every extended reply echoes the offset as sent.
   */
  exactOffset?: bigint;
}

export interface RequestFields {
  magic?: number;
  flags: number;
  type: number;
  cookie: bigint;
  offset: number | bigint;
  /** A compact request carries the low 32 bits. */
  length: number | bigint;
}

/** The first 16 bytes both request forms share. */
function encodeRequestStart(buf: Buffer, off: number, req: RequestFields, magic: number): void {
  buf.writeUInt32BE((req.magic ?? magic) >>> 0, off);
  buf.writeUInt16BE(req.flags, off + 4);
  buf.writeUInt16BE(req.type, off + 6);
  buf.writeBigUInt64BE(req.cookie, off + 8);
  writeU64(buf, off + 16, req.offset);
}

export function encodeRequest(buf: Buffer, off: number, req: RequestFields): number {
  encodeRequestStart(buf, off, req, REQUEST_MAGIC);
  const length = typeof req.length === 'bigint' ? Number(BigInt.asUintN(32, req.length)) : req.length >>> 0;
  buf.writeUInt32BE(length, off + 24);
  return off + REQUEST_SIZE;
}

/** The 32-byte request of NBD_OPT_EXTENDED_HEADERS: the same fields with a 64-bit length. */
export function encodeExtendedRequest(buf: Buffer, off: number, req: RequestFields): number {
  encodeRequestStart(buf, off, req, EXTENDED_REQUEST_MAGIC);
  writeU64(buf, off + 24, req.length);
  return off + EXTENDED_REQUEST_SIZE;
}

/** The fields both request forms share, with the length each reads its own way. */
function decodeRequestFields(buf: Buffer, off: number, length: number): RequestHeader {
  return {
    magic: buf.readUInt32BE(off),
    flags: buf.readUInt16BE(off + 4),
    type: buf.readUInt16BE(off + 6),
    cookie: buf.readBigUInt64BE(off + 8),
    offset: readU64(buf, off + 16),
    length,
  };
}

export function decodeRequest(buf: Buffer, off = 0): RequestHeader | null {
  if (buf.length - off < REQUEST_SIZE) return null;
  return decodeRequestFields(buf, off, buf.readUInt32BE(off + 24));
}

export function decodeExtendedRequest(buf: Buffer, off = 0): RequestHeader | null {
  if (buf.length - off < EXTENDED_REQUEST_SIZE) return null;
  const h = decodeRequestFields(buf, off, readU64(buf, off + 24));
  if (h.offset > Number.MAX_SAFE_INTEGER) h.exactOffset = buf.readBigUInt64BE(off + 16);
  return h;
}

// --- replies ----------------------------------------------------------------

export interface SimpleReply {
  kind: 'simple';
  error: number;
  cookie: bigint;
}

export interface ChunkHeader {
  kind: 'chunk';
  flags: number;
  type: number;
  cookie: bigint;
  length: number;
}

/** An extended reply chunk: a chunk header that also echoes the request's offset. */
export interface ExtendedReplyHeader {
  kind: 'extended';
  flags: number;
  type: number;
  cookie: bigint;
  offset: number;
  /** 64 bits on the wire, exact below 2^53. */
  length: number;
}

export function encodeSimpleReply(buf: Buffer, off: number, error: number, cookie: bigint): number {
  buf.writeUInt32BE(SIMPLE_REPLY_MAGIC, off);
  buf.writeUInt32BE(error >>> 0, off + 4);
  buf.writeBigUInt64BE(cookie, off + 8);
  return off + SIMPLE_REPLY_SIZE;
}

export function encodeChunkHeader(
  buf: Buffer,
  off: number,
  flags: number,
  type: number,
  cookie: bigint,
  length: number,
): number {
  buf.writeUInt32BE(STRUCTURED_REPLY_MAGIC, off);
  buf.writeUInt16BE(flags, off + 4);
  buf.writeUInt16BE(type, off + 6);
  buf.writeBigUInt64BE(cookie, off + 8);
  buf.writeUInt32BE(length >>> 0, off + 16);
  return off + CHUNK_HEADER_SIZE;
}

export function encodeExtendedReplyHeader(
  buf: Buffer,
  off: number,
  flags: number,
  type: number,
  cookie: bigint,
  offset: number | bigint,
  length: number,
): number {
  buf.writeUInt32BE(EXTENDED_REPLY_MAGIC, off);
  buf.writeUInt16BE(flags, off + 4);
  buf.writeUInt16BE(type, off + 6);
  buf.writeBigUInt64BE(cookie, off + 8);
  writeU64(buf, off + 16, offset);
  writeU64(buf, off + 24, length);
  return off + EXTENDED_REPLY_SIZE;
}

/**
 * Decodes the header of whatever reply comes next: a simple reply (16
 * bytes), a structured chunk header (20 bytes) or an extended one (32
 * bytes). Returns null when more bytes are needed, and
 * { kind: 'unknown', magic } for a magic that is none of them.
 */
export function decodeReplyHeader(
  buf: Buffer,
  off = 0,
): SimpleReply | ChunkHeader | ExtendedReplyHeader | { kind: 'unknown'; magic: number } | null {
  if (buf.length - off < 4) return null;
  const magic = buf.readUInt32BE(off);
  if (magic === SIMPLE_REPLY_MAGIC) {
    if (buf.length - off < SIMPLE_REPLY_SIZE) return null;
    return { kind: 'simple', error: buf.readUInt32BE(off + 4), cookie: buf.readBigUInt64BE(off + 8) };
  }
  if (magic === STRUCTURED_REPLY_MAGIC) {
    if (buf.length - off < CHUNK_HEADER_SIZE) return null;
    return {
      kind: 'chunk',
      flags: buf.readUInt16BE(off + 4),
      type: buf.readUInt16BE(off + 6),
      cookie: buf.readBigUInt64BE(off + 8),
      length: buf.readUInt32BE(off + 16),
    };
  }
  if (magic === EXTENDED_REPLY_MAGIC) {
    if (buf.length - off < EXTENDED_REPLY_SIZE) return null;
    return {
      kind: 'extended',
      flags: buf.readUInt16BE(off + 4),
      type: buf.readUInt16BE(off + 6),
      cookie: buf.readBigUInt64BE(off + 8),
      offset: readU64(buf, off + 16),
      length: readU64(buf, off + 24),
    };
  }
  return { kind: 'unknown', magic };
}

// --- structured chunk payloads ---------------------------------------------

/** The 8-byte offset that starts an OFFSET_DATA payload; the data follows. */
export const OFFSET_DATA_PREFIX = 8;
export const OFFSET_HOLE_SIZE = 12;

export function encodeOffsetDataPrefix(buf: Buffer, off: number, offset: number): number {
  writeU64(buf, off, offset);
  return off + OFFSET_DATA_PREFIX;
}

export function encodeOffsetHole(buf: Buffer, off: number, offset: number, size: number): number {
  writeU64(buf, off, offset);
  buf.writeUInt32BE(size >>> 0, off + 8);
  return off + OFFSET_HOLE_SIZE;
}

export interface BlockDescriptor {
  /** 32 bits in BLOCK_STATUS, 64 bits (exact below 2^53) in BLOCK_STATUS_EXT. */
  length: number;
  /** 32 bits: every context we know leaves the high half of a BLOCK_STATUS_EXT status zero. */
  flags: number;
}

export function blockStatusSize(count: number): number {
  return 4 + 8 * count;
}

export function encodeBlockStatus(buf: Buffer, off: number, contextId: number, extents: BlockDescriptor[]): number {
  buf.writeUInt32BE(contextId >>> 0, off);
  let p = off + 4;
  for (const e of extents) {
    buf.writeUInt32BE(e.length >>> 0, p);
    buf.writeUInt32BE(e.flags >>> 0, p + 4);
    p += 8;
  }
  return p;
}

/** BLOCK_STATUS_EXT: context id, descriptor count, then 16-byte descriptors. */
export function blockStatusExtSize(count: number): number {
  return 8 + 16 * count;
}

export function encodeBlockStatusExt(buf: Buffer, off: number, contextId: number, extents: BlockDescriptor[]): number {
  buf.writeUInt32BE(contextId >>> 0, off);
  buf.writeUInt32BE(extents.length, off + 4);
  let p = off + 8;
  for (const e of extents) {
    writeU64(buf, p, e.length);
    buf.writeUInt32BE(0, p + 8);
    buf.writeUInt32BE(e.flags >>> 0, p + 12);
    p += 16;
  }
  return p;
}

/**
 * The payload of a BLOCK_STATUS request sent with NBD_CMD_FLAG_PAYLOAD_LEN:
 * the effect length, then the context ids the client wants answered.
 */
export interface BlockStatusPayload {
  length: number | bigint;
  contextIds: number[];
}

export function blockStatusPayloadSize(contextCount: number): number {
  return 8 + 4 * contextCount;
}

export function encodeBlockStatusPayload(buf: Buffer, off: number, payload: BlockStatusPayload): number {
  writeU64(buf, off, payload.length);
  let p = off + 8;
  for (const id of payload.contextIds) {
    buf.writeUInt32BE(id >>> 0, p);
    p += 4;
  }
  return p;
}

export function decodeBlockStatusPayload(payload: Buffer): { length: number; contextIds: number[] } | Malformed {
  if (payload.length < 12 || (payload.length - 8) % 4 !== 0) {
    return { malformed: `BLOCK_STATUS payload of ${payload.length} bytes (not 8 + a positive multiple of 4)` };
  }
  const contextIds: number[] = [];
  for (let p = 8; p < payload.length; p += 4) contextIds.push(payload.readUInt32BE(p));
  return { length: readU64(payload, 0), contextIds };
}

/** Size of an ERROR chunk payload carrying a message of `messageBytes`. */
export function errorPayloadSize(messageBytes: number): number {
  return 6 + messageBytes;
}

export function encodeErrorPayload(buf: Buffer, off: number, error: number, message: Buffer): number {
  buf.writeUInt32BE(error >>> 0, off);
  buf.writeUInt16BE(message.length, off + 4);
  message.copy(buf, off + 6);
  return off + 6 + message.length;
}

export type ChunkPayload =
  | { type: typeof CHUNK.NONE }
  | { type: typeof CHUNK.OFFSET_DATA; offset: number; data: Buffer }
  | { type: typeof CHUNK.OFFSET_HOLE; offset: number; size: number }
  | { type: typeof CHUNK.BLOCK_STATUS | typeof CHUNK.BLOCK_STATUS_EXT; contextId: number; extents: BlockDescriptor[] }
  | { type: typeof CHUNK.ERROR; error: number; message: string }
  | { type: typeof CHUNK.ERROR_OFFSET; error: number; message: string; offset: number }
  | { type: number; unknown: Buffer };

/** Decodes a chunk payload, checking the lengths the protocol fixes for each type. */
export function decodeChunkPayload(type: number, payload: Buffer): ChunkPayload | Malformed {
  switch (type) {
    case CHUNK.NONE:
      return payload.length === 0 ? { type } : { malformed: 'NONE chunk with a payload' };
    case CHUNK.OFFSET_DATA:
      if (payload.length < 9) return { malformed: 'OFFSET_DATA chunk shorter than 9 bytes' };
      return { type, offset: readU64(payload, 0), data: payload.subarray(8) };
    case CHUNK.OFFSET_HOLE:
      if (payload.length !== OFFSET_HOLE_SIZE) return { malformed: 'OFFSET_HOLE chunk not 12 bytes' };
      return { type, offset: readU64(payload, 0), size: payload.readUInt32BE(8) };
    case CHUNK.BLOCK_STATUS: {
      if (payload.length < 12 || (payload.length - 4) % 8 !== 0) {
        return { malformed: `BLOCK_STATUS chunk of ${payload.length} bytes` };
      }
      const extents: BlockDescriptor[] = [];
      for (let p = 4; p < payload.length; p += 8) {
        extents.push({ length: payload.readUInt32BE(p), flags: payload.readUInt32BE(p + 4) });
      }
      return { type, contextId: payload.readUInt32BE(0), extents };
    }
    case CHUNK.BLOCK_STATUS_EXT: {
      if (payload.length < 24 || (payload.length - 8) % 16 !== 0) {
        return { malformed: `BLOCK_STATUS_EXT chunk of ${payload.length} bytes` };
      }
      const count = payload.readUInt32BE(4);
      if (count !== (payload.length - 8) / 16) {
        return { malformed: `BLOCK_STATUS_EXT chunk of ${payload.length} bytes claims ${count} descriptors` };
      }
      const extents: BlockDescriptor[] = [];
      for (let p = 8; p < payload.length; p += 16) {
        if (payload.readUInt32BE(p + 8) !== 0) return { malformed: 'BLOCK_STATUS_EXT status with high 32 bits set' };
        extents.push({ length: readU64(payload, p), flags: payload.readUInt32BE(p + 12) });
      }
      return { type, contextId: payload.readUInt32BE(0), extents };
    }
    case CHUNK.ERROR:
    case CHUNK.ERROR_OFFSET: {
      const fixed = type === CHUNK.ERROR ? 6 : 14;
      if (payload.length < fixed) return { malformed: `error chunk shorter than ${fixed} bytes` };
      const messageLength = payload.readUInt16BE(4);
      if (messageLength > payload.length - fixed) return { malformed: 'error message length exceeds chunk' };
      const message = payload.toString('utf8', 6, 6 + messageLength);
      const error = payload.readUInt32BE(0);
      if (type === CHUNK.ERROR) return { type, error, message };
      return { type, error, message, offset: readU64(payload, 6 + messageLength) };
    }
    default:
      return { type, unknown: payload };
  }
}
