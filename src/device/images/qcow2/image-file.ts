// Byte access to an image file through the I/O engine, for qcow2's data
// and metadata alike.

import type { IoEngine } from '../../../io/engine.js';

export class ImageFile {
  constructor(
    readonly fd: number,
    private readonly engine: IoEngine,
  ) {}

  async read(offset: number, length: number): Promise<Buffer> {
    const buffer = this.engine.allocate(length);
    await this.engine.submit([{ kind: 'read', fd: this.fd, buffer, position: offset }]);
    return buffer;
  }

  write(buffer: Buffer, offset: number): Promise<void> {
    return this.engine.submit([{ kind: 'write', fd: this.fd, buffer, position: offset }]);
  }

  sync(): Promise<void> {
    return this.engine.submit([{ kind: 'sync', fd: this.fd, dataOnly: true }]);
  }
}
