// An IoEngine moves bytes between buffers and file descriptors. Engines
// differ in how (the libuv thread pool today; io_uring and POSIX AIO
// later), never in what: a read fills the whole buffer or fails, a write
// writes all of it or fails, short transfers are retried inside the
// engine. Errors are Node-style (an Error with an errno name in `code`).

export interface IoEngine {
  readonly name: string;
  /** Reads buffer.length bytes at position; fails with EIO on end of file. */
  read(fd: number, buffer: Buffer, position: number): Promise<void>;
  /** Writes all of buffer at position. */
  write(fd: number, buffer: Buffer, position: number): Promise<void>;
  /** fdatasync (dataOnly) or fsync. */
  sync(fd: number, dataOnly: boolean): Promise<void>;
}
