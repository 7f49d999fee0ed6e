// The virtio-blk request model (virtio 1.2, "Block Device / Device
// Operation"): a popped chain becomes device Requests to run, or an
// answer given on the spot, or a reset.
//
// A request is a 16-byte header {u32 type, u32 reserved, u64 sector} in
// the device-readable bytes (split across descriptors as the driver
// likes), then data, then one status byte: the last device-writable byte.
// IN data is the device-writable bytes before the status, OUT data (and
// the DISCARD / WRITE_ZEROES segments) the device-readable bytes after
// the header; the data stays in guest memory and reaches the device as
// `into` (IN) or `from` (OUT) views.
//
// Which answer, and why:
//  - No device-writable byte: there is nowhere to put a status, so the
//    request cannot be completed; the device needs reset (as QEMU does).
//  - A malformed chain (see virtqueue.ts), a header shorter than 16 bytes,
//    data on the wrong side (device-readable data in an IN, device-
//    writable data in an OUT, DISCARD or WRITE_ZEROES), IN/OUT lengths not
//    a multiple of 512, segment tables not a multiple of 16 bytes or with
//    more segments or sectors than the config space allows, ranges past
//    the capacity, and any write to a read-only device: IOERR, "for device
//    or driver error"; the spec asks for IOERR on RO writes in so many
//    words.
//  - Types this device does not do (GET_LIFETIME, SECURE_ERASE, zoned
//    and unknown ones), DISCARD / WRITE_ZEROES when not offered, unknown
//    segment flags, UNMAP on a DISCARD: UNSUPP, as the spec asks.
//  - FLUSH is always run (with or without the feature a flush is safe);
//    its sector and any data are ignored. GET_ID is answered here: the id
//    as far as the buffer reaches, NUL-padded to 20 bytes.
// seg_max and size_max are hints for the driver and are not enforced: the
// data is guest memory either way, so a longer list costs the device
// nothing it has to allocate.
//
// The used length is always every device-writable byte of the chain: the
// status byte is the last of them, and a driver may only trust bytes
// within the used length. An underestimate would hide the status; an
// overestimate only covers the guest's own buffer, which a failed read
// leaves as it was. The used element's length is a u32, so a chain with
// more device-writable bytes than that (only a malformed one, or one of
// exactly 2^32 bytes) reports 2^32 - 1: its status lies past what any
// length could report anyway.

import { request, type Request } from '../../device/types.js';
import type { BlkSettings } from './blk-config.js';
import { gatherViews, scatterToViews, sliceViews } from './iov.js';
import {
  VIRTIO_BLK_DWZ_SEGMENT_SIZE,
  VIRTIO_BLK_HEADER_SIZE,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_S,
  VIRTIO_BLK_SECTOR_SIZE,
  VIRTIO_BLK_T,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
} from './virtio-constants.js';
import type { Chain, MalformedChain } from './virtqueue.js';

export type BlkAction =
  /** Run the requests, then write the status byte (OK, or virtioStatus of the error) and push. */
  | { kind: 'submit'; head: number; requests: Request[]; status: Buffer; usedLength: number }
  /** Answered already: the status byte (and GET_ID's data) is written; push. */
  | { kind: 'complete'; head: number; status: number; reason: string | null; usedLength: number }
  /** The request cannot be answered: the device needs reset. */
  | { kind: 'reset'; head: number; reason: string };

/** A status to answer with at once. */
type Verdict = { status: number; reason: string | null };
type Answer = Verdict | Request[];

const SECTOR = VIRTIO_BLK_SECTOR_SIZE;
/** Sectors at or above 2^44 lie past any capacity a Number can hold in bytes. */
const SECTOR_HIGH_WORD_LIMIT = 0x1000;

function ioerr(reason: string): Verdict {
  return { status: VIRTIO_BLK_S.IOERR, reason };
}

function unsupp(reason: string): Verdict {
  return { status: VIRTIO_BLK_S.UNSUPP, reason };
}

/** The byte offset of [sector, + length), or a reason it lies outside the device. */
function rangeOffset(lo: number, hi: number, length: number, capacity: number): number | string {
  const capSectors = Math.floor(capacity / SECTOR);
  const sector = hi >= SECTOR_HIGH_WORD_LIMIT ? Infinity : hi * 2 ** 32 + lo;
  if (sector > capSectors || sector * SECTOR + length > capSectors * SECTOR) {
    return `sectors ${hi * 2 ** 32 + lo} + ${length} bytes go past the capacity of ${capSectors} sectors`;
  }
  return sector * SECTOR;
}

/** The largest length a used element holds. */
const MAX_USED_LENGTH = 0xffffffff;

export function blkAction(chain: Chain | MalformedChain, s: BlkSettings): BlkAction {
  const { head, writableLength } = chain;
  const usedLength = Math.min(writableLength, MAX_USED_LENGTH);
  if (chain.kind === 'malformed') {
    const status = chain.lastWritableByte;
    if (!status) return { kind: 'reset', head, reason: `${chain.reason}, and no status byte maps` };
    return complete(head, status, ioerr(chain.reason), usedLength);
  }
  const readable: Buffer[] = [];
  const writable: Buffer[] = [];
  for (const seg of chain.segments) (seg.writable ? writable : readable).push(...seg.views);
  const status = writableLength > 0 ? sliceViews(writable, writableLength - 1, 1)[0] : undefined;
  if (!status) return { kind: 'reset', head, reason: `request at head ${head} has no device-writable status byte` };
  const answer = answerRequest(chain, readable, writable, s);
  if (Array.isArray(answer)) return { kind: 'submit', head, requests: answer, status, usedLength };
  return complete(head, status, answer, usedLength);
}

