// vblk create: a new image, raw or qcow2, optionally on a backing file.

import fs from 'node:fs';
import path from 'node:path';
import { detectFormat, openImage } from '../device/images/open.js';
import { createQcow2 } from '../device/images/qcow2/create.js';
import { RawImage } from '../device/images/raw.js';
import { SyncEngine } from '../io/sync-engine.js';
import { usage, UsageError, type Command } from './command.js';
import { formatSize, parseSize } from './size.js';

const HELP = `Usage: vblk create FILE [--size SIZE] [--format raw|qcow2] [--backing FILE]

Create a new image. Raw images are sparse files: they take no disk space
until data is written. qcow2 images (the format when FILE ends in .qcow2,
or with --backing) start with only their metadata, and with --backing
they are copy-on-write overlays: reads come from the backing file until a
cluster is written. The backing file's format is detected and recorded,
and its path is stored relative to FILE's directory. Refuses to replace
an existing file; missing parent directories are created.

Options:
  --size SIZE           virtual size: bytes, or with a K, M, G, T or P
                        suffix (binary: 1K = 1024); with --backing it
                        defaults to the backing file's size
  --format FORMAT       raw or qcow2 (default: qcow2 for *.qcow2 or with
                        --backing, raw otherwise)
  --backing FILE        make a qcow2 overlay on FILE (raw or qcow2)
  --cluster-size SIZE   qcow2 cluster size, 512 to 2M (default 64K)
  -h, --help            show this help

Examples:
  vblk create disk.img --size 10G
  vblk create disk.qcow2 --size 20G
  vblk create top.qcow2 --backing base.img
  vblk create vm/overlay.qcow2 --backing ../images/debian.qcow2 --size 40G
`;

interface CreateValues {
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
  },
  async run(v, positionals) {
    if (positionals.length !== 1) throw new UsageError('expected exactly one FILE');
    const file = positionals[0];
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
      const below = path.resolve(v.backing);
      backingFormat = detectFormat(below);
      if (size === undefined) {
        const image = await openImage(below, { readOnly: true, engine: new SyncEngine() });
        size = image.size;
        await image.close();
      }
      backingFile = path.relative(path.dirname(path.resolve(file)), below);
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
