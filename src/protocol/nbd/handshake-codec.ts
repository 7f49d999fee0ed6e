// Pure encoders and decoders for the messages of the NBD handshake phase,
// both directions, so the server, the test client and the fuzzers share
// one definition of the wire. Decoders of fixed-size frames take
// (buf, off) and return null when the bytes are not all there yet; they
// never validate magics (the caller decides what a bad magic means).
// Decoders of payloads return { malformed: reason } for malformed input.

import {
  EXPORT_NAME_PADDING,
  EXPORT_NAME_REPLY_SIZE,
  GREETING_SIZE,
  IHAVEOPT,
  INFO,
  MAX_STRING,
  NBDMAGIC,
  OPTION_HEADER_SIZE,
  OPTION_REPLY_HEADER_SIZE,
  OPTION_REPLY_MAGIC,
} from './constants.js';
import { readU64, writeU64 } from './u64.js';

export type Malformed = { malformed: string };

export function isMalformed<T extends object>(v: T | Malformed): v is Malformed {
  return 'malformed' in v;
}

// --- greeting and client flags -------------------------------------------

export interface Greeting {
  magic: bigint;
  optMagic: bigint;
  handshakeFlags: number;
}

export function encodeGreeting(handshakeFlags: number): Buffer {
  const buf = Buffer.alloc(GREETING_SIZE);
  buf.writeBigUInt64BE(NBDMAGIC, 0);
  buf.writeBigUInt64BE(IHAVEOPT, 8);
  buf.writeUInt16BE(handshakeFlags, 16);
  return buf;
}

export function decodeGreeting(buf: Buffer, off = 0): Greeting | null {
  if (buf.length - off < GREETING_SIZE) return null;
  return {
    magic: buf.readBigUInt64BE(off),
    optMagic: buf.readBigUInt64BE(off + 8),
    handshakeFlags: buf.readUInt16BE(off + 16),
  };
}

export function encodeClientFlags(flags: number): Buffer {
  const buf = Buffer.alloc(4);
  buf.writeUInt32BE(flags >>> 0, 0);
  return buf;
}

export function decodeClientFlags(buf: Buffer, off = 0): number | null {
  if (buf.length - off < 4) return null;
  return buf.readUInt32BE(off);
}

// --- option requests ------------------------------------------------------

export interface OptionHeader {
  magic: bigint;
  option: number;
  length: number;
}

export function encodeOption(option: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const buf = Buffer.alloc(OPTION_HEADER_SIZE + payload.length);
  buf.writeBigUInt64BE(IHAVEOPT, 0);
  buf.writeUInt32BE(option >>> 0, 8);
  buf.writeUInt32BE(payload.length, 12);
  payload.copy(buf, OPTION_HEADER_SIZE);
  return buf;
}

export function decodeOptionHeader(buf: Buffer, off = 0): OptionHeader | null {
  if (buf.length - off < OPTION_HEADER_SIZE) return null;
  return {
    magic: buf.readBigUInt64BE(off),
    option: buf.readUInt32BE(off + 8),
    length: buf.readUInt32BE(off + 12),
  };
}

/** Payload of NBD_OPT_INFO and NBD_OPT_GO. */
export interface InfoRequest {
  name: string;
  requests: number[];
}

export function encodeInfoRequest(req: InfoRequest): Buffer {
  const name = Buffer.from(req.name, 'utf8');
  const buf = Buffer.alloc(4 + name.length + 2 + 2 * req.requests.length);
  buf.writeUInt32BE(name.length, 0);
  name.copy(buf, 4);
  let p = 4 + name.length;
  buf.writeUInt16BE(req.requests.length, p);
  p += 2;
  for (const r of req.requests) {
    buf.writeUInt16BE(r, p);
    p += 2;
  }
  return buf;
}

export function decodeInfoRequest(payload: Buffer): InfoRequest | Malformed {
  if (payload.length < 6) return { malformed: 'option data shorter than 6 bytes' };
  const nameLength = payload.readUInt32BE(0);
  if (nameLength > payload.length - 6) return { malformed: 'export name length exceeds option data' };
  if (nameLength > MAX_STRING) return { malformed: 'export name longer than 4096 bytes' };
  const name = payload.toString('utf8', 4, 4 + nameLength);
  let p = 4 + nameLength;
  const count = payload.readUInt16BE(p);
  p += 2;
  if (payload.length - p !== 2 * count) {
    return { malformed: `option data holds ${payload.length - p} bytes for ${count} information requests` };
  }
  const requests: number[] = [];
  for (let i = 0; i < count; i++, p += 2) requests.push(payload.readUInt16BE(p));
  return { name, requests };
}

