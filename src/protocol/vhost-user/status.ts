// The one place a device error becomes a virtio-blk status byte. virtio
// has only IOERR ("device or driver error") and UNSUPP ("a request
// unsupported by device"); every errno but ENOTSUP is an IOERR, EPERM on
// a read-only device included, as the spec asks for writes there.

import type { ErrorCode } from '../../device/errors.js';
import { VIRTIO_BLK_S } from './virtio-constants.js';

export function virtioStatus(code: ErrorCode): number {
  return code === 'ENOTSUP' ? VIRTIO_BLK_S.UNSUPP : VIRTIO_BLK_S.IOERR;
}
