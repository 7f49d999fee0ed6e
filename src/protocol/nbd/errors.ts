// The one place a device error becomes an NBD error value.

import type { ErrorCode } from '../../device/errors.js';
import { NBD_ERR } from './constants.js';

export function nbdErrno(code: ErrorCode): number {
  return NBD_ERR[code] ?? NBD_ERR.EIO;
}

export function nbdErrorName(value: number): string {
  for (const [name, v] of Object.entries(NBD_ERR)) if (v === value) return name;
  return `error ${value}`;
}
