// Zeroing a range on a device, whatever it can do: natively where its
// capabilities say it zeroes (and it does not answer ENOTSUP), otherwise
// by writing zero buffers a MiB at a time. The gateway fills in
// write-zeroes this way for every export, and the power-cut filter writes
// down cached zero requests with it.

import { DeviceError, toDeviceError } from './errors.js';
import type { BlockDevice, Request } from './types.js';

const ZERO_WRITE_CHUNK = 1 << 20;

/** A write-zeroes request on `device`; with fastZero only natively (ENOTSUP otherwise); with fua, flushed after writing buffers. */
export async function writeZeroes(device: BlockDevice, req: Request): Promise<void> {
  if (device.capabilities.zero) {
    try {
      return await device.writeZeroes(req);
    } catch (err) {
      if (req.fastZero || toDeviceError(err).code !== 'ENOTSUP') throw err;
    }
  } else if (req.fastZero) {
    throw new DeviceError('ENOTSUP', 'this export cannot zero faster than it writes');
  }
  const zeroes = Buffer.alloc(Math.min(req.length, ZERO_WRITE_CHUNK));
  for (let done = 0; done < req.length; done += zeroes.length) {
    const n = Math.min(zeroes.length, req.length - done);
    const data = n === zeroes.length ? zeroes : zeroes.subarray(0, n);
    await device.write({ ...req, op: 'write', offset: req.offset + done, length: n, data, fua: false });
  }
  if (req.fua) await device.flush();
}
