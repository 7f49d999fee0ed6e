// The qcow2 on-disk format (docs/interop/qcow2.txt in QEMU): the header,
// its extensions, and the bits of L1, L2 and refcount entries. Pure
// functions over Buffers; the image code in qcow2-image.ts does the I/O.
// Offsets and sizes are JavaScript numbers (qcow2 keeps host offsets
// below 2^56 and we refuse images whose sizes pass 2^53).

export const QCOW2_MAGIC = 0x514649fb;
export const HEADER_V3_LENGTH = 112;

export const EXT_END = 0x00000000;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_TABLE = 0x6803f857;
export const EXT_BITMAPS = 0x23852875;
export const EXT_CRYPTO = 0x0537be77;
export const EXT_DATA_FILE = 0x44415441;

/** Incompatible feature bits. */
export const INCOMPAT = { DIRTY: 1, CORRUPT: 2, DATA_FILE: 4, COMPRESSION: 8, EXTENDED_L2: 16 } as const;
const INCOMPAT_KNOWN = 0x1f;
/** Autoclear feature bits. */
export const AUTOCLEAR_BITMAPS = 1;

/** Header field offsets, for updating single fields in place. */
export const FIELD = {
  backingFileOffset: 8,
  backingFileSize: 16,
  size: 24,
  l1Size: 36,
  l1TableOffset: 40,
  refcountTableOffset: 48,
  refcountTableClusters: 56,
  incompatible: 72,
  autoclearLow: 92,
} as const;

export interface Extension {
  type: number;
  data: Buffer;
}

export interface Header {
  version: number;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  /** Low 32 bits of incompatible_features (every defined bit is there). */
  incompatible: number;
  /** High 32 bits: all reserved, so any set bit is unknown. */
  incompatibleHigh: number;
  /** Low 32 bits of autoclear_features. */
  autoclear: number;
  refcountOrder: number;
  headerLength: number;
  compressionType: number;
  extensions: Extension[];
  backingFile: string | null;
  backingFormat: string | null;
}

function u64(buf: Buffer, off: number): number {
  const v = buf.readBigUInt64BE(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`qcow2 header field at byte ${off} is too large (${v})`);
  return Number(v);
}

/** Decodes the header in `first` (at least the first cluster, or 64 KiB). */
export function decodeHeader(first: Buffer): Header {
  if (first.length < 72 || first.readUInt32BE(0) !== QCOW2_MAGIC) throw new Error('not a qcow2 image');
  const version = first.readUInt32BE(4);
  if (version !== 2 && version !== 3) throw new Error(`qcow2 version ${version} is not supported`);
  const v3 = version === 3;
  const headerLength = v3 ? first.readUInt32BE(100) : 72;
  const header: Header = {
    version,
    backingFileOffset: u64(first, 8),
    backingFileSize: first.readUInt32BE(16),
    clusterBits: first.readUInt32BE(20),
    size: u64(first, 24),
    cryptMethod: first.readUInt32BE(32),
    l1Size: first.readUInt32BE(36),
    l1TableOffset: u64(first, 40),
    refcountTableOffset: u64(first, 48),
    refcountTableClusters: first.readUInt32BE(56),
    nbSnapshots: first.readUInt32BE(60),
    snapshotsOffset: u64(first, 64),
    incompatible: v3 ? first.readUInt32BE(76) : 0,
    incompatibleHigh: v3 ? first.readUInt32BE(72) : 0,
    autoclear: v3 ? first.readUInt32BE(92) : 0,
    refcountOrder: v3 ? first.readUInt32BE(96) : 4,
    headerLength,
    compressionType: v3 && headerLength > 104 ? first.readUInt8(104) : 0,
    extensions: [],
    backingFile: null,
    backingFormat: null,
  };
  if (header.clusterBits < 9 || header.clusterBits > 21) throw new Error(`qcow2 cluster_bits ${header.clusterBits} is out of range`);
  if (v3 && (headerLength < 104 || headerLength % 8 !== 0)) throw new Error(`qcow2 header_length ${headerLength} is invalid`);
  if (header.refcountOrder > 6) throw new Error(`qcow2 refcount_order ${header.refcountOrder} is invalid`);
  const clusterSize = 2 ** header.clusterBits;
  let p = headerLength;
  const end = Math.min(first.length, clusterSize);
  while (p + 8 <= end) {
    const type = first.readUInt32BE(p);
    const length = first.readUInt32BE(p + 4);
    if (type === EXT_END) break;
    if (p + 8 + length > end) throw new Error('qcow2 header extension runs past the first cluster');
    header.extensions.push({ type, data: first.subarray(p + 8, p + 8 + length) });
    p += 8 + Math.ceil(length / 8) * 8;
  }
  const format = header.extensions.find((e) => e.type === EXT_BACKING_FORMAT);
  if (format) header.backingFormat = format.data.toString('utf8');
  if (header.backingFileOffset) {
    const start = header.backingFileOffset;
    if (header.backingFileSize > 1023 || start + header.backingFileSize > first.length) {
      throw new Error('qcow2 backing file name is out of bounds');
    }
    header.backingFile = first.toString('utf8', start, start + header.backingFileSize);
  }
  return header;
}

