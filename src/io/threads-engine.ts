// The portable engine: fs.read/fs.write on libuv's thread pool, so the
// event loop never blocks on the disk. Each call moves as much as the
// kernel gives; the loops finish short transfers.

import fs from 'node:fs';
import type { IoEngine } from './engine.js';

function endOfFile(position: number): Error {
  return Object.assign(new Error(`unexpected end of file at byte ${position}`), { code: 'EIO' });
}

export class ThreadsEngine implements IoEngine {
  readonly name = 'threads';

  read(fd: number, buffer: Buffer, position: number): Promise<void> {
    return new Promise((resolve, reject) => {
      let done = 0;
      const step = (): void => {
        fs.read(fd, buffer, done, buffer.length - done, position + done, (err, n) => {
          if (err) return reject(err);
          if (n === 0) return reject(endOfFile(position + done));
          done += n;
          if (done === buffer.length) resolve();
          else step();
        });
      };
      if (buffer.length === 0) resolve();
      else step();
    });
  }

  write(fd: number, buffer: Buffer, position: number): Promise<void> {
    return new Promise((resolve, reject) => {
      let done = 0;
      const step = (): void => {
        fs.write(fd, buffer, done, buffer.length - done, position + done, (err, n) => {
          if (err) return reject(err);
          done += n;
          if (done === buffer.length) resolve();
          else step();
        });
      };
      if (buffer.length === 0) resolve();
      else step();
    });
  }

  sync(fd: number, dataOnly: boolean): Promise<void> {
    return new Promise((resolve, reject) => {
      (dataOnly ? fs.fdatasync : fs.fsync)(fd, (err) => (err ? reject(err) : resolve()));
    });
  }
}
