// vblk resize: change an image's virtual size.

import { resizeImage } from '../device/images/resize.js';
import { SyncEngine } from '../io/sync-engine.js';
import { usage, UsageError, type Command } from './command.js';
import { formatSize, parseSize } from './size.js';

const HELP = `Usage: vblk resize FILE [+]SIZE [--shrink]

Set FILE's virtual size to SIZE, or grow it by +SIZE. Raw
images are truncated or extended (sparse); qcow2 images grow, moving
their L1 table to a larger one where the new size needs it, and never
shrink. Shrinking a raw image loses what lies past the new end, so it
needs --shrink. The image must not be in use: it is locked for writing
as QEMU would lock it. Clients connected to a server see the old size.

Options:
  --shrink     allow a raw image to get smaller
  -h, --help   show this help

Examples:
  vblk resize disk.qcow2 40G
  vblk resize disk.img +1G
  vblk resize disk.img 512M --shrink
`;

export const resize: Command<{ shrink?: boolean }> = {
  name: 'resize',
  summary: 'change the virtual size of an image',
  help: HELP,
  options: { shrink: { type: 'boolean' } },
  async run(v, positionals) {
    if (positionals.length !== 2) throw new UsageError('expected FILE and SIZE');
    const [file, text] = positionals;
    const grow = text.startsWith('+');
    const amount = usage(() => parseSize(grow ? text.slice(1) : text));
    const newSize = (current: number): number => (grow ? current + amount : amount);
    const r = await resizeImage(file, newSize, new SyncEngine(), { shrink: v.shrink === true });
    process.stdout.write(`resized ${file} (${r.format}) from ${formatSize(r.from)} to ${formatSize(r.to)}\n`);
    return 0;
  },
};
