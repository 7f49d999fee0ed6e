// vblk info: what an image is and how much of it holds data.

import fs from 'node:fs';
import { RawImage } from '../device/images/raw.js';
import { request } from '../device/types.js';
import { ThreadsEngine } from '../io/threads-engine.js';
import { UsageError, type Command } from './command.js';
import { formatSize } from './size.js';

const HELP = `Usage: vblk info FILE [--json]

Print an image's format, virtual size, the disk space it takes, and how
many bytes of it hold data (the rest reads as zeroes from holes).

Options:
  --json       print one JSON object instead of text
  -h, --help   show this help

Examples:
  vblk info disk.img
  vblk info disk.img --json | jq .dataBytes
`;

export const info: Command<{ json?: boolean }> = {
  name: 'info',
  summary: 'show size and allocation of an image',
  help: HELP,
  options: { json: { type: 'boolean' } },
  async run(v, positionals) {
    if (positionals.length !== 1) throw new UsageError('expected exactly one FILE');
    const file = positionals[0];
    const image = RawImage.open(file, { readOnly: true, engine: new ThreadsEngine() });
    try {
      let dataBytes = 0;
      let dataExtents = 0;
      for (let offset = 0; offset < image.size; ) {
        const extents = await image.blockStatus(request('blockStatus', offset, image.size - offset));
        for (const e of extents) {
          if (!e.hole) {
            dataBytes += e.length;
            dataExtents++;
          }
          offset += e.length;
        }
      }
      const diskUsage = fs.statSync(file).blocks * 512;
      const result = { file, format: 'raw', virtualSize: image.size, diskUsage, dataBytes, dataExtents };
      if (v.json) {
        process.stdout.write(`${JSON.stringify(result)}\n`);
      } else {
        const pct = image.size ? ((100 * dataBytes) / image.size).toFixed(1) : '0.0';
        process.stdout.write(
          `file:          ${file}\n` +
            `format:        raw\n` +
            `virtual size:  ${formatSize(image.size)} (${image.size} bytes)\n` +
            `disk usage:    ${formatSize(diskUsage)}\n` +
            `data:          ${formatSize(dataBytes)} in ${dataExtents} extents (${pct}% of the virtual size)\n`,
        );
      }
      return 0;
    } finally {
      await image.close();
    }
  },
};
