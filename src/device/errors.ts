// One error type for everything below the protocol layer. Its code is an
// errno name from the small set every front end can express; the NBD and
// virtio layers each have one function that maps it to their wire values.

export type ErrorCode = 'EPERM' | 'EIO' | 'ENOMEM' | 'EINVAL' | 'ENOSPC' | 'EOVERFLOW' | 'ENOTSUP' | 'ESHUTDOWN';

export class DeviceError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'DeviceError';
  }
}

const SYSTEM_TO_DEVICE: Record<string, ErrorCode> = {
  EPERM: 'EPERM',
  EACCES: 'EPERM',
  EROFS: 'EPERM',
  ENOMEM: 'ENOMEM',
  EINVAL: 'EINVAL',
  ENOSPC: 'ENOSPC',
  EDQUOT: 'ENOSPC',
  EFBIG: 'ENOSPC',
  EOVERFLOW: 'EOVERFLOW',
  ENOTSUP: 'ENOTSUP',
  EOPNOTSUPP: 'ENOTSUP',
  ESHUTDOWN: 'ESHUTDOWN',
};

/** Turns anything thrown below the gateway into a DeviceError (EIO when unknown). */
export function toDeviceError(err: unknown): DeviceError {
  if (err instanceof DeviceError) return err;
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const message = err instanceof Error ? err.message : String(err);
  return new DeviceError((code && SYSTEM_TO_DEVICE[code]) || 'EIO', message);
}
