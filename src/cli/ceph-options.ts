// How every subcommand that takes an rbd: name reaches the cluster:
// --ceph-conf FILE, --ceph-id NAME and --ceph-keyring FILE, with the ceph
// CLI's defaults ($CEPH_CONF, then /etc/ceph/ceph.conf and the other
// places librados looks; client.admin; the keyring the configuration
// names). KEY=VALUE pairs in a name (conf=, id=, keyring=) win for that
// image. `vblk serve` adds --rbd-lock and --rbd-timeout.

import type { RbdLockMode } from '../device/images/rbd.js';
import type { CephOptions } from '../device/images/rbd-cluster.js';
import { parseRbdName, isRbdName } from '../device/images/rbd-name.js';
import { numberOption, usage, UsageError } from './command.js';

export interface CephValues {
  'ceph-conf'?: string;
  'ceph-id'?: string;
  'ceph-keyring'?: string;
}

export const CEPH_OPTIONS = {
  'ceph-conf': { type: 'string' },
  'ceph-id': { type: 'string' },
  'ceph-keyring': { type: 'string' },
} as const;

export const CEPH_HELP = `  --ceph-conf FILE         for rbd: images, the cluster's ceph.conf (default:
                           $CEPH_CONF, then where the ceph CLI looks,
                           /etc/ceph/ceph.conf first)
  --ceph-id NAME           the Ceph client name without 'client.' (default
                           admin)
  --ceph-keyring FILE      the client's keyring (default: what ceph.conf
                           names, /etc/ceph/ceph.client.NAME.keyring)
`;

export const RBD_NAME_HELP = `RBD images: rbd:POOL[/NAMESPACE]/IMAGE[@SNAPSHOT][:KEY=VALUE...] names an
image in a Ceph cluster, as QEMU writes it (a snapshot is read-only);
KEY=VALUE pairs (conf=FILE, id=NAME, keyring=FILE, or any Ceph option)
apply to that image and win over --ceph-*.
`;

export function cephFromOptions(v: CephValues): CephOptions {
  return { conf: v['ceph-conf'], id: v['ceph-id'], keyring: v['ceph-keyring'] };
}

/** Checks an rbd: name on the command line (a mistake is a UsageError); other names pass. */
export function checkRbdName(name: string): void {
  if (isRbdName(name)) usage(() => parseRbdName(name));
}

export interface RbdServeValues extends CephValues {
  'rbd-lock'?: string;
  'rbd-timeout'?: string;
}

export const RBD_SERVE_OPTIONS = {
  ...CEPH_OPTIONS,
  'rbd-lock': { type: 'string' },
  'rbd-timeout': { type: 'string' },
} as const;

export const RBD_SERVE_HELP = `${CEPH_HELP}  --rbd-lock fail|wait|off  a writable rbd: image is served holding RBD's
                           exclusive lock, handed to nobody until vblk
                           exits. When another client (a vblk, a QEMU)
                           holds it: fail (default) exits with its name;
                           wait waits until it is released; off shares
                           the image as librbd would (writers take turns,
                           nothing keeps them from each other's data)
  --rbd-timeout SEC        an rbd: request the cluster has not answered in
                           SEC seconds (an OSD down) fails with EIO; 0, the
                           default, waits until the cluster is back
`;

export const RBD_LOCK_MODES: readonly RbdLockMode[] = ['fail', 'wait', 'off'];

export function rbdServeOptions(v: RbdServeValues): { ceph: CephOptions; rbdLock: RbdLockMode } {
  const lock = (v['rbd-lock'] ?? 'fail') as RbdLockMode;
  if (!RBD_LOCK_MODES.includes(lock)) throw new UsageError(`--rbd-lock must be ${RBD_LOCK_MODES.join(', ')}, not '${v['rbd-lock']}'`);
  const timeout = numberOption('rbd-timeout', v['rbd-timeout'], 0, 0, 86400);
  return { ceph: { ...cephFromOptions(v), timeout }, rbdLock: lock };
}
