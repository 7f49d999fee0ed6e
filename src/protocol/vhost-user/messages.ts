// Pure encoders and decoders of vhost-user messages, both directions, so
// the back end, the test front ends and fuzzers share one definition of
// the wire. A message is a 12-byte little-endian header {request, flags,
// size} and `size` bytes of payload; file descriptors travel beside it
// and are not the codec's business. decodeHeader and decodeMessage answer
// null until all bytes are there; payload decoders take exactly the
// payload and answer { malformed } for a size or value the spec does not
// allow. No decoder throws, whatever the bytes. 64-bit fields are bigints,
// so every value round-trips exactly; the back end decides which of them
// fit a JavaScript number.

import type { Malformed } from '../nbd/handshake-codec.js';
import {
  CONFIG_HEADER_SIZE,
  FLAG_REPLY,
  HEADER_SIZE,
  INFLIGHT_PACKED_SIZE,
  INFLIGHT_SIZE,
  MAX_CONFIG_SIZE,
  MAX_PAYLOAD_SIZE,
  MEMORY_REGION_SIZE,
  MEMORY_TABLE_MAX_REGIONS,
  VERSION,
  VERSION_MASK,
  VRING_INDEX_MASK,
  VRING_NO_FD,
} from './constants.js';

export type { Malformed };

/** Like the NBD codec's guard, but for decoders that answer a bigint or a number too. */
export function isMalformed<T>(v: T | Malformed): v is Malformed {
  return typeof v === 'object' && v !== null && 'malformed' in v;
}

// --- header and framing ---------------------------------------------------

export interface MessageHeader {
  request: number;
  flags: number;
  size: number;
}

/**
 * The header at `off`: null when fewer than 12 bytes are there; malformed
 * when the version is not 1 or the payload is larger than any message
 * (either way the stream cannot be trusted any further).
 */
export function decodeHeader(buf: Buffer, off = 0): MessageHeader | Malformed | null {
  if (buf.length - off < HEADER_SIZE) return null;
  const header = { request: buf.readUInt32LE(off), flags: buf.readUInt32LE(off + 4), size: buf.readUInt32LE(off + 8) };
  if ((header.flags & VERSION_MASK) !== VERSION) {
    return { malformed: `header version ${header.flags & VERSION_MASK} (flags 0x${header.flags.toString(16)}), not 1` };
  }
  if (header.size > MAX_PAYLOAD_SIZE) return { malformed: `payload of ${header.size} bytes is larger than any message` };
  return header;
}

export interface Message {
  header: MessageHeader;
  /** A view of the payload inside the buffer given. */
  payload: Buffer;
}

/** A whole message at `off` (header and payload), or null until all of it is there. */
export function decodeMessage(buf: Buffer, off = 0): Message | Malformed | null {
  const header = decodeHeader(buf, off);
  if (header === null || 'malformed' in header) return header;
  const start = off + HEADER_SIZE;
  if (buf.length - start < header.size) return null;
  return { header, payload: buf.subarray(start, start + header.size) };
}

export function encodeMessage(request: number, flags: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const buf = Buffer.alloc(HEADER_SIZE + payload.length);
  buf.writeUInt32LE(request >>> 0, 0);
  buf.writeUInt32LE(flags >>> 0, 4);
  buf.writeUInt32LE(payload.length, 8);
  payload.copy(buf, HEADER_SIZE);
  return buf;
}

/** A back-end reply: version 1 with the REPLY flag. */
export function encodeReply(request: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  return encodeMessage(request, VERSION | FLAG_REPLY, payload);
}

function sizeIs(payload: Buffer, size: number, what: string): Malformed | null {
  return payload.length === size ? null : { malformed: `${what} of ${payload.length} bytes, not ${size}` };
}

// --- a single u64 (features, protocol features, queue num, slots, acks) ---

export function encodeU64(value: bigint): Buffer {
  const buf = Buffer.alloc(8);
  buf.writeBigUInt64LE(BigInt.asUintN(64, value), 0);
  return buf;
}

export function decodeU64(payload: Buffer): bigint | Malformed {
  return sizeIs(payload, 8, 'u64 payload') ?? payload.readBigUInt64LE(0);
}

// --- vring state {index, num}: NUM, BASE, GET_VRING_BASE, ENABLE ---------

export interface VringState {
  index: number;
  num: number;
}

export function encodeVringState(state: VringState): Buffer {
  const buf = Buffer.alloc(8);
  buf.writeUInt32LE(state.index >>> 0, 0);
  buf.writeUInt32LE(state.num >>> 0, 4);
  return buf;
}