/** Payload of NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT. */
export interface MetaContextRequest {
  name: string;
  queries: string[];
}

export function encodeMetaContextRequest(req: MetaContextRequest): Buffer {
  const name = Buffer.from(req.name, 'utf8');
  const queries = req.queries.map((q) => Buffer.from(q, 'utf8'));
  const size = 8 + name.length + queries.reduce((n, q) => n + 4 + q.length, 0);
  const buf = Buffer.alloc(size);
  buf.writeUInt32BE(name.length, 0);
  name.copy(buf, 4);
  let p = 4 + name.length;
  buf.writeUInt32BE(queries.length, p);
  p += 4;
  for (const q of queries) {
    buf.writeUInt32BE(q.length, p);
    q.copy(buf, p + 4);
    p += 4 + q.length;
  }
  return buf;
}

export function decodeMetaContextRequest(payload: Buffer): MetaContextRequest | Malformed {
  if (payload.length < 8) return { malformed: 'option data shorter than 8 bytes' };
  const nameLength = payload.readUInt32BE(0);
  if (nameLength > payload.length - 8) return { malformed: 'export name length exceeds option data' };
  if (nameLength > MAX_STRING) return { malformed: 'export name longer than 4096 bytes' };
  const name = payload.toString('utf8', 4, 4 + nameLength);
  let p = 4 + nameLength;
  const count = payload.readUInt32BE(p);
  p += 4;
  // Each query needs at least its 4-byte length, so a count beyond that is a lie.
  if (count > (payload.length - p) / 4) return { malformed: `${count} queries cannot fit in the option data` };
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (payload.length - p < 4) return { malformed: `query ${i} is truncated` };
    const length = payload.readUInt32BE(p);
    p += 4;
    if (length > payload.length - p) return { malformed: `query ${i} length exceeds option data` };
    if (length > MAX_STRING) return { malformed: `query ${i} longer than 4096 bytes` };
    queries.push(payload.toString('utf8', p, p + length));
    p += length;
  }
  if (p !== payload.length) return { malformed: `${payload.length - p} stray bytes after the queries` };
  return { name, queries };
}

// --- option replies -------------------------------------------------------

export interface OptionReplyHeader {
  magic: bigint;
  option: number;
  type: number;
  length: number;
}

export function encodeOptionReply(option: number, type: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const buf = Buffer.alloc(OPTION_REPLY_HEADER_SIZE + payload.length);
  buf.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  buf.writeUInt32BE(option >>> 0, 8);
  buf.writeUInt32BE(type >>> 0, 12);
  buf.writeUInt32BE(payload.length, 16);
  payload.copy(buf, OPTION_REPLY_HEADER_SIZE);
  return buf;
}

export function decodeOptionReplyHeader(buf: Buffer, off = 0): OptionReplyHeader | null {
  if (buf.length - off < OPTION_REPLY_HEADER_SIZE) return null;
  return {
    magic: buf.readBigUInt64BE(off),
    option: buf.readUInt32BE(off + 8),
    type: buf.readUInt32BE(off + 12),
    length: buf.readUInt32BE(off + 16),
  };
}

/** NBD_REP_SERVER payload: a name and optional human-readable details. */
export interface ServerReply {
  name: string;
  details: string;
}

export function encodeServerReply(reply: ServerReply): Buffer {
  const name = Buffer.from(reply.name, 'utf8');
  const details = Buffer.from(reply.details, 'utf8');
  const buf = Buffer.alloc(4 + name.length + details.length);
  buf.writeUInt32BE(name.length, 0);
  name.copy(buf, 4);
  details.copy(buf, 4 + name.length);
  return buf;
}

export function decodeServerReply(payload: Buffer): ServerReply | Malformed {
  if (payload.length < 4) return { malformed: 'NBD_REP_SERVER shorter than 4 bytes' };
  const nameLength = payload.readUInt32BE(0);
  if (nameLength > payload.length - 4) return { malformed: 'NBD_REP_SERVER name length exceeds reply' };
  return {
    name: payload.toString('utf8', 4, 4 + nameLength),
    details: payload.toString('utf8', 4 + nameLength),
  };
}

