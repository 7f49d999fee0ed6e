// vblk commit: merge an overlay down into its backing file.

import fs from 'node:fs';
import { commitDown } from '../device/images/chain-ops.js';
import { backingChain } from '../device/images/open.js';
import { createQcow2 } from '../device/images/qcow2/create.js';
import { decodeHeader } from '../device/images/qcow2/format.js';
import { SyncEngine } from '../io/sync-engine.js';
import { UsageError, type Command } from './command.js';
import { progressLine } from './progress.js';
import { formatSize } from './size.js';
import { CEPH_HELP, CEPH_OPTIONS, cephFromOptions, type CephValues } from './ceph-options.js';

const HELP = `Usage: vblk commit TOP [--keep]

Write everything TOP holds itself into its backing file, so the backing
file reads as TOP did. Then TOP is emptied (as qemu-img commit does), so
it stays a valid overlay that reads the same; --keep leaves it as it was.
Shows progress on stderr. Stop anything that uses TOP or its backing file
first. The backing file may be an RBD image (rbd:POOL/IMAGE): a local
overlay on a shared image is committed into the cluster, holding the
image's exclusive lock while it writes.

Options:
  --keep       do not empty TOP afterwards
${CEPH_HELP}  -h, --help   show this help

Examples:
  vblk commit top.qcow2
  vblk commit vm/overlay.qcow2 --keep
  vblk commit vm/local.qcow2 --ceph-conf /etc/ceph/lab.conf   # backed by rbd:vms/golden
`;

/** Replaces TOP by an empty overlay with the same size, cluster size and backing file. */
function empty(top: string): void {
  const head = Buffer.alloc(2 << 20);
  const fd = fs.openSync(top, 'r');
  const h = decodeHeader(head.subarray(0, fs.readSync(fd, head, 0, head.length, 0)));
  fs.closeSync(fd);
  const temp = `${top}.empty-${process.pid}`;
  createQcow2(temp, {
    size: h.size,
    clusterBits: h.clusterBits,
    backingFile: h.backingFile ?? undefined,
    backingFormat: h.backingFormat ?? undefined,
  });
  fs.renameSync(temp, top);
}

export const commit: Command<{ keep?: boolean } & CephValues> = {
  name: 'commit',
  summary: 'merge a qcow2 overlay into its backing file',
  help: HELP,
  options: { keep: { type: 'boolean' }, ...CEPH_OPTIONS },
  async run(v, positionals) {
    if (positionals.length !== 1) throw new UsageError('expected exactly one TOP');
    const top = positionals[0];
    if (backingChain(top).length < 2) throw new Error(`${top} has no backing file to commit into`);
    const bar = progressLine(`committing ${top}`);
    const { backing, bytes } = await commitDown(top, new SyncEngine(), bar.update, cephFromOptions(v));
    bar.finish();
    if (!v.keep) empty(top);
    process.stdout.write(`committed ${formatSize(bytes)} of ${top} into ${backing}${v.keep ? '' : `; ${top} is empty again`}\n`);
    return 0;
  },
};