export function decodeVringState(payload: Buffer): VringState | Malformed {
  return sizeIs(payload, 8, 'vring state') ?? { index: payload.readUInt32LE(0), num: payload.readUInt32LE(4) };
}

// --- vring address: SET_VRING_ADDR -----------------------------------------

/** Ring addresses are front-end user (virtual) addresses; log is guest-physical. */
export interface VringAddress {
  index: number;
  flags: number;
  descriptor: bigint;
  used: bigint;
  available: bigint;
  log: bigint;
}

const VRING_ADDRESS_SIZE = 40;

export function encodeVringAddress(a: VringAddress): Buffer {
  const buf = Buffer.alloc(VRING_ADDRESS_SIZE);
  buf.writeUInt32LE(a.index >>> 0, 0);
  buf.writeUInt32LE(a.flags >>> 0, 4);
  buf.writeBigUInt64LE(a.descriptor, 8);
  buf.writeBigUInt64LE(a.used, 16);
  buf.writeBigUInt64LE(a.available, 24);
  buf.writeBigUInt64LE(a.log, 32);
  return buf;
}

export function decodeVringAddress(payload: Buffer): VringAddress | Malformed {
  return (
    sizeIs(payload, VRING_ADDRESS_SIZE, 'vring address') ?? {
      index: payload.readUInt32LE(0),
      flags: payload.readUInt32LE(4),
      descriptor: payload.readBigUInt64LE(8),
      used: payload.readBigUInt64LE(16),
      available: payload.readBigUInt64LE(24),
      log: payload.readBigUInt64LE(32),
    }
  );
}

// --- memory regions: SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG ------------

export interface MemoryRegion {
  guestAddress: bigint;
  size: bigint;
  userAddress: bigint;
  mmapOffset: bigint;
}

function writeRegion(buf: Buffer, off: number, r: MemoryRegion): void {
  buf.writeBigUInt64LE(r.guestAddress, off);
  buf.writeBigUInt64LE(r.size, off + 8);
  buf.writeBigUInt64LE(r.userAddress, off + 16);
  buf.writeBigUInt64LE(r.mmapOffset, off + 24);
}

function readRegion(buf: Buffer, off: number): MemoryRegion {
  return {
    guestAddress: buf.readBigUInt64LE(off),
    size: buf.readBigUInt64LE(off + 8),
    userAddress: buf.readBigUInt64LE(off + 16),
    mmapOffset: buf.readBigUInt64LE(off + 24),
  };
}

/**
 * {nregions u32, padding u32, regions}. QEMU sends only the regions in use
 * (8 + 32 n bytes); some front ends send the whole array of 8, which is
 * accepted too.
 */
export function encodeMemoryTable(regions: MemoryRegion[], wholeArray = false): Buffer {
  const slots = wholeArray ? MEMORY_TABLE_MAX_REGIONS : regions.length;
  const buf = Buffer.alloc(8 + MEMORY_REGION_SIZE * slots);
  buf.writeUInt32LE(regions.length, 0);
  regions.forEach((r, i) => writeRegion(buf, 8 + MEMORY_REGION_SIZE * i, r));
  return buf;
}

export function decodeMemoryTable(payload: Buffer): MemoryRegion[] | Malformed {
  if (payload.length < 8) return { malformed: `memory table of ${payload.length} bytes, shorter than its 8-byte count` };
  const count = payload.readUInt32LE(0);
  if (count > MEMORY_TABLE_MAX_REGIONS) return { malformed: `memory table of ${count} regions, more than ${MEMORY_TABLE_MAX_REGIONS}` };
  const exact = 8 + MEMORY_REGION_SIZE * count;
  const whole = 8 + MEMORY_REGION_SIZE * MEMORY_TABLE_MAX_REGIONS;
  if (payload.length !== exact && payload.length !== whole) {
    return { malformed: `memory table of ${count} regions in ${payload.length} bytes, not ${exact} or ${whole}` };
  }
  return Array.from({ length: count }, (_, i) => readRegion(payload, 8 + MEMORY_REGION_SIZE * i));
}

const SINGLE_REGION_SIZE = 8 + MEMORY_REGION_SIZE;

/** {padding u64, region}: ADD_MEM_REG and REM_MEM_REG. */
export function encodeSingleRegion(region: MemoryRegion): Buffer {
  const buf = Buffer.alloc(SINGLE_REGION_SIZE);
  writeRegion(buf, 8, region);
  return buf;
}

export function decodeSingleRegion(payload: Buffer): MemoryRegion | Malformed {
  return sizeIs(payload, SINGLE_REGION_SIZE, 'memory region') ?? readRegion(payload, 8);
}

