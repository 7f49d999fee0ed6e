// vblk snapshot ACTION rbd:POOL/IMAGE [NAME]: the cluster's snapshots of
// an RBD image (snapshot.ts handles image files).

import {
  createRbdSnapshot,
  deleteRbdSnapshot,
  listRbdSnapshots,
  revertRbdSnapshot,
} from '../device/images/rbd-admin.js';
import type { CephOptions } from '../device/images/rbd-cluster.js';
import { UsageError } from './command.js';
import type { RbdSnapshot } from '../io/rbd-native.js';
import { formatSize } from './size.js';

/** One snapshot as `vblk snapshot list` and `vblk info` print it. */
export function snapshotLine(s: RbdSnapshot): string {
  return `${s.name.padEnd(24)} ${formatSize(s.size).padStart(10)}${s.protected ? '  protected' : ''}`;
}

export async function rbdSnapshot(action: string, positionals: string[], ceph: CephOptions, json: boolean): Promise<number> {
  const [, image, name] = positionals;
  const want = (n: number): void => {
    if (positionals.length !== n) throw new UsageError(`snapshot ${action} takes ${n - 1} arguments`);
  };
  switch (action) {
    case 'create':
      want(3);
      await createRbdSnapshot(image, name, ceph);
      process.stdout.write(`snapshot '${name}' of ${image} created (${image}@${name}, read-only)\n`);
      return 0;
    case 'list': {
      want(2);
      const list = await listRbdSnapshots(image, ceph);
      if (json) process.stdout.write(`${JSON.stringify(list)}\n`);
      else if (list.length === 0) process.stdout.write(`${image} has no snapshots\n`);
      else for (const s of list) process.stdout.write(`${snapshotLine(s)}\n`);
      return 0;
    }
    case 'revert':
      want(3);
      await revertRbdSnapshot(image, name, ceph);
      process.stdout.write(`${image} is back at snapshot '${name}'\n`);
      return 0;
    case 'delete':
      want(3);
      await deleteRbdSnapshot(image, name, ceph);
      process.stdout.write(`snapshot '${name}' of ${image} deleted\n`);
      return 0;
    case 'fork':
      throw new UsageError(`an RBD snapshot is forked with vblk clone ${image}@NAME rbd:POOL/NEW`);
    default:
      throw new UsageError(action ? `unknown action '${action}'` : 'expected an action: create, list, revert or delete');
  }
}
