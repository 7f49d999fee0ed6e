// An IoEngine moves bytes between buffers and file descriptors. Callers
// submit a batch of operations; the promise settles when all of them have
// (rejecting with the first failure), so no buffer is still in use when a
// caller sees the outcome. Engines differ in how — on the
// event loop, on libuv's thread pool, through io_uring or POSIX AIO —
// never in what: a read fills its whole buffer or fails (EIO at end of
// file), a write writes all of it, short transfers are finished inside
// the engine. Errors are Node-style: an Error whose `code` is an errno
// name.

export type IoOp =
  | {
      kind: 'read';
      fd: number;
      buffer: Buffer;
      position: number;
      /** The descriptor bypasses the page cache (O_DIRECT): no data can be there already. */
      uncached?: boolean;
    }
  | {
      kind: 'write';
      fd: number;
      buffer: Buffer;
      position: number;
      /** The descriptor is neither O_DIRECT nor O_DSYNC: the write lands in the page cache without waiting for the device. */
      buffered?: boolean;
    }
  | { kind: 'sync'; fd: number; dataOnly: boolean };

export type ReadOp = Extract<IoOp, { kind: 'read' }>;

export interface IoEngine {
  readonly name: EngineName;
  submit(ops: IoOp[]): Promise<void>;
  /**
   * Does a read here and now if that needs no waiting (the sync engine's
   * pread, a page-cache hit through io_uring): true when the buffer is
   * full, false when the read must be submitted; throws what submit would
   * reject with. Engines that always hand reads elsewhere leave it out.
   */
  tryRead?(op: ReadOp): boolean;
  /** A buffer suited to this engine's I/O (aligned where the engine needs it). */
  allocate(size: number): Buffer;
  /** A buffer from allocate() is no longer used and may be reused; one never released is collected. */
  release(buffer: Buffer): void;
  /** Waits for nothing: callers drain first. Frees rings and descriptors. */
  close(): void;
}

export const ENGINE_NAMES = ['sync', 'threads', 'uring', 'posix-aio'] as const;
export type EngineName = (typeof ENGINE_NAMES)[number];

export function ioError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

export function endOfFile(position: number): Error {
  return ioError('EIO', `unexpected end of file at byte ${position}`);
}

/** Waits for every promise, then rejects with the first failure if there was one. */
export async function settleAll(promises: Promise<void>[]): Promise<void> {
  const results = await Promise.allSettled(promises);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}