/** Why vblk cannot serve this image correctly at all, or null. */
export function unsupportedReason(h: Header): string | null {
  if (h.cryptMethod !== 0) return 'it is encrypted';
  const unknown = (h.incompatible & ~INCOMPAT_KNOWN) >>> 0;
  if (unknown || h.incompatibleHigh) return 'it uses incompatible features vblk does not know';
  if (h.incompatible & INCOMPAT.CORRUPT) return 'it is marked corrupt (run qemu-img check -r all)';
  if (h.incompatible & INCOMPAT.DATA_FILE) return 'it keeps its data in an external data file';
  if (h.incompatible & INCOMPAT.EXTENDED_L2) return 'it uses extended L2 entries (subclusters)';
  if (h.incompatible & INCOMPAT.COMPRESSION || h.compressionType !== 0) {
    return h.compressionType === 1 ? 'it uses zstd compression, which Node cannot decompress' : 'it uses an unknown compression type';
  }
  if (h.size > Number.MAX_SAFE_INTEGER) return 'its virtual size is beyond 8 PiB';
  return null;
}

/** Why vblk must not write to this image, or null. */
export function readOnlyReason(h: Header): string | null {
  if (h.nbSnapshots > 0) return 'it has internal snapshots';
  if (h.incompatible & INCOMPAT.DIRTY) return 'it is marked dirty (lazy refcounts); run qemu-img check -r all';
  if (h.version < 3) return 'it is a version 2 image';
  return null;
}

/** Encodes a new version 3 header with its extensions and backing file name into `cluster`. */
export function encodeHeader(
  cluster: Buffer,
  h: Pick<Header, 'clusterBits' | 'size' | 'l1Size' | 'l1TableOffset' | 'refcountTableOffset' | 'refcountTableClusters'> & {
    backingFile: string | null;
    backingFormat: string | null;
  },
): void {
  cluster.fill(0);
  cluster.writeUInt32BE(QCOW2_MAGIC, 0);
  cluster.writeUInt32BE(3, 4);
  cluster.writeUInt32BE(h.clusterBits, 20);
  cluster.writeBigUInt64BE(BigInt(h.size), 24);
  cluster.writeUInt32BE(h.l1Size, 36);
  cluster.writeBigUInt64BE(BigInt(h.l1TableOffset), 40);
  cluster.writeBigUInt64BE(BigInt(h.refcountTableOffset), 48);
  cluster.writeUInt32BE(h.refcountTableClusters, 56);
  cluster.writeUInt32BE(4, 96);
  cluster.writeUInt32BE(HEADER_V3_LENGTH, 100);
  let p = HEADER_V3_LENGTH;
  if (h.backingFormat) {
    const name = Buffer.from(h.backingFormat, 'utf8');
    cluster.writeUInt32BE(EXT_BACKING_FORMAT, p);
    cluster.writeUInt32BE(name.length, p + 4);
    name.copy(cluster, p + 8);
    p += 8 + Math.ceil(name.length / 8) * 8;
  }
  cluster.writeUInt32BE(EXT_END, p);
  cluster.writeUInt32BE(0, p + 4);
  p += 8;
  if (h.backingFile) {
    const name = Buffer.from(h.backingFile, 'utf8');
    if (name.length > 1023) throw new Error('backing file name longer than 1023 bytes');
    name.copy(cluster, p);
    cluster.writeBigUInt64BE(BigInt(p), 8);
    cluster.writeUInt32BE(name.length, 16);
  }
}

