// vblk create: a new sparse raw image.

import { RawImage } from '../device/images/raw.js';
import { usage, UsageError, type Command } from './command.js';
import { formatSize, parseSize } from './size.js';

const HELP = `Usage: vblk create FILE --size SIZE

Create FILE as a sparse raw image of SIZE bytes: it takes no disk space
until data is written. Refuses to replace an existing file. Missing
parent directories are created.

Options:
  --size SIZE   virtual size: bytes, or with a K, M, G, T or P suffix
                (binary: 1K = 1024)
  -h, --help    show this help

Examples:
  vblk create disk.img --size 10G
  vblk create /tmp/scratch.img --size 512M
`;

export const create: Command<{ size?: string }> = {
  name: 'create',
  summary: 'create a sparse raw image',
  help: HELP,
  options: { size: { type: 'string' } },
  async run(v, positionals) {
    if (positionals.length !== 1) throw new UsageError('expected exactly one FILE');
    if (v.size === undefined) throw new UsageError('--size is required');
    const size = usage(() => parseSize(v.size!));
    RawImage.create(positionals[0], size);
    process.stdout.write(`created ${positionals[0]}: raw, ${formatSize(size)} (${size} bytes), sparse\n`);
    return 0;
  },
};
