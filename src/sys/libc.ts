// The C library through koffi, loaded once for every binding in sys/ and
// sys/syscalls.ts, and the errors they throw: an Error carrying the errno
// name in `code`, like Node's own fs errors, or ENOSYS where libc, koffi
// or the call is missing (not Linux, no koffi), so callers can fall back.

import { constants as osConstants } from 'node:os';
import { createRequire } from 'node:module';

export type Koffi = typeof import('koffi');
export type Library = ReturnType<Koffi['load']>;

function load(): { koffi: Koffi; libc: Library } | null {
  try {
    const koffi = createRequire(import.meta.url)('koffi') as Koffi;
    return { koffi, libc: koffi.load(process.platform === 'darwin' ? 'libSystem.B.dylib' : 'libc.so.6') };
  } catch {
    return null;
  }
}

const loaded = load();

export const koffi: Koffi | null = loaded?.koffi ?? null;
export const libc: Library | null = loaded?.libc ?? null;

/** A libc function, or null where this libc lacks it (or koffi is missing). */
export function optionalFunc<T>(proto: string): T | null {
  try {
    return (libc?.func(proto) as T | undefined) ?? null;
  } catch {
    return null;
  }
}

/** errno of the last call made through koffi on this thread. */
export function errno(): number {
  return koffi ? koffi.errno() : 0;
}

const ERRNO_NAMES = new Map<number, string>(
  Object.entries(osConstants.errno).map(([name, value]) => [value as number, name]),
);

/** The errno's name (EAGAIN, ...), or E<number> for one Node does not name. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `E${errno}`;
}

export function systemError(call: string, errno: number): Error {
  const code = errnoName(errno);
  return Object.assign(new Error(`${call} failed: ${code}`), { code, errno: -errno, syscall: call });
}

export function unavailable(call: string): Error {
  return Object.assign(new Error(`${call} is not available on this host`), { code: 'ENOSYS', syscall: call });
}
