// The filter every other filter builds on: a BlockDevice over the next one
// that passes every request through unchanged. A filter overrides the
// operations it changes and leaves the rest. Reads into and writes from
// caller buffers (guest memory) pass through too when the next device
// does them; otherwise the gateway copies, as it would without a filter.

import type { BlockDevice, Capabilities, Extent, ReadSegment, Request } from '../types.js';

export class Passthrough implements BlockDevice {
  readonly readInto?: (req: Request, into: Buffer[]) => Promise<void>;
  readonly writeFrom?: (req: Request, from: Buffer[]) => Promise<void>;
  readonly payloadBuffer?: (size: number) => Buffer;
  readonly recycle?: (buffer: Buffer) => void;

  constructor(readonly next: BlockDevice) {
    if (next.readInto) this.readInto = (req, into) => this.readIntoNext(req, into);
    if (next.writeFrom) this.writeFrom = (req, from) => this.writeFromNext(req, from);
    if (next.payloadBuffer) this.payloadBuffer = (size) => next.payloadBuffer!(size);
    if (next.recycle) this.recycle = (buffer) => next.recycle!(buffer);
  }

  get size(): number {
    return this.next.size;
  }

  get capabilities(): Capabilities {
    return this.next.capabilities;
  }

  get description(): string {
    return this.next.description;
  }

  read(req: Request): Promise<ReadSegment[]> {
    return this.next.read(req);
  }

  /** readInto when the next device has it; a filter that changes reads overrides this too. */
  protected readIntoNext(req: Request, into: Buffer[]): Promise<void> {
    return this.next.readInto!(req, into);
  }

  write(req: Request): Promise<void> {
    return this.next.write(req);
  }

  /** writeFrom when the next device has it; a filter that changes writes overrides this too. */
  protected writeFromNext(req: Request, from: Buffer[]): Promise<void> {
    return this.next.writeFrom!(req, from);
  }

  flush(): Promise<void> {
    return this.next.flush();
  }

  trim(req: Request): Promise<void> {
    return this.next.trim(req);
  }

  writeZeroes(req: Request): Promise<void> {
    return this.next.writeZeroes(req);
  }

  cache(req: Request): Promise<void> {
    return this.next.cache(req);
  }

  blockStatus(req: Request): Promise<Extent[]> {
    return this.next.blockStatus(req);
  }

  close(): Promise<void> {
    return this.next.close();
  }
}
