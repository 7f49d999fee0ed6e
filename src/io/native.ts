// Loads the native addon (native/, built by `npm ci` when a compiler and
// Node's headers are there). When it is missing or will not load, vblk
// still serves with the sync and threads engines, and `nativeUnavailable`
// says why; VBLK_NO_NATIVE=1 turns the addon off to exercise that path.

import fs from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/** A ring that takes prepared operations and reports completions in batches. */
export interface NativeRing {
  /** op: 0 read, 1 write, 2 fdatasync, 3 fsync. False when the ring has no room. */
  /** worker: hand the operation to a kernel worker thread at once (io_uring's IOSQE_ASYNC; AIO ignores it). */
  prep(op: number, fd: number, buffer: Buffer | null, position: number, id: number, worker?: boolean): boolean;
  submit(): number;
  close(): void;
  /** io_uring only: a non-blocking read (preadv2 RWF_NOWAIT); bytes read or -errno. */
  tryRead?(fd: number, buffer: Buffer, position: number): number;
  /** io_uring only: a page-cache write now, non-blocking (RWF_NOWAIT) or plain; bytes written or -errno. */
  tryWrite?(fd: number, buffer: Buffer, position: number, nowait: boolean): number;
}

export interface NativeRingClass {
  new (slots: number, completions: Int32Array, onComplete: (count: number) => void): NativeRing;
  /** null when usable here, else why not. */
  probe(): string | null;
}

export interface NativeAddon {
  Uring: NativeRingClass;
  Aio: NativeRingClass;
  alignedBuffer(size: number, alignment: number): Buffer;
  addressModulo(buffer: Buffer, n: number): number;
}

const BUILD = fileURLToPath(new URL('../../../native/build/', import.meta.url));

function load(): { addon: NativeAddon | null; reason: string | null } {
  if (process.env.VBLK_NO_NATIVE === '1') return { addon: null, reason: 'disabled by VBLK_NO_NATIVE=1' };
  try {
    return { addon: createRequire(import.meta.url)(`${BUILD}Release/vblk_native.node`) as NativeAddon, reason: null };
  } catch (err) {
    let reason = `native addon did not load: ${(err as Error).message.split('\n')[0]}`;
    const log = `${BUILD}error.log`;
    if (fs.existsSync(log)) reason = `the native addon failed to build: ${fs.readFileSync(log, 'utf8').split('\n')[0]}`;
    return { addon: null, reason };
  }
}

const loaded = load();

export const native: NativeAddon | null = loaded.addon;
export const nativeUnavailable: string | null = loaded.reason;
