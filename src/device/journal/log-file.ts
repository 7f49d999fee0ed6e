// Appending frames to a journal file, durably on demand. append() queues
// a frame and returns at once; one writer drains the queue with a writev
// at a time, so concurrent requests' frames go out together. sync()
// resolves once every frame appended before the call is written and
// fdatasync'd; syncs that arrive while one runs share the next one (group
// commit). Plain node:fs calls: simple and correct before fast.

import { closeSync, fdatasync, openSync, writev, writeSync } from 'node:fs';
import { promisify } from 'node:util';

const writevAsync = promisify(writev);
const fdatasyncAsync = promisify(fdatasync);
/** Appenders wait for the writer once this many bytes are queued (memory stays bounded). */
const HIGH_WATER = 32 * 1024 * 1024;

export class JournalLogFile {
  private readonly fd: number;
  private queue: Buffer[] = [];
  private queuedBytes = 0;
  /** Bytes appended (written or queued). */
  appended = 0;
  private written = 0;
  private synced = 0;
  private writing: Promise<void> | null = null;
  private syncing: Promise<void> | null = null;
  private failure: Error | null = null;

  /** Creates (or truncates) `path` and writes `first` to it before returning. */
  constructor(
    readonly path: string,
    first: Buffer,
  ) {
    this.fd = openSync(path, 'w', 0o644);
    writeSync(this.fd, first);
    this.appended = this.written = first.length;
  }

  /** Queues a frame; resolves at once unless the queue is over its high water mark. */
  async append(frame: Buffer): Promise<void> {
    if (this.failure) throw this.failure;
    this.queue.push(frame);
    this.queuedBytes += frame.length;
    this.appended += frame.length;
    const drained = this.drain();
    if (this.queuedBytes > HIGH_WATER) await drained;
  }

  /** Writes the queue out, one writev at a time; resolves when nothing is left. */
  private drain(): Promise<void> {
    this.writing ??= (async () => {
      try {
        while (this.queue.length > 0) {
          const batch = this.queue;
          this.queue = [];
          let bytes = 0;
          for (const b of batch) bytes += b.length;
          let done = 0;
          while (done < bytes) {
            // A short write leaves the rest of the batch for the next writev.
            const rest = done === 0 ? batch : remainder(batch, done);
            done += (await writevAsync(this.fd, rest)).bytesWritten;
          }
          this.queuedBytes -= bytes;
          this.written += bytes;
        }
      } catch (err) {
        this.failure = new Error(`journal ${this.path}: ${(err as Error).message}`);
        throw this.failure;
      } finally {
        this.writing = null;
      }
    })();
    return this.writing;
  }

  /** Resolves when every frame appended before the call is on stable storage. */
  async sync(): Promise<void> {
    const target = this.appended;
    while (this.synced < target) {
      if (this.failure) throw this.failure;
      if (this.syncing) {
        await this.syncing;
        continue;
      }
      this.syncing = (async () => {
        try {
          while (this.written < target) await this.drain();
          const upTo = this.written;
          await fdatasyncAsync(this.fd);
          this.synced = Math.max(this.synced, upTo);
        } finally {
          this.syncing = null;
        }
      })();
      await this.syncing;
    }
  }

  async close(): Promise<void> {
    try {
      await this.sync();
    } finally {
      closeSync(this.fd);
    }
  }
}

/** The bytes of `buffers` after the first `skip`. */
function remainder(buffers: Buffer[], skip: number): Buffer[] {
  const out: Buffer[] = [];
  for (const b of buffers) {
    if (skip >= b.length) skip -= b.length;
    else {
      out.push(b.subarray(skip));
      skip = 0;
    }
  }
  return out;
}