// --- config space: GET_CONFIG, SET_CONFIG ---------------------------------

export interface ConfigAccess {
  offset: number;
  /** The config bytes; its length is the message's size field. */
  data: Buffer;
  flags: number;
}

export function encodeConfig(c: ConfigAccess): Buffer {
  const buf = Buffer.alloc(CONFIG_HEADER_SIZE + c.data.length);
  buf.writeUInt32LE(c.offset >>> 0, 0);
  buf.writeUInt32LE(c.data.length, 4);
  buf.writeUInt32LE(c.flags >>> 0, 8);
  c.data.copy(buf, CONFIG_HEADER_SIZE);
  return buf;
}

export function decodeConfig(payload: Buffer): ConfigAccess | Malformed {
  if (payload.length < CONFIG_HEADER_SIZE) return { malformed: `config message of ${payload.length} bytes, shorter than its header` };
  const size = payload.readUInt32LE(4);
  if (size > MAX_CONFIG_SIZE) return { malformed: `config access of ${size} bytes, more than ${MAX_CONFIG_SIZE}` };
  if (payload.length !== CONFIG_HEADER_SIZE + size) {
    return { malformed: `config access of ${size} bytes in a payload of ${payload.length}, not ${CONFIG_HEADER_SIZE + size}` };
  }
  return { offset: payload.readUInt32LE(0), flags: payload.readUInt32LE(8), data: payload.subarray(CONFIG_HEADER_SIZE) };
}

// --- inflight area: GET_INFLIGHT_FD, SET_INFLIGHT_FD -----------------------

export interface Inflight {
  mmapSize: bigint;
  mmapOffset: bigint;
  numQueues: number;
  queueSize: number;
}

/** Always 24 bytes, the size QEMU sends and checks in a reply. */
export function encodeInflight(i: Inflight): Buffer {
  const buf = Buffer.alloc(INFLIGHT_SIZE);
  buf.writeBigUInt64LE(i.mmapSize, 0);
  buf.writeBigUInt64LE(i.mmapOffset, 8);
  buf.writeUInt16LE(i.numQueues & 0xffff, 16);
  buf.writeUInt16LE(i.queueSize & 0xffff, 18);
  return buf;
}

/** 24 bytes (QEMU's padded struct) or the 20 packed ones. */
export function decodeInflight(payload: Buffer): Inflight | Malformed {
  if (payload.length !== INFLIGHT_SIZE && payload.length !== INFLIGHT_PACKED_SIZE) {
    return { malformed: `inflight description of ${payload.length} bytes, not ${INFLIGHT_SIZE} or ${INFLIGHT_PACKED_SIZE}` };
  }
  return {
    mmapSize: payload.readBigUInt64LE(0),
    mmapOffset: payload.readBigUInt64LE(8),
    numQueues: payload.readUInt16LE(16),
    queueSize: payload.readUInt16LE(18),
  };
}

// --- ring file: SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR --------------

/** A u64 with the ring index in bits 0-7 and bit 8 set when no fd comes with it. */
export interface VringFile {
  index: number;
  noFd: boolean;
}

export function encodeVringFile(f: VringFile): Buffer {
  return encodeU64((BigInt(f.index) & VRING_INDEX_MASK) | (f.noFd ? VRING_NO_FD : 0n));
}

export function decodeVringFile(payload: Buffer): VringFile | Malformed {
  const value = decodeU64(payload);
  if (typeof value !== 'bigint') return value;
  const unknown = value & ~(VRING_INDEX_MASK | VRING_NO_FD);
  if (unknown !== 0n) return { malformed: `ring file value 0x${value.toString(16)} has bits other than the index and no-fd flag` };
  return { index: Number(value & VRING_INDEX_MASK), noFd: (value & VRING_NO_FD) !== 0n };
}

// --- device status: SET_STATUS, GET_STATUS ---------------------------------

/** The spec's u64 (what QEMU sends and expects back). */
export function encodeStatus(status: number): Buffer {
  return encodeU64(BigInt(status & 0xff));
}

/** A u64, or a single byte; the value is a virtio status byte. */
export function decodeStatus(payload: Buffer): number | Malformed {
  if (payload.length === 1) return payload[0]!;
  const value = decodeU64(payload);
  if (typeof value !== 'bigint') return { malformed: `status of ${payload.length} bytes, not 8 or 1` };
  if (value > 0xffn) return { malformed: `status 0x${value.toString(16)} is not a status byte` };
  return Number(value);
}
