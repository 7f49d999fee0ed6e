// vblk create: a new image, raw or qcow2, optionally on a backing file,
// or a new RBD image in a Ceph cluster.

import fs from 'node:fs';
import path from 'node:path';
import { detectFormat, openImage } from '../device/images/open.js';
import { createQcow2 } from '../device/images/qcow2/create.js';
import { RawImage } from '../device/images/raw.js';
import { SyncEngine } from '../io/sync-engine.js';
import { usage, UsageError, type Command } from './command.js';
import { formatSize, parseSize } from './size.js';
import { CEPH_HELP, CEPH_OPTIONS, cephFromOptions, checkRbdName, type CephValues } from './ceph-options.js';
import { formatRbdName, isRbdName, parseRbdName } from '../device/images/rbd-name.js';
import type { CephOptions } from '../device/images/rbd-cluster.js';
import { createRbd } from '../device/images/rbd-admin.js';

const HELP = `Usage: vblk create FILE [--size SIZE] [--format raw|qcow2] [--backing FILE]

Create a new image. Raw images are sparse files: they take no disk space
until data is written. qcow2 images (the format when FILE ends in .qcow2,
or with --backing) start with only their metadata, and with --backing
they are copy-on-write overlays: reads come from the backing file until a
cluster is written. The backing file's format is detected and recorded,
and its path is stored relative to FILE's directory. Refuses to replace
an existing file; missing parent directories are created.

FILE may be rbd:POOL[/NAMESPACE]/IMAGE: a new RBD image in a Ceph cluster,
with the cluster's default features (exclusive-lock among them), thin
provisioned like a sparse file. --backing may name an RBD image too (or
a snapshot of one): a local qcow2 overlay on a shared image, which QEMU
opens as well (its backing file is the rbd: name, format raw, with the
--ceph-* options given written into it as conf=, id= and keyring=, so
QEMU reaches the same cluster).

Options:
  --size SIZE           virtual size: bytes, or with a K, M, G, T or P
                        suffix (binary: 1K = 1024); with --backing it
                        defaults to the backing file's size
  --format FORMAT       raw or qcow2 (default: qcow2 for *.qcow2 or with
                        --backing, raw otherwise)
  --backing FILE        make a qcow2 overlay on FILE (raw or qcow2, or an
                        rbd: image)
  --object-size SIZE    for an RBD image, its object size, a power of two
                        from 4K to 32M (default: the cluster's, 4M)
  --cluster-size SIZE   qcow2 cluster size, 512 to 2M (default 64K)
${CEPH_HELP}  -h, --help            show this help

Examples:
  vblk create disk.img --size 10G
  vblk create disk.qcow2 --size 20G
  vblk create top.qcow2 --backing base.img
  vblk create vm/overlay.qcow2 --backing ../images/debian.qcow2 --size 40G
  vblk create rbd:vms/disk1 --size 20G --ceph-conf /etc/ceph/lab.conf
  vblk create local.qcow2 --backing rbd:vms/golden@v1 --ceph-id vblk
`;

/** An rbd: name with the --ceph-* options it does not name itself written into it (as QEMU reads them). */
function withCephOptions(name: string, ceph: CephOptions): string {
  const parsed = parseRbdName(name);
  const have = new Set(parsed.options.map(([k]) => k));
  for (const [key, value] of [['conf', ceph.conf], ['id', ceph.id], ['keyring', ceph.keyring]] as const) {
    if (value !== undefined && !have.has(key)) parsed.options.push([key, key === 'id' ? value : path.resolve(value)]);
  }
  return formatRbdName(parsed);
}

interface CreateValues extends CephValues {
  'object-size'?: string;
  size?: string;
  format?: string;
  backing?: string;
  'cluster-size'?: string;
}

export const create: Command<CreateValues> = {
  name: 'create',
  summary: 'create a raw or qcow2 image, or a qcow2 overlay',
  help: HELP,
  options: {
    size: { type: 'string' },
    format: { type: 'string' },
    backing: { type: 'string' },
    'cluster-size': { type: 'string' },
    'object-size': { type: 'string' },
    ...CEPH_OPTIONS,
  },
  async run(v, positionals) {
    if (positionals.length !== 1) throw new UsageError('expected exactly one FILE');
    const file = positionals[0];
    checkRbdName(file);
    if (v.backing) checkRbdName(v.backing);
    const ceph = cephFromOptions(v);
    if (isRbdName(file)) {
      if (v.backing || v['cluster-size'] || (v.format && v.format !== 'raw')) {
        throw new UsageError('an RBD image is raw: --backing, --cluster-size and --format qcow2 are for files (clone an RBD snapshot with vblk clone)');
      }
      if (v.size === undefined) throw new UsageError('--size is required');
      const size = usage(() => parseSize(v.size!));
      const objectSize = v['object-size'] === undefined ? undefined : usage(() => parseSize(v['object-size']!));
      if (objectSize !== undefined && (objectSize < 4096 || objectSize > 32 << 20 || !Number.isInteger(Math.log2(objectSize)))) {
        throw new UsageError('--object-size must be a power of two from 4K to 32M');
      }
      await createRbd(file, size, ceph, { objectSize });
      process.stdout.write(`created ${file}: RBD image, ${formatSize(size)} (${size} bytes), thin provisioned\n`);
      return 0;
    }
    if (v['object-size']) throw new UsageError('--object-size is for rbd: images');
    const format = v.format ?? (v.backing || file.endsWith('.qcow2') ? 'qcow2' : 'raw');
    if (format !== 'raw' && format !== 'qcow2') throw new UsageError('--format must be raw or qcow2');
    if (format === 'raw' && (v.backing || v['cluster-size'])) {
      throw new UsageError('--backing and --cluster-size need --format qcow2');
    }
    if (fs.existsSync(file)) throw new Error(`${file} already exists; vblk create never replaces a file`);
    let size = v.size === undefined ? undefined : usage(() => parseSize(v.size!));
    if (format === 'raw') {
      if (size === undefined) throw new UsageError('--size is required');
      RawImage.create(file, size);
      process.stdout.write(`created ${file}: raw, ${formatSize(size)} (${size} bytes), sparse\n`);
      return 0;
    }
    let backingFile: string | undefined;
    let backingFormat: string | undefined;
    if (v.backing) {
      // An rbd: name is kept as it is; a file is stored relative to FILE's directory.
      const below = isRbdName(v.backing) ? withCephOptions(v.backing, ceph) : path.resolve(v.backing);
      backingFormat = detectFormat(below);
      if (size === undefined) {
        const image = await openImage(below, { readOnly: true, engine: new SyncEngine(), ceph });
        size = image.size;
        await image.close();
      }
      backingFile = isRbdName(below) ? below : path.relative(path.dirname(path.resolve(file)), below);
    }
    if (size === undefined) throw new UsageError('--size is required without --backing');
    const clusterSize = v['cluster-size'] === undefined ? 65536 : usage(() => parseSize(v['cluster-size']!));
    const clusterBits = Math.log2(clusterSize);
    if (!Number.isInteger(clusterBits)) throw new UsageError('--cluster-size must be a power of two');
    createQcow2(file, { size, clusterBits, backingFile, backingFormat });
    const on = backingFile ? `, backed by ${backingFile} (${backingFormat})` : '';
    process.stdout.write(`created ${file}: qcow2, ${formatSize(size)} (${size} bytes)${on}\n`);
    return 0;
  },
};
