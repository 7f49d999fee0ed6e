// Virtio wire constants used by the split virtqueue and the virtio-blk
// device model, named as in the virtio specification (1.2, "Split
// Virtqueues" and "Block Device"). Everything in guest memory is
// little-endian. Feature bits are bit numbers, as the spec lists them.

/** Descriptor flags (struct virtq_desc.flags). */
export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;

/** avail.flags without EVENT_IDX: the driver wants no used-buffer notifications. */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
/** used.flags without EVENT_IDX: the device wants no available-buffer notifications. */
export const VIRTQ_USED_F_NO_NOTIFY = 1;

export const VIRTQ_DESC_SIZE = 16;
export const VIRTQ_USED_ELEM_SIZE = 8;
/** The largest queue size the split ring allows. */
export const VIRTQ_MAX_SIZE = 32768;

/** Device-independent feature bits. */
export const VIRTIO_F = {
  RING_INDIRECT_DESC: 28,
  RING_EVENT_IDX: 29,
  VERSION_1: 32,
} as const;

/** virtio-blk feature bits. */
export const VIRTIO_BLK_F = {
  SIZE_MAX: 1,
  SEG_MAX: 2,
  GEOMETRY: 4,
  RO: 5,
  BLK_SIZE: 6,
  FLUSH: 9,
  TOPOLOGY: 10,
  CONFIG_WCE: 11,
  MQ: 12,
  DISCARD: 13,
  WRITE_ZEROES: 14,
  LIFETIME: 15,
  SECURE_ERASE: 16,
} as const;

/** virtio-blk request types (virtio_blk_req.type). */
export const VIRTIO_BLK_T = {
  IN: 0,
  OUT: 1,
  FLUSH: 4,
  GET_ID: 8,
  GET_LIFETIME: 10,
  DISCARD: 11,
  WRITE_ZEROES: 13,
  SECURE_ERASE: 14,
} as const;

/** virtio-blk status byte values. */
export const VIRTIO_BLK_S = {
  OK: 0,
  IOERR: 1,
  UNSUPP: 2,
} as const;

/** virtio-blk units: sectors are always 512 bytes, whatever blk_size says. */
export const VIRTIO_BLK_SECTOR_SIZE = 512;
/** struct virtio_blk_req header: u32 type, u32 reserved (ioprio), u64 sector. */
export const VIRTIO_BLK_HEADER_SIZE = 16;
/** struct virtio_blk_discard_write_zeroes: u64 sector, u32 num_sectors, u32 flags. */
export const VIRTIO_BLK_DWZ_SEGMENT_SIZE = 16;
export const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;
/** GET_ID answers with a NUL-padded ASCII string of this many bytes (no NUL when full). */
export const VIRTIO_BLK_ID_BYTES = 20;
/** sizeof(struct virtio_blk_config) in the 1.2 spec, secure erase and zoned fields included. */
export const VIRTIO_BLK_CONFIG_SIZE = 96;
