// vblk info: what an image is and how much of it holds data.

import fs from 'node:fs';
import { RawImage } from '../device/images/raw.js';
import { request } from '../device/types.js';
import { engineReports } from '../io/probe.js';
import { SyncEngine } from '../io/sync-engine.js';
import { UsageError, type Command } from './command.js';
import { formatSize } from './size.js';

const HELP = `Usage: vblk info FILE [--json]
       vblk info --engines [--json]

Print an image's format, virtual size, the disk space it takes, and how
many bytes of it hold data (the rest reads as zeroes from holes). With
--engines, list the I/O engines this host can run instead, and why any
cannot.

Options:
  --json       print one JSON object instead of text
  --engines    list the I/O engines (for vblk serve --engine)
  -h, --help   show this help

Examples:
  vblk info disk.img
  vblk info disk.img --json | jq .dataBytes
  vblk info --engines
`;

function printEngines(json: boolean): number {
  const reports = engineReports();
  if (json) {
    process.stdout.write(`${JSON.stringify({ engines: reports })}\n`);
  } else {
    for (const r of reports) {
      process.stdout.write(`${r.name.padEnd(10)} ${r.available ? 'yes' : 'no '}  ${r.detail}\n`);
    }
  }
  return 0;
}

export const info: Command<{ json?: boolean; engines?: boolean }> = {
  name: 'info',
  summary: 'show size and allocation of an image, or the I/O engines',
  help: HELP,
  options: { json: { type: 'boolean' }, engines: { type: 'boolean' } },
  async run(v, positionals) {
    if (v.engines) {
      if (positionals.length > 0) throw new UsageError('--engines takes no FILE');
      return printEngines(v.json === true);
    }
    if (positionals.length !== 1) throw new UsageError('expected exactly one FILE');
    const file = positionals[0];
    const image = RawImage.open(file, { readOnly: true, engine: new SyncEngine() });
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
