// pread and pwrite on the event loop itself. For data in the page cache a
// 4 KiB read costs about 2 µs this way against several times that for a
// hop to a worker thread; the price is that a read that misses the cache
// blocks every connection until the disk answers. Chosen by hand only.

import fs from 'node:fs';
import { endOfFile, type IoEngine, type IoOp, type ReadOp } from './engine.js';
import { readBuffers } from './buffer-pool.js';

function run(op: IoOp): void {
  if (op.kind === 'sync') {
    (op.dataOnly ? fs.fdatasyncSync : fs.fsyncSync)(op.fd);
    return;
  }
  const call = (op.kind === 'read' ? fs.readSync : fs.writeSync) as (
    fd: number,
    buffer: Buffer,
    offset: number,
    length: number,
    position: number,
  ) => number;
  for (let done = 0; done < op.buffer.length; ) {
    const n = call(op.fd, op.buffer, done, op.buffer.length - done, op.position + done);
    if (n === 0 && op.kind === 'read') throw endOfFile(op.position + done);
    done += n;
  }
}

export class SyncEngine implements IoEngine {
  readonly name = 'sync';

  submit(ops: IoOp[]): Promise<void> {
    try {
      for (const op of ops) run(op);
      return Promise.resolve();
    } catch (err) {
      return Promise.reject(err);
    }
  }

  tryRead(op: ReadOp): boolean {
    run(op);
    return true;
  }

  allocate(size: number): Buffer {
    return readBuffers.allocate(size);
  }

  release(buffer: Buffer): void {
    readBuffers.release(buffer);
  }

  close(): void {}
}
