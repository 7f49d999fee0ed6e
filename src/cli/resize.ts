// vblk resize: change an image's virtual size.

import { resizeImage } from '../device/images/resize.js';
import { SyncEngine } from '../io/sync-engine.js';
import { usage, UsageError, type Command } from './command.js';
import { formatSize, parseSize } from './size.js';
import { CEPH_HELP, CEPH_OPTIONS, cephFromOptions, checkRbdName, type CephValues } from './ceph-options.js';
import { isRbdName } from '../device/images/rbd-name.js';
import { resizeRbd } from '../device/images/rbd-admin.js';

const HELP = `Usage: vblk resize FILE [+]SIZE [--shrink]

Set FILE's virtual size to SIZE, or grow it by +SIZE. Raw
images are truncated or extended (sparse); qcow2 images grow, moving
their L1 table to a larger one where the new size needs it, and never
shrink. Shrinking a raw image loses what lies past the new end, so it
needs --shrink. The image must not be in use: it is locked for writing
as QEMU would lock it. Clients connected to a server see the old size.
An RBD image (rbd:POOL/IMAGE) is resized in the cluster (rbd resize),
smaller only with --shrink.

Options:
  --shrink     allow a raw or RBD image to get smaller
${CEPH_HELP}  -h, --help   show this help

Examples:
  vblk resize disk.qcow2 40G
  vblk resize disk.img +1G
  vblk resize disk.img 512M --shrink
  vblk resize rbd:vms/disk1 +10G --ceph-conf /etc/ceph/lab.conf
`;

export const resize: Command<{ shrink?: boolean } & CephValues> = {
  name: 'resize',
  summary: 'change the virtual size of an image',
  help: HELP,
  options: { shrink: { type: 'boolean' }, ...CEPH_OPTIONS },
  async run(v, positionals) {
    if (positionals.length !== 2) throw new UsageError('expected FILE and SIZE');
    const [file, text] = positionals;
    const grow = text.startsWith('+');
    const amount = usage(() => parseSize(grow ? text.slice(1) : text));
    const newSize = (current: number): number => (grow ? current + amount : amount);
    checkRbdName(file);
    const r = isRbdName(file)
      ? { format: 'rbd', ...(await resizeRbd(file, newSize, v.shrink === true, cephFromOptions(v))) }
      : await resizeImage(file, newSize, new SyncEngine(), { shrink: v.shrink === true });
    process.stdout.write(`resized ${file} (${r.format}) from ${formatSize(r.from)} to ${formatSize(r.to)}\n`);
    return 0;
  },
};
