// vhost-user wire constants, named as in QEMU's docs/interop/vhost-user.rst
// (the back-end request names use its newer BACKEND spelling). Everything
// on the wire is little-endian. Nothing outside src/protocol/ should need
// these names, except the server to log a request by name.

export const HEADER_SIZE = 12;

/** Header flags: the version in bits 0-1, then REPLY and NEED_REPLY. */
export const VERSION = 0x1;
export const VERSION_MASK = 0x3;
export const FLAG_REPLY = 0x4;
export const FLAG_NEED_REPLY = 0x8;

/**
 * The largest payload this back end reads. The largest it accepts is a
 * config message (12 + 256 bytes); anything up to this size is read and
 * refused in order, anything larger cannot be a vhost-user message at all.
 */
export const MAX_PAYLOAD_SIZE = 4096;

/** Front-end requests (front end -> back end). */
export const REQ = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  CREATE_CRYPTO_SESSION: 26,
  CLOSE_CRYPTO_SESSION: 27,
  POSTCOPY_ADVISE: 28,
  POSTCOPY_LISTEN: 29,
  POSTCOPY_END: 30,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  GPU_SET_SOCKET: 33,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
  GET_SHARED_OBJECT: 41,
  SET_DEVICE_STATE_FD: 42,
  CHECK_DEVICE_STATE: 43,
  GET_SHMEM_CONFIG: 44,
} as const;

const REQUEST_NAMES = new Map<number, string>(Object.entries(REQ).map(([name, n]) => [n, name]));

/** `VHOST_USER_GET_FEATURES`, or `request 99` for a number the spec does not name. */
export function requestName(request: number): string {
  const name = REQUEST_NAMES.get(request);
  return name ? `VHOST_USER_${name}` : `request ${request}`;
}

/** Protocol feature bit numbers (VHOST_USER_PROTOCOL_F_*). */
export const PROTOCOL_F = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  MTU: 4,
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  BACKEND_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
  XEN_MMAP: 17,
  SHARED_OBJECT: 18,
  DEVICE_STATE: 19,
  SHMEM: 20,
} as const;

/** Virtio feature bit numbers the transport deals in (not device-type bits). */
export const VIRTIO_F = {
  VHOST_LOG_ALL: 26,
  RING_INDIRECT_DESC: 28,
  RING_EVENT_IDX: 29,
  /** The reserved bit vhost-user reuses to say it has protocol features. */
  PROTOCOL_FEATURES: 30,
  VERSION_1: 32,
} as const;

export function bit(n: number): bigint {
  return 1n << BigInt(n);
}

/** In the u64 of SET_VRING_KICK/CALL/ERR: the ring index and the "no fd" flag. */
export const VRING_INDEX_MASK = 0xffn;
export const VRING_NO_FD = 0x100n;

/** SET_VRING_ADDR flags: bit 0 asks for used-ring writes to be logged. */
export const VRING_F_LOG = 0x1;

/** Memory regions in one SET_MEM_TABLE message. */
export const MEMORY_TABLE_MAX_REGIONS = 8;
export const MEMORY_REGION_SIZE = 32;

/** Config space access: header of 3 u32, at most this many bytes after it. */
export const CONFIG_HEADER_SIZE = 12;
export const MAX_CONFIG_SIZE = 256;
/** Config message flags. */
export const CONFIG_FLAG_WRITABLE = 0;
export const CONFIG_FLAG_MIGRATION = 1;

/** The inflight description as QEMU sends it: two u64, two u16, padded to 24. */
export const INFLIGHT_SIZE = 24;
export const INFLIGHT_PACKED_SIZE = 20;
