// The portable asynchronous engine: fs.read, fs.write and fs.fdatasync on
// libuv's thread pool (four threads unless UV_THREADPOOL_SIZE says more),
// so the event loop never waits for the disk.

import fs from 'node:fs';
import { endOfFile, settleAll, type IoEngine, type IoOp } from './engine.js';
import { readBuffers } from './buffer-pool.js';

type Transfer = (
  fd: number,
  buffer: Buffer,
  offset: number,
  length: number,
  position: number,
  callback: (err: NodeJS.ErrnoException | null, n: number) => void,
) => void;

function transfer(op: Extract<IoOp, { buffer: Buffer }>): Promise<void> {
  const call = (op.kind === 'read' ? fs.read : fs.write) as Transfer;
  return new Promise((resolve, reject) => {
    let done = 0;
    const step = (): void => {
      call(op.fd, op.buffer, done, op.buffer.length - done, op.position + done, (err, n) => {
        if (err) return reject(err);
        if (n === 0 && op.kind === 'read') return reject(endOfFile(op.position + done));
        done += n;
        if (done === op.buffer.length) resolve();
        else step();
      });
    };
    if (op.buffer.length === 0) resolve();
    else step();
  });
}

function sync(fd: number, dataOnly: boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    (dataOnly ? fs.fdatasync : fs.fsync)(fd, (err) => (err ? reject(err) : resolve()));
  });
}

export class ThreadsEngine implements IoEngine {
  readonly name = 'threads';

  async submit(ops: IoOp[]): Promise<void> {
    await settleAll(ops.map((op) => (op.kind === 'sync' ? sync(op.fd, op.dataOnly) : transfer(op))));
  }

  allocate(size: number): Buffer {
    return readBuffers.allocate(size);
  }

  release(buffer: Buffer): void {
    readBuffers.release(buffer);
  }

  close(): void {}
}
