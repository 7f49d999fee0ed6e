// What a virtio-blk device tells the driver: its feature bits and its
// configuration space (struct virtio_blk_config, little-endian). Both come
// from one BlkSettings record, which the request model (virtio-blk.ts)
// checks requests against too, so the limits a guest reads are the ones
// it is held to.
//
// Always offered: VERSION_1, RING_INDIRECT_DESC and RING_EVENT_IDX (the
// split virtqueue does both), SEG_MAX, BLK_SIZE, TOPOLOGY, and MQ with
// num_queues (QEMU's front end overrides num_queues with its own
// num-queues, but only offers MQ to the guest when the back end does).
// Never offered: GEOMETRY (geometry stays 0), CONFIG_WCE (the guest cannot
// switch the cache mode, so writeback is read-only: 1 when FLUSH is
// offered), LIFETIME, SECURE_ERASE, ZONED.

import {
  VIRTIO_BLK_CONFIG_SIZE,
  VIRTIO_BLK_F,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_SECTOR_SIZE,
  VIRTIO_F,
} from './virtio-constants.js';

export interface BlkDiscardLimits {
  /** Most sectors in one segment (max_discard_sectors). */
  maxSectors: number;
  /** Most segments in one request (max_discard_seg). */
  maxSegments: number;
  /** Preferred alignment, in sectors (discard_sector_alignment); a hint, not checked. */
  sectorAlignment: number;
}

export interface BlkWriteZeroesLimits {
  /** Most sectors in one segment (max_write_zeroes_sectors). */
  maxSectors: number;
  /** Most segments in one request (max_write_zeroes_seg). */
  maxSegments: number;
  /** A write-zeroes with UNMAP may deallocate (write_zeroes_may_unmap). */
  mayUnmap: boolean;
}

export interface BlkSettings {
  /** Device size in bytes; the guest sees whole 512-byte sectors (a tail shorter than one is unreachable). */
  capacity: number;
  readOnly: boolean;
  /** The device has a volatile cache that FLUSH persists: offers FLUSH, writeback reads 1. */
  flush: boolean;
  /** Logical block size (blk_size): a power of two, at least 512. */
  blockSize: number;
  /** Physical block size, a power-of-two multiple of blockSize (topology); blockSize when absent. */
  physicalBlockSize?: number;
  /** Suggested smallest and optimal I/O sizes in bytes (topology, in blocks on the wire); 0 or absent: no hint. */
  minIoSize?: number;
  optIoSize?: number;
  /** Most data segments in one request (seg_max). */
  segMax: number;
  /** Largest data segment in bytes (size_max); 0 or absent: SIZE_MAX not offered. */
  sizeMax?: number;
  /** Request queues (num_queues), at least 1. */
  numQueues: number;
  /** null: DISCARD not offered. */
  discard: BlkDiscardLimits | null;
  /** null: WRITE_ZEROES not offered. */
  writeZeroes: BlkWriteZeroesLimits | null;
  /** GET_ID's answer, 20 bytes (blkIdBytes makes one from a string); a shorter one is NUL-padded. */
  id: Buffer;
}

function bit(n: number): bigint {
  return 1n << BigInt(n);
}

export function blkFeatures(s: BlkSettings): bigint {
  let f = bit(VIRTIO_F.VERSION_1) | bit(VIRTIO_F.RING_INDIRECT_DESC) | bit(VIRTIO_F.RING_EVENT_IDX);
  f |= bit(VIRTIO_BLK_F.SEG_MAX) | bit(VIRTIO_BLK_F.BLK_SIZE) | bit(VIRTIO_BLK_F.TOPOLOGY) | bit(VIRTIO_BLK_F.MQ);
  if (s.sizeMax) f |= bit(VIRTIO_BLK_F.SIZE_MAX);
  if (s.readOnly) f |= bit(VIRTIO_BLK_F.RO);
  if (s.flush) f |= bit(VIRTIO_BLK_F.FLUSH);
  if (s.discard) f |= bit(VIRTIO_BLK_F.DISCARD);
  if (s.writeZeroes) f |= bit(VIRTIO_BLK_F.WRITE_ZEROES);
  return f;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

function u32(name: string, v: number): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new RangeError(`${name} ${v} does not fit in a u32`);
  return v;
}

