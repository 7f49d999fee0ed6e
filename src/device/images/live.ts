// An image file whose device can be switched while it is served: what a
// live snapshot, revert or fork through the control socket needs. It sits
// at the bottom of an export's chain, under the filters (which keep their
// state: journal, dirty bitmaps, the power-cut layer), and forwards every
// request to the device open now. `change` runs with the file closed (the
// chain operations of snapshots.ts work on files, under their own locks)
// and opens it again afterwards, whether or not the change worked, so a
// failed snapshot leaves the export serving what it served before.
// The caller stops requests first (Gateway.pause) and flushes through
// the filters above; this class does not queue requests itself.
// Only a server started with --control puts one under its exports.

import { DeviceError } from '../errors.js';
import { scatterSegments, type BlockDevice, type Capabilities, type Extent, type ReadSegment, type Request } from '../types.js';

export class LiveImage implements BlockDevice {
  private device: BlockDevice;
  private changing = false;

  constructor(
    /** The image file, as the exports name it. */
    readonly file: string,
    device: BlockDevice,
    private readonly open: (file: string) => Promise<BlockDevice>,
  ) {
    this.device = device;
  }

  get next(): BlockDevice {
    return this.device;
  }

  get size(): number {
    return this.device.size;
  }

  get capabilities(): Capabilities {
    return this.device.capabilities;
  }

  get description(): string {
    return this.device.description;
  }

  /**
   * Closes the image, runs `change` on its file, and opens it again: the
   * changed file, or (when `change` failed) the file as it was. Fails if
   * the size changed, since clients were told it.
   */
  async change<T>(change: (file: string) => Promise<T>): Promise<T> {
    if (this.changing) throw new DeviceError('EINVAL', `${this.file} is already being changed`);
    this.changing = true;
    const size = this.device.size;
    try {
      await this.device.close();
      let result: T;
      try {
        result = await change(this.file);
      } catch (err) {
        this.device = await this.open(this.file);
        throw err;
      }
      this.device = await this.open(this.file);
      if (this.device.size !== size) throw new DeviceError('EINVAL', `${this.file} is now ${this.device.size} bytes, not ${size}`);
      return result;
    } finally {
      this.changing = false;
    }
  }

  read(req: Request): Promise<ReadSegment[]> {
    return this.device.read(req);
  }

  async readInto(req: Request, into: Buffer[]): Promise<void> {
    if (this.device.readInto) return this.device.readInto(req, into);
    const segments = await this.device.read(req);
    scatterSegments(req.offset, into, segments);
    for (const s of segments) if (s.data) this.device.recycle?.(s.data);
  }

  payloadBuffer(size: number): Buffer {
    return this.device.payloadBuffer?.(size) ?? Buffer.allocUnsafe(size);
  }

  recycle(buffer: Buffer): void {
    this.device.recycle?.(buffer);
  }

  write(req: Request): Promise<void> {
    return this.device.write(req);
  }

  writeFrom(req: Request, from: Buffer[]): Promise<void> {
    if (this.device.writeFrom) return this.device.writeFrom(req, from);
    return this.device.write({ ...req, data: Buffer.concat(from) });
  }

  flush(): Promise<void> {
    return this.device.flush();
  }

  trim(req: Request): Promise<void> {
    return this.device.trim(req);
  }

  writeZeroes(req: Request): Promise<void> {
    return this.device.writeZeroes(req);
  }

  cache(req: Request): Promise<void> {
    return this.device.cache(req);
  }

  blockStatus(req: Request): Promise<Extent[]> {
    return this.device.blockStatus(req);
  }

  close(): Promise<void> {
    return this.device.close();
  }
}
