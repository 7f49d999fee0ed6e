// vblk snapshot: external snapshots of an image chain, or the cluster's
// own snapshots of an RBD image (rbd-snapshot.ts).

import {
  createSnapshot,
  deleteSnapshot,
  forkSnapshot,
  listSnapshots,
  revertSnapshot,
} from '../device/images/snapshots.js';
import { SyncEngine } from '../io/sync-engine.js';
import { UsageError, type Command } from './command.js';
import { progressLine } from './progress.js';
import { formatSize } from './size.js';
import { CEPH_HELP, CEPH_OPTIONS, cephFromOptions, checkRbdName, type CephValues } from './ceph-options.js';
import { isRbdName } from '../device/images/rbd-name.js';
import { rbdSnapshot } from './rbd-snapshot.js';

const HELP = `Usage: vblk snapshot create IMAGE NAME
       vblk snapshot list IMAGE [--json]
       vblk snapshot revert IMAGE NAME
       vblk snapshot delete IMAGE NAME
       vblk snapshot fork IMAGE NAME NEWTOP

External snapshots of an image and its backing chain. IMAGE keeps its
path throughout, so whatever serves or boots it needs no change.

  create   freeze IMAGE as IMAGE@NAME (e.g. disk@before-upgrade.qcow2) and
           put a fresh empty qcow2 overlay at IMAGE on top of it
  list     the snapshots in IMAGE's chain, newest first
  revert   throw away everything written since NAME: the layers above it
           (newer snapshots too) are deleted and IMAGE becomes a fresh
           overlay on NAME
  delete   merge NAME's data into the layer above it and remove its file;
           what IMAGE reads does not change
  fork     make NEWTOP, a second overlay on NAME, beside IMAGE

Stop anything that uses IMAGE first (vblk serve, QEMU). Overlays made
with fork depend on their snapshot: reverting past it or deleting it
breaks them.

IMAGE may be an RBD image, rbd:POOL/IMAGE: its snapshots are then RBD
snapshots, which the rbd CLI lists too (rbd snap ls). create, list,
revert (rbd snap rollback: the image's content goes back to NAME; NAME
and newer snapshots stay) and delete work on them; fork is vblk clone
rbd:POOL/IMAGE@NAME rbd:POOL/NEW. Stop anything that writes the image
before a revert.

Options:
  --json       (list) print JSON
${CEPH_HELP}  -h, --help   show this help

Examples:
  vblk snapshot create disk.qcow2 before-upgrade
  vblk snapshot list disk.qcow2
  vblk snapshot revert disk.qcow2 before-upgrade
  vblk snapshot fork disk.qcow2 before-upgrade experiment.qcow2
  vblk snapshot delete disk.qcow2 before-upgrade
  vblk snapshot create rbd:vms/disk1 before-upgrade --ceph-conf /etc/ceph/lab.conf
`;

export const snapshot: Command<{ json?: boolean } & CephValues> = {
  name: 'snapshot',
  summary: 'create, list, revert, delete and fork external snapshots',
  help: HELP,
  options: { json: { type: 'boolean' }, ...CEPH_OPTIONS },
  async run(v, positionals) {
    const [action, image, name, newTop] = positionals;
    const want = (n: number): void => {
      if (positionals.length !== n) throw new UsageError(`snapshot ${action} takes ${n - 1} arguments`);
    };
    if (image !== undefined && isRbdName(image)) {
      checkRbdName(image);
      return rbdSnapshot(action, positionals, cephFromOptions(v), v.json === true);
    }
    const engine = new SyncEngine();
    switch (action) {
      case 'create': {
        want(3);
        const s = await createSnapshot(image, name, engine);
        process.stdout.write(`snapshot '${name}' of ${image} is ${s.file}; ${image} is now an empty overlay on it\n`);
        return 0;
      }
      case 'list': {
        want(2);
        const list = listSnapshots(image);
        if (v.json) {
          process.stdout.write(`${JSON.stringify(list)}\n`);
        } else if (list.length === 0) {
          process.stdout.write(`${image} has no snapshots\n`);
        } else {
          for (const s of list) {
            process.stdout.write(`${s.name.padEnd(24)} ${s.created.toISOString()}  ${formatSize(s.diskUsage).padStart(10)}  ${s.file}\n`);
          }
        }
        return 0;
      }
      case 'revert': {
        want(3);
        const dropped = await revertSnapshot(image, name, engine);
        process.stdout.write(`${image} is back at snapshot '${name}'; dropped ${dropped.join(', ')}\n`);
        return 0;
      }
      case 'delete': {
        want(3);
        const bar = progressLine(`merging '${name}'`);
        await deleteSnapshot(image, name, engine, bar.update);
        bar.finish();
        process.stdout.write(`snapshot '${name}' of ${image} is merged into the layer above it and removed\n`);
        return 0;
      }
      case 'fork': {
        want(4);
        await forkSnapshot(image, name, newTop, engine);
        process.stdout.write(`${newTop} is a new overlay on snapshot '${name}' of ${image}\n`);
        return 0;
      }
      default:
        throw new UsageError(action ? `unknown action '${action}'` : 'expected an action: create, list, revert, delete or fork');
    }
  },
};