/** NBD_REP_INFO payloads. */
export type InfoReply =
  | { type: typeof INFO.EXPORT; size: number; flags: number }
  | { type: typeof INFO.NAME; name: string }
  | { type: typeof INFO.DESCRIPTION; description: string }
  | { type: typeof INFO.BLOCK_SIZE; minimum: number; preferred: number; maximum: number }
  | { type: number; unknown: Buffer };

export function encodeInfoReply(info: InfoReply): Buffer {
  if ('size' in info) {
    const buf = Buffer.alloc(12);
    buf.writeUInt16BE(INFO.EXPORT, 0);
    writeU64(buf, 2, info.size);
    buf.writeUInt16BE(info.flags, 10);
    return buf;
  }
  if ('minimum' in info) {
    const buf = Buffer.alloc(14);
    buf.writeUInt16BE(INFO.BLOCK_SIZE, 0);
    buf.writeUInt32BE(info.minimum, 2);
    buf.writeUInt32BE(info.preferred, 6);
    buf.writeUInt32BE(info.maximum, 10);
    return buf;
  }
  const text = 'name' in info ? info.name : 'description' in info ? info.description : null;
  const body = text === null ? (info as { unknown: Buffer }).unknown : Buffer.from(text, 'utf8');
  const buf = Buffer.alloc(2 + body.length);
  buf.writeUInt16BE(info.type, 0);
  body.copy(buf, 2);
  return buf;
}

export function decodeInfoReply(payload: Buffer): InfoReply | Malformed {
  if (payload.length < 2) return { malformed: 'NBD_REP_INFO shorter than 2 bytes' };
  const type = payload.readUInt16BE(0);
  switch (type) {
    case INFO.EXPORT:
      if (payload.length !== 12) return { malformed: `NBD_INFO_EXPORT of ${payload.length} bytes, not 12` };
      return { type, size: readU64(payload, 2), flags: payload.readUInt16BE(10) };
    case INFO.BLOCK_SIZE:
      if (payload.length !== 14) return { malformed: `NBD_INFO_BLOCK_SIZE of ${payload.length} bytes, not 14` };
      return {
        type,
        minimum: payload.readUInt32BE(2),
        preferred: payload.readUInt32BE(6),
        maximum: payload.readUInt32BE(10),
      };
    case INFO.NAME:
      return { type, name: payload.toString('utf8', 2) };
    case INFO.DESCRIPTION:
      return { type, description: payload.toString('utf8', 2) };
    default:
      return { type, unknown: payload.subarray(2) };
  }
}

/** NBD_REP_META_CONTEXT payload. */
export interface MetaContextReply {
  id: number;
  name: string;
}

export function encodeMetaContextReply(reply: MetaContextReply): Buffer {
  const name = Buffer.from(reply.name, 'utf8');
  const buf = Buffer.alloc(4 + name.length);
  buf.writeUInt32BE(reply.id >>> 0, 0);
  name.copy(buf, 4);
  return buf;
}

export function decodeMetaContextReply(payload: Buffer): MetaContextReply | Malformed {
  if (payload.length < 4) return { malformed: 'NBD_REP_META_CONTEXT shorter than 4 bytes' };
  return { id: payload.readUInt32BE(0), name: payload.toString('utf8', 4) };
}

// --- the reply that ends NBD_OPT_EXPORT_NAME --------------------------------

export interface ExportNameReply {
  size: number;
  flags: number;
}

export function encodeExportNameReply(reply: ExportNameReply, noZeroes: boolean): Buffer {
  const buf = Buffer.alloc(EXPORT_NAME_REPLY_SIZE + (noZeroes ? 0 : EXPORT_NAME_PADDING));
  writeU64(buf, 0, reply.size);
  buf.writeUInt16BE(reply.flags, 8);
  return buf;
}

export function decodeExportNameReply(buf: Buffer, off = 0): ExportNameReply | null {
  if (buf.length - off < EXPORT_NAME_REPLY_SIZE) return null;
  return { size: readU64(buf, off), flags: buf.readUInt16BE(off + 8) };
}
