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

/** One MAP_SHARED mapping of a file range (native/src/guest-memory.cc). */
export interface SharedMapping {
  /** Window i covers bytes [i * windowSize, (i + 1) * windowSize) of the range; the last may be shorter. */
  windows: ArrayBuffer[];
  windowSize: number;
  /**
   * Releases the file's pages now; the windows stay valid but read zeros
   * and their writes go nowhere. True when done (again: true), false when
   * the pages must stay mapped until the windows are collected.
   */
  unmap(): boolean;
}

/** A uv_poll for readability on a descriptor (native/src/fd-watch.cc). */
export interface FdWatch {
  /** No callback runs after this; safe to call twice. Call it before closing the descriptor. */
  stop(): void;
  /** Keep the event loop alive while watching (the default). */
  ref(): this;
  /** Let the process exit even while watching. */
  unref(): this;
}

export interface NativeAddon {
  Uring: NativeRingClass;
  Aio: NativeRingClass;
  alignedBuffer(size: number, alignment: number): Buffer;
  addressModulo(buffer: Buffer, n: number): number;
  /**
   * Maps [offset, offset + length) of `fd` shared (writable) or copy-on-write
   * (not writable), in windows of windowSize bytes (default and most 1 GiB).
   * Throws a RangeError when the range ends past the end of a regular file.
   */
  mapShared(fd: number, offset: number, length: number, writable: boolean, windowSize?: number): SharedMapping;
  /**
   * Calls `callback(null)` whenever `fd` is readable (level-triggered) and
   * callback(error) if polling fails; makes `fd` non-blocking. Throws
   * (code EEXIST) for a descriptor the event loop already polls.
   */
  watchFd(fd: number, callback: (error: Error | null) => void): FdWatch;
  /** writev(2) on a non-blocking descriptor: bytes taken (from at most IOV_MAX buffers), or -errno (-EAGAIN: no room). */
  writev(fd: number, buffers: Buffer[]): number;
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

/** The addon, or an error saying that `what` needs it and why it is missing. */
export function requireNative(what: string): NativeAddon {
  if (native) return native;
  throw Object.assign(new Error(`${what} needs the native addon, which is unavailable: ${nativeUnavailable}`), {
    code: 'ERR_NATIVE_UNAVAILABLE',
  });
}
