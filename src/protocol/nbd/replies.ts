// Builds the replies of the transmission phase from device results. Each
// builder returns the frames to send as [header, payload?] pairs so the
// caller can hand large read data to the socket without copying it into
// the header buffer. Pure functions: no sockets here.
//
// Chunks go out with the 20-byte structured header, or with the 32-byte
// extended header (which echoes the request's offset) once
// NBD_OPT_EXTENDED_HEADERS was agreed; then block status uses
// BLOCK_STATUS_EXT with 64-bit lengths. BLOCK_STATUS descriptors of the
// compact form are cut so their total stays below 2^32.

import type { DirtyRun } from '../../device/dirty-bitmap.js';
import type { Extent, ReadSegment } from '../../device/types.js';
import { CHUNK, CHUNK_HEADER_SIZE, EXTENDED_REPLY_SIZE, META_ALLOCATION_DEPTH, META_DIRTY_BITMAP, REPLY_FLAG_DONE, SIMPLE_REPLY_SIZE, STATE_DIRTY, STATE_HOLE, STATE_ZERO } from './constants.js';
import type { MetaContext } from './handshake.js';
import { limitedString } from './strings.js';
import {
  type BlockDescriptor,
  blockStatusExtSize,
  blockStatusSize,
  encodeBlockStatus,
  encodeBlockStatusExt,
  encodeChunkHeader,
  encodeExtendedReplyHeader,
  encodeErrorPayload,
  encodeOffsetDataPrefix,
  encodeOffsetHole,
  encodeSimpleReply,
  errorPayloadSize,
  OFFSET_DATA_PREFIX,
  OFFSET_HOLE_SIZE,
} from './transmission-codec.js';

export type Frame = [Buffer, Buffer?];

export function simpleReply(cookie: bigint, error: number, data?: Buffer): Frame {
  const header = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
  encodeSimpleReply(header, 0, error, cookie);
  return [header, data];
}

/** The request a chunk answers: its cookie and, echoed by extended headers, its offset. */
export interface ReplyTo {
  cookie: bigint;
  /** Exact: a bigint where a number cannot hold it. */
  offset: number | bigint;
  extended: boolean;
}

/** A buffer for a chunk header and `payload` bytes after it, the header written; returns where the payload goes. */
function chunk(to: ReplyTo, flags: number, type: number, length: number, payload = length): [Buffer, number] {
  const buf = Buffer.allocUnsafe((to.extended ? EXTENDED_REPLY_SIZE : CHUNK_HEADER_SIZE) + payload);
  const p = to.extended
    ? encodeExtendedReplyHeader(buf, 0, flags, type, to.cookie, to.offset, length)
    : encodeChunkHeader(buf, 0, flags, type, to.cookie, length);
  return [buf, p];
}

export function errorChunk(to: ReplyTo, error: number, message: string): Frame {
  const msg = limitedString(message);
  const [buf, p] = chunk(to, REPLY_FLAG_DONE, CHUNK.ERROR, errorPayloadSize(msg.length));
  encodeErrorPayload(buf, p, error, msg);
  return [buf];
}

export function noneChunk(to: ReplyTo): Frame {
  return [chunk(to, REPLY_FLAG_DONE, CHUNK.NONE, 0)[0]];
}

/**
 * OFFSET_DATA and OFFSET_HOLE chunks for a read; the last one carries DONE.
 * A segment whose bytes are in a file (`file`) gets its chunk header
 * alone: the caller sends the bytes after it.
 */
export function readChunks(to: ReplyTo, segments: ReadSegment[]): Frame[] {
  if (segments.length === 0) return [noneChunk(to)];
  return segments.map((s, i) => {
    const flags = i === segments.length - 1 ? REPLY_FLAG_DONE : 0;
    if (s.data || s.file) {
      const [header, p] = chunk(to, flags, CHUNK.OFFSET_DATA, OFFSET_DATA_PREFIX + s.length, OFFSET_DATA_PREFIX);
      encodeOffsetDataPrefix(header, p, s.offset);
      return s.data ? [header, s.data] : [header];
    }
    const [buf, p] = chunk(to, flags, CHUNK.OFFSET_HOLE, OFFSET_HOLE_SIZE);
    encodeOffsetHole(buf, p, s.offset, s.length);
    return [buf];
  });
}

/** The status value an extent has in a meta context. */
export function contextStatus(context: string, e: Extent): number {
  if (context === META_ALLOCATION_DEPTH) return e.depth ?? 1;
  return (e.hole ? STATE_HOLE : 0) | (e.zero ? STATE_ZERO : 0);
}

/** Descriptors for one context, neighbours with the same status joined. */
function descriptors(context: string, extents: Extent[]): BlockDescriptor[] {
  const out: BlockDescriptor[] = [];
  for (const e of extents) {
    const flags = contextStatus(context, e);
    const last = out[out.length - 1];
    if (last && last.flags === flags) last.length += e.length;
    else out.push({ length: e.length, flags });
  }
  return out;
}

/** The bitmap a qemu:dirty-bitmap:NAME context names, or null for another context. */
export function dirtyBitmapOf(context: string): string | null {
  return context.startsWith(META_DIRTY_BITMAP) ? context.slice(META_DIRTY_BITMAP.length) : null;
}

/** The largest 512-aligned length a 32-bit descriptor holds. */
const MAX_COMPACT_EXTENT = 2 ** 32 - 512;

/**
 * Descriptors that fit the 32-bit BLOCK_STATUS: the list is cut where the
 * total would reach 2^32 (the server may describe less than was asked).
 */
function compact(list: BlockDescriptor[]): BlockDescriptor[] {
  const out: BlockDescriptor[] = [];
  let total = 0;
  for (const d of list) {
    const room = MAX_COMPACT_EXTENT - total;
    if (d.length > room) {
      if (room >= 512) out.push({ length: room, flags: d.flags });
      break;
    }
    out.push(d);
    total += d.length;
  }
  return out;
}

/**
 * One BLOCK_STATUS (BLOCK_STATUS_EXT with extended headers) chunk per
 * selected context; the last one carries DONE. Allocation contexts come
 * from `extents`, a dirty-bitmap context from its runs in `dirty` (by
 * context id).
 */
export function blockStatusChunks(to: ReplyTo, contexts: MetaContext[], extents: Extent[], dirty?: Map<number, DirtyRun[]>): Frame[] {
  return contexts.map((c, i) => {
    const runs = dirty?.get(c.id);
    const list = runs ? runs.map((r) => ({ length: r.length, flags: r.dirty ? STATE_DIRTY : 0 })) : descriptors(c.name, extents);
    const flags = i === contexts.length - 1 ? REPLY_FLAG_DONE : 0;
    if (to.extended) {
      const [buf, p] = chunk(to, flags, CHUNK.BLOCK_STATUS_EXT, blockStatusExtSize(list.length));
      encodeBlockStatusExt(buf, p, c.id, list);
      return [buf];
    }
    const fitted = compact(list);
    const [buf, p] = chunk(to, flags, CHUNK.BLOCK_STATUS, blockStatusSize(fitted.length));
    encodeBlockStatus(buf, p, c.id, fitted);
    return [buf];
  });
}