function blocks(name: string, bytes: number | undefined, blockSize: number, max: number): number {
  const v = bytes ?? 0;
  if (!Number.isInteger(v) || v < 0 || v % blockSize !== 0 || v / blockSize > max) {
    throw new RangeError(`${name} ${v} is not a multiple of the ${blockSize}-byte block up to ${max} blocks`);
  }
  return v / blockSize;
}

/** The GET_ID answer: the id's ASCII bytes, NUL-padded to 20 (no NUL when it is 20 long). */
export function blkIdBytes(id: string): Buffer {
  if (!/^[\x20-\x7e]*$/.test(id) || id.length > VIRTIO_BLK_ID_BYTES) {
    throw new RangeError(`device id ${JSON.stringify(id)} is not printable ASCII of at most ${VIRTIO_BLK_ID_BYTES} bytes`);
  }
  const out = Buffer.alloc(VIRTIO_BLK_ID_BYTES);
  out.write(id, 'latin1');
  return out;
}

/** struct virtio_blk_config as the 1.2 spec lays it out (96 bytes; a front end reads the prefix it knows). */
export function blkConfig(s: BlkSettings): Buffer {
  if (!Number.isSafeInteger(s.capacity) || s.capacity < 0) throw new RangeError(`capacity ${s.capacity} is not a byte count`);
  if (!isPowerOfTwo(s.blockSize) || s.blockSize < VIRTIO_BLK_SECTOR_SIZE) {
    throw new RangeError(`block size ${s.blockSize} is not a power of two from 512`);
  }
  const physical = s.physicalBlockSize ?? s.blockSize;
  if (!isPowerOfTwo(physical) || physical < s.blockSize || Math.log2(physical / s.blockSize) > 255) {
    throw new RangeError(`physical block size ${physical} is not a power-of-two multiple of ${s.blockSize}`);
  }
  if (!Number.isInteger(s.numQueues) || s.numQueues < 1 || s.numQueues > 0xffff) {
    throw new RangeError(`number of queues ${s.numQueues} is not 1 to 65535`);
  }
  const c = Buffer.alloc(VIRTIO_BLK_CONFIG_SIZE);
  c.writeBigUInt64LE(BigInt(Math.floor(s.capacity / VIRTIO_BLK_SECTOR_SIZE)), 0);
  c.writeUInt32LE(u32('size_max', s.sizeMax ?? 0), 8);
  c.writeUInt32LE(u32('seg_max', s.segMax), 12);
  // 16..19 geometry (cylinders u16, heads u8, sectors u8): not offered, 0.
  c.writeUInt32LE(u32('blk_size', s.blockSize), 20);
  c.writeUInt8(Math.log2(physical / s.blockSize), 24); // physical_block_exp
  // 25 alignment_offset: 0, the first logical block is aligned.
  c.writeUInt16LE(blocks('min_io_size', s.minIoSize, s.blockSize, 0xffff), 26);
  c.writeUInt32LE(blocks('opt_io_size', s.optIoSize, s.blockSize, 0xffffffff), 28);
  c.writeUInt8(s.flush ? 1 : 0, 32); // writeback
  // 33 unused0: 0.
  c.writeUInt16LE(s.numQueues, 34);
  if (s.discard) {
    c.writeUInt32LE(u32('max_discard_sectors', s.discard.maxSectors), 36);
    c.writeUInt32LE(u32('max_discard_seg', s.discard.maxSegments), 40);
    c.writeUInt32LE(u32('discard_sector_alignment', s.discard.sectorAlignment), 44);
  }
  if (s.writeZeroes) {
    c.writeUInt32LE(u32('max_write_zeroes_sectors', s.writeZeroes.maxSectors), 48);
    c.writeUInt32LE(u32('max_write_zeroes_seg', s.writeZeroes.maxSegments), 52);
    c.writeUInt8(s.writeZeroes.mayUnmap ? 1 : 0, 56);
  }
  // 57..59 unused1, 60..71 secure erase, 72..95 zoned: not offered, 0.
  if (s.id.length > VIRTIO_BLK_ID_BYTES) throw new RangeError(`device id of ${s.id.length} bytes is longer than ${VIRTIO_BLK_ID_BYTES}`);
  return c;
}
