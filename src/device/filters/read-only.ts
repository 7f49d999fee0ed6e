// A read-only view of a device that a writable export of the same image
// also serves: one server opens an image once (one descriptor, one lock,
// one cache), and its read-only exports see it through this view. The
// gateway refuses writes by the capabilities alone; the view also drops
// flush (nothing to persist through it) and leaves closing to the owner.

import { DeviceError } from '../errors.js';
import type { BlockDevice, Capabilities, Extent, ReadSegment, Request } from '../types.js';

function refuse(): Promise<never> {
  return Promise.reject(new DeviceError('EPERM', 'the export is read-only'));
}

export function readOnlyView(next: BlockDevice): BlockDevice {
  const capabilities: Capabilities = { ...next.capabilities, readOnly: true, flush: false, trim: false, zero: false, fastZero: false };
  return {
    next,
    size: next.size,
    capabilities,
    description: `${next.description} (read-only view)`,
    read: (req: Request): Promise<ReadSegment[]> => next.read(req),
    recycle: next.recycle && ((buffer: Buffer) => next.recycle!(buffer)),
    write: refuse,
    flush: () => Promise.resolve(),
    trim: refuse,
    writeZeroes: refuse,
    cache: (req: Request) => next.cache(req),
    blockStatus: (req: Request): Promise<Extent[]> => next.blockStatus(req),
    close: () => Promise.resolve(),
  };
}