// --- L1, L2 and refcount table entries ----------------------------------

const TWO32 = 2 ** 32;
/** Bits 9-55: a cluster-aligned host offset. */
export function entryOffset(hi: number, lo: number): number {
  return (hi & 0x00ffffff) * TWO32 + ((lo & 0xfffffe00) >>> 0);
}

export const L2_COPIED_HI = 0x80000000;
export const L2_COMPRESSED_HI = 0x40000000;
export const L2_ZERO_LO = 1;

export type L2Entry =
  | { kind: 'unallocated' }
  | { kind: 'zero'; host: number; copied: boolean }
  | { kind: 'data'; host: number; copied: boolean }
  | { kind: 'compressed'; host: number; length: number };

/** Decodes the L2 entry at index `i` of `table`. */
export function decodeL2(table: Buffer, i: number, clusterBits: number): L2Entry {
  const hi = table.readUInt32BE(8 * i);
  const lo = table.readUInt32BE(8 * i + 4);
  if (hi & L2_COMPRESSED_HI) {
    const raw = table.readBigUInt64BE(8 * i) & ((1n << 62n) - 1n);
    const x = BigInt(62 - (clusterBits - 8));
    const host = Number(raw & ((1n << x) - 1n));
    const sectors = Number(raw >> x);
    // The data runs from `host` to the end of the last of (1 + sectors) 512-byte sectors.
    return { kind: 'compressed', host, length: (sectors + 1) * 512 - (host % 512) };
  }
  const copied = (hi & L2_COPIED_HI) !== 0;
  const host = entryOffset(hi, lo);
  if (lo & L2_ZERO_LO) return { kind: 'zero', host, copied };
  if (host === 0) return { kind: 'unallocated' };
  return { kind: 'data', host, copied };
}

/** Encodes a standard L2 entry (or L1 entry, or refcount table entry with copied false). */
export function encodeEntry(buf: Buffer, off: number, host: number, copied: boolean, zero = false): void {
  buf.writeUInt32BE(((copied ? L2_COPIED_HI : 0) | Math.floor(host / TWO32)) >>> 0, off);
  buf.writeUInt32BE(((host % TWO32) | (zero ? L2_ZERO_LO : 0)) >>> 0, off + 4);
}

/** The host offset of an L1 entry (0 when its L2 table is unallocated) and its COPIED bit. */
export function decodeL1(table: Buffer, i: number): { host: number; copied: boolean } {
  const hi = table.readUInt32BE(8 * i);
  return { host: entryOffset(hi, table.readUInt32BE(8 * i + 4)), copied: (hi & L2_COPIED_HI) !== 0 };
}

/** Reads refcount `i` of a refcount block of 2^order-bit entries. */
export function readRefcount(block: Buffer, i: number, order: number): number {
  const bits = 2 ** order;
  if (bits >= 8) {
    const bytes = bits / 8;
    const off = i * bytes;
    if (bytes === 1) return block[off];
    if (bytes === 2) return block.readUInt16BE(off);
    if (bytes === 4) return block.readUInt32BE(off);
    return Number(block.readBigUInt64BE(off));
  }
  const perByte = 8 / bits;
  const byte = block[Math.floor(i / perByte)];
  const shift = (i % perByte) * bits;
  return (byte >> shift) & (2 ** bits - 1);
}

/** Writes refcount `i`; returns the byte range of the block that changed. */
export function writeRefcount(block: Buffer, i: number, order: number, value: number): { start: number; end: number } {
  const bits = 2 ** order;
  if (value < 0 || value >= 2 ** Math.min(bits, 53)) throw new Error(`refcount ${value} does not fit ${bits} bits`);
  if (bits >= 8) {
    const bytes = bits / 8;
    const off = i * bytes;
    if (bytes === 1) block[off] = value;
    else if (bytes === 2) block.writeUInt16BE(value, off);
    else if (bytes === 4) block.writeUInt32BE(value, off);
    else block.writeBigUInt64BE(BigInt(value), off);
    return { start: off, end: off + bytes };
  }
  const perByte = 8 / bits;
  const off = Math.floor(i / perByte);
  const shift = (i % perByte) * bits;
  const mask = (2 ** bits - 1) << shift;
  block[off] = (block[off] & ~mask) | (value << shift);
  return { start: off, end: off + 1 };
}
