// Builds the replies of the transmission phase from device results. Each
// builder returns the frames to send as [header, payload?] pairs so the
// caller can hand large read data to the socket without copying it into
// the header buffer. Pure functions: no sockets here.

import type { Extent, ReadSegment } from '../../device/types.js';
import { CHUNK, CHUNK_HEADER_SIZE, REPLY_FLAG_DONE, SIMPLE_REPLY_SIZE, STATE_HOLE, STATE_ZERO } from './constants.js';
import type { MetaContext } from './handshake.js';
import { limitedString } from './strings.js';
import {
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

/** base:allocation flags of an extent. */
export function allocationFlags(e: Extent): number {
  return (e.hole ? STATE_HOLE : 0) | (e.zero ? STATE_ZERO : 0);
}

/** One BLOCK_STATUS chunk per selected context; the last one carries DONE. */
export function blockStatusChunks(cookie: bigint, contexts: MetaContext[], extents: Extent[]): Frame[] {
  const descriptors = extents.map((e) => ({ length: e.length, flags: allocationFlags(e) }));
  const size = blockStatusSize(descriptors.length);
  return contexts.map((c, i) => {
    const buf = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + size);
    const flags = i === contexts.length - 1 ? REPLY_FLAG_DONE : 0;
    const p = encodeChunkHeader(buf, 0, flags, CHUNK.BLOCK_STATUS, cookie, size);
    encodeBlockStatus(buf, p, c.id, descriptors);
    return [buf];
  });
}
