// vblk clone: copy a whole image file, by reflink where the file system
// can share extents, by a sparse in-kernel copy elsewhere; or clone an
// RBD snapshot into a new RBD image (layering).

import { cloneImage } from '../device/images/clone.js';
import { UsageError, type Command } from './command.js';
import { progressLine } from './progress.js';
import { formatSize } from './size.js';
import { CEPH_HELP, CEPH_OPTIONS, cephFromOptions, checkRbdName, type CephValues } from './ceph-options.js';
import { isRbdName } from '../device/images/rbd-name.js';
import { cloneRbd } from '../device/images/rbd-admin.js';

const HELP = `Usage: vblk clone SRC DST [--force] [--no-reflink]

Make DST a copy of the image file SRC, raw or qcow2, with SRC's
permissions. On XFS (mkfs.xfs -m reflink=1), btrfs and other file systems
that share extents it is a reflink: instant, and no space is used until
either file changes. Elsewhere it copies SRC's data with copy_file_range,
skipping holes, so DST is as sparse as SRC; a progress bar shows on
stderr. The last line says which of the two it did, and why no reflink.

A qcow2 file is copied as it is, backing file name included. A relative
backing name is read from the image's own directory, so when it would
name a different file (or none) from DST's directory, clone refuses and
writes nothing: clone into SRC's directory, or make an overlay instead
(vblk create DST --backing FILE).

Stop anything that writes SRC first (vblk serve, QEMU).

With rbd:POOL/IMAGE@SNAPSHOT as SRC and rbd:POOL/NEW as DST, DST becomes
an RBD clone of the snapshot (layering: instant, copy-on-write, reading
through to the snapshot until written). The snapshot is protected first;
rbd children lists the clone.

Options:
  --force        replace DST if it exists (the old DST stays until the
                 new one is complete)
  --no-reflink   do not try FICLONE; copy with copy_file_range (which
                 XFS and btrfs may still do by sharing extents)
${CEPH_HELP}  -h, --help     show this help

Examples:
  vblk clone golden.img vm1.img
  vblk clone base.qcow2 base-copy.qcow2
  vblk clone disk.qcow2 disk-backup.qcow2 --force
  vblk clone rbd:vms/golden@v1 rbd:vms/vm7 --ceph-conf /etc/ceph/lab.conf
`;

export const clone: Command<{ force?: boolean; 'no-reflink'?: boolean } & CephValues> = {
  name: 'clone',
  summary: 'copy an image file (reflink where possible, else a sparse copy)',
  help: HELP,
  options: { force: { type: 'boolean' }, 'no-reflink': { type: 'boolean' }, ...CEPH_OPTIONS },
  async run(v, positionals) {
    if (positionals.length !== 2) throw new UsageError('expected SRC and DST');
    const [src, dst] = positionals;
    if (isRbdName(src) || isRbdName(dst)) {
      if (!isRbdName(src) || !isRbdName(dst)) throw new UsageError('an RBD clone is made of an RBD snapshot: both SRC and DST are rbd: names');
      checkRbdName(src);
      checkRbdName(dst);
      if (v.force || v['no-reflink']) throw new UsageError('--force and --no-reflink are for image files');
      await cloneRbd(src, dst, cephFromOptions(v));
      process.stdout.write(`${dst} is a clone of ${src}\n`);
      return 0;
    }
    const bar = progressLine(`copying ${src}`);
    let started = false;
    const result = cloneImage(src, dst, {
      force: v.force,
      noReflink: v['no-reflink'],
      progress(done, total) {
        started = true;
        bar.update(done, total);
      },
    });
    if (started) bar.finish();
    const what = `${src} -> ${dst}, ${formatSize(result.size)}`;
    if (result.method === 'reflink') {
      process.stdout.write(`cloned with reflink: ${what}\n`);
    } else {
      const why = result.reason === null ? '--no-reflink' : `reflink not supported here: ${result.reason}`;
      process.stdout.write(`copied ${result.copied} bytes with ${result.method} (${why}): ${what} image\n`);
    }
    return 0;
  },
};
