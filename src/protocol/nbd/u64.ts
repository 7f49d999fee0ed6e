// 64-bit fields as JavaScript numbers. Offsets and sizes beyond 2^53 cannot
// name a byte of any export we serve, so decoding them approximately is
// safe: a rounded value is still past the end and fails the range check.
// Encoding takes a bigint too, so clients (tests, fuzzers) can send any
// exact 64-bit value.

const TWO32 = 2 ** 32;

export function readU64(buf: Buffer, off: number): number {
  return buf.readUInt32BE(off) * TWO32 + buf.readUInt32BE(off + 4);
}

export function writeU64(buf: Buffer, off: number, value: number | bigint): void {
  if (typeof value === 'bigint') {
    buf.writeBigUInt64BE(value, off);
    return;
  }
  buf.writeUInt32BE(Math.floor(value / TWO32) >>> 0, off);
  buf.writeUInt32BE(value >>> 0, off + 4);
}