function complete(head: number, status: Buffer, answer: Verdict, usedLength: number): BlkAction {
  status[0] = answer.status;
  return { kind: 'complete', head, status: answer.status, reason: answer.reason, usedLength };
}

function answerRequest(chain: Chain, readable: Buffer[], writable: Buffer[], s: BlkSettings): Answer {
  if (chain.readableLength < VIRTIO_BLK_HEADER_SIZE) {
    return ioerr(`request header is ${chain.readableLength} bytes, not ${VIRTIO_BLK_HEADER_SIZE}`);
  }
  const header = gatherViews(readable, 0, VIRTIO_BLK_HEADER_SIZE);
  const type = header.readUInt32LE(0);
  const sectorLo = header.readUInt32LE(8);
  const sectorHi = header.readUInt32LE(12);
  const dataOut = chain.readableLength - VIRTIO_BLK_HEADER_SIZE;
  const dataIn = chain.writableLength - 1;

  switch (type) {
    case VIRTIO_BLK_T.IN:
    case VIRTIO_BLK_T.OUT: {
      const isRead = type === VIRTIO_BLK_T.IN;
      if (!isRead && s.readOnly) return ioerr('write to a read-only device');
      if (isRead ? dataOut > 0 : dataIn > 0) {
        return ioerr(`${isRead ? 'read carries device-readable' : 'write carries device-writable'} data`);
      }
      const length = isRead ? dataIn : dataOut;
      if (length % SECTOR !== 0) return ioerr(`data length ${length} is not a multiple of ${SECTOR}`);
      const offset = rangeOffset(sectorLo, sectorHi, length, s.capacity);
      if (typeof offset === 'string') return ioerr(offset);
      const iov = isRead ? sliceViews(writable, 0, length) : sliceViews(readable, VIRTIO_BLK_HEADER_SIZE, length);
      return [isRead ? request('read', offset, length, { into: iov }) : request('write', offset, length, { from: iov })];
    }
    case VIRTIO_BLK_T.FLUSH:
      return [request('flush', 0, 0)];
    case VIRTIO_BLK_T.GET_ID: {
      const id = Buffer.alloc(Math.min(dataIn, VIRTIO_BLK_ID_BYTES));
      s.id.copy(id, 0, 0, id.length);
      scatterToViews(writable, 0, id);
      return { status: VIRTIO_BLK_S.OK, reason: null };
    }
    case VIRTIO_BLK_T.DISCARD:
    case VIRTIO_BLK_T.WRITE_ZEROES:
      return segmentRequests(type === VIRTIO_BLK_T.DISCARD, readable, dataOut, dataIn, s);
    default:
      return unsupp(`request type ${type} is not supported`);
  }
}

function segmentRequests(discard: boolean, readable: Buffer[], dataOut: number, dataIn: number, s: BlkSettings): Answer {
  const name = discard ? 'discard' : 'write zeroes';
  const limits = discard ? s.discard : s.writeZeroes;
  if (!limits) return unsupp(`${name} is not offered`);
  if (s.readOnly) return ioerr(`${name} on a read-only device`);
  if (dataIn > 0) return ioerr(`${name} carries device-writable data`);
  if (dataOut === 0 || dataOut % VIRTIO_BLK_DWZ_SEGMENT_SIZE !== 0) {
    return ioerr(`${name} segments take ${dataOut} bytes, not a non-zero multiple of ${VIRTIO_BLK_DWZ_SEGMENT_SIZE}`);
  }
  const count = dataOut / VIRTIO_BLK_DWZ_SEGMENT_SIZE;
  if (count > limits.maxSegments) return ioerr(`${name} has ${count} segments, more than ${limits.maxSegments}`);
  const table = gatherViews(readable, VIRTIO_BLK_HEADER_SIZE, dataOut);
  const known = discard ? 0 : VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
  for (let at = 0; at < dataOut; at += VIRTIO_BLK_DWZ_SEGMENT_SIZE) {
    const flags = table.readUInt32LE(at + 12);
    if (flags & ~known) return unsupp(`${name} segment flags 0x${flags.toString(16)} are not supported`);
  }
  const requests: Request[] = [];
  for (let at = 0; at < dataOut; at += VIRTIO_BLK_DWZ_SEGMENT_SIZE) {
    const sectors = table.readUInt32LE(at + 8);
    if (sectors > limits.maxSectors) return ioerr(`${name} of ${sectors} sectors, more than ${limits.maxSectors}`);
    const length = sectors * SECTOR;
    const offset = rangeOffset(table.readUInt32LE(at), table.readUInt32LE(at + 4), length, s.capacity);
    if (typeof offset === 'string') return ioerr(offset);
    const unmap = (table.readUInt32LE(at + 12) & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0;
    requests.push(discard ? request('trim', offset, length) : request('writeZeroes', offset, length, { noHole: !unmap }));
  }
  return requests;
}
