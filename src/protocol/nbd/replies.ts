// Builds the replies of the transmission phase from device results. Each
// builder returns the frames to send as [header, payload?] pairs so the
// caller can hand large read data to the socket without copying it into
// the header buffer. Pure functions: no sockets here.

import type { DirtyRun } from '../../device/dirty-bitmap.js';
import type { Extent, ReadSegment } from '../../device/types.js';
import { CHUNK, CHUNK_HEADER_SIZE, META_ALLOCATION_DEPTH, META_DIRTY_BITMAP, REPLY_FLAG_DONE, SIMPLE_REPLY_SIZE, STATE_DIRTY, STATE_HOLE, STATE_ZERO } from './constants.js';
import type { MetaContext } from './handshake.js';
import { limitedString } from './strings.js';
import {
  type BlockDescriptor,
  blockStatusSize,
  encodeBlockStatus,
  encodeChunkHeader,
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

export function errorChunk(cookie: bigint, error: number, message: string): Frame {
  const msg = limitedString(message);
  const size = errorPayloadSize(msg.length);
  const buf = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + size);
  const p = encodeChunkHeader(buf, 0, REPLY_FLAG_DONE, CHUNK.ERROR, cookie, size);
  encodeErrorPayload(buf, p, error, msg);
  return [buf];
}

export function noneChunk(cookie: bigint): Frame {
  const buf = Buffer.allocUnsafe(CHUNK_HEADER_SIZE);
  encodeChunkHeader(buf, 0, REPLY_FLAG_DONE, CHUNK.NONE, cookie, 0);
  return [buf];
}

/** OFFSET_DATA and OFFSET_HOLE chunks for a read; the last one carries DONE. */
export function readChunks(cookie: bigint, segments: ReadSegment[]): Frame[] {
  if (segments.length === 0) return [noneChunk(cookie)];
  return segments.map((s, i) => {
    const flags = i === segments.length - 1 ? REPLY_FLAG_DONE : 0;
    if (s.data) {
      const header = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + OFFSET_DATA_PREFIX);
      const p = encodeChunkHeader(header, 0, flags, CHUNK.OFFSET_DATA, cookie, OFFSET_DATA_PREFIX + s.length);
      encodeOffsetDataPrefix(header, p, s.offset);
      return [header, s.data];
    }
    const buf = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + OFFSET_HOLE_SIZE);
    const p = encodeChunkHeader(buf, 0, flags, CHUNK.OFFSET_HOLE, cookie, OFFSET_HOLE_SIZE);
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

/**
 * One BLOCK_STATUS chunk per selected context; the last one carries DONE.
 * Allocation contexts come from `extents`, a dirty-bitmap context from its
 * runs in `dirty` (by context id).
 */
export function blockStatusChunks(cookie: bigint, contexts: MetaContext[], extents: Extent[], dirty?: Map<number, DirtyRun[]>): Frame[] {
  return contexts.map((c, i) => {
    const runs = dirty?.get(c.id);
    const list = runs ? runs.map((r) => ({ length: r.length, flags: r.dirty ? STATE_DIRTY : 0 })) : descriptors(c.name, extents);
    const size = blockStatusSize(list.length);
    const buf = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + size);
    const flags = i === contexts.length - 1 ? REPLY_FLAG_DONE : 0;
    const p = encodeChunkHeader(buf, 0, flags, CHUNK.BLOCK_STATUS, cookie, size);
    encodeBlockStatus(buf, p, c.id, list);
    return [buf];
  });
}
