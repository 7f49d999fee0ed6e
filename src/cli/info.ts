// vblk info: what an image is and how much of it holds data.

import fs from 'node:fs';
import { imageMap } from '../device/images/map.js';
import { backingChain, openImage } from '../device/images/open.js';
import { Qcow2Image } from '../device/images/qcow2/qcow2-image.js';
import { engineReports } from '../io/probe.js';
import { SyncEngine } from '../io/sync-engine.js';
import { UsageError, type Command } from './command.js';
import { formatSize } from './size.js';
import { CEPH_HELP, CEPH_OPTIONS, cephFromOptions, checkRbdName, type CephValues } from './ceph-options.js';
import { printRbdInfo } from './rbd-info.js';
import { isRbdName } from '../device/images/rbd-name.js';
import { rbdNative, rbdUnavailable } from '../io/rbd-native.js';

const HELP = `Usage: vblk info FILE [--json] [-U]
       vblk info --engines [--json]

Print an image's format, virtual size, the disk space it takes, how many
bytes of it hold data (the rest reads as zeroes), and for a qcow2 overlay
how much of it is its own and its backing chain. With
--engines, list the I/O engines this host can run instead, and why any
cannot, and whether rbd: images can be served.

FILE may be an RBD image, rbd:POOL/IMAGE[@SNAPSHOT]: then its size, object
size, features, parent, snapshots and who holds its exclusive lock.

Options:
  --json       print one JSON object instead of text
  -U, --force-share
               read the image without locking it, even while QEMU or
               vblk serve writes it (what it shows may be stale)
  --engines    list the I/O engines (for vblk serve --engine)
${CEPH_HELP}  -h, --help   show this help

Examples:
  vblk info disk.img
  vblk info disk.img --json | jq .dataBytes
  vblk info top.qcow2
  vblk info -U disk.qcow2      # while a VM or vblk serve has it open
  vblk info rbd:vms/disk1 --ceph-conf /etc/ceph/lab.conf
  vblk info --engines
`;

function printEngines(json: boolean): number {
  const reports = engineReports();
  const rbd = rbdNative ? { available: true, detail: `librbd ${rbdNative.librbdVersion()}` } : { available: false, detail: rbdUnavailable };
  if (json) {
    process.stdout.write(`${JSON.stringify({ engines: reports, rbd })}\n`);
  } else {
    for (const r of reports) {
      process.stdout.write(`${r.name.padEnd(10)} ${r.available ? 'yes' : 'no '}  ${r.detail}\n`);
    }
    process.stdout.write(`\nrbd: images ${rbd.available ? 'yes' : 'no '}  ${rbd.detail}\n`);
  }
  return 0;
}

export const info: Command<{ json?: boolean; engines?: boolean; 'force-share'?: boolean } & CephValues> = {
  name: 'info',
  summary: 'show size and allocation of an image, or the I/O engines',
  help: HELP,
  options: { json: { type: 'boolean' }, engines: { type: 'boolean' }, 'force-share': { type: 'boolean', short: 'U' }, ...CEPH_OPTIONS },
  async run(v, positionals) {
    if (v.engines) {
      if (positionals.length > 0) throw new UsageError('--engines takes no FILE');
      return printEngines(v.json === true);
    }
    if (positionals.length !== 1) throw new UsageError('expected exactly one FILE');
    const file = positionals[0];
    checkRbdName(file);
    const ceph = cephFromOptions(v);
    if (isRbdName(file)) return printRbdInfo(file, ceph, v.json === true);
    const chain = backingChain(file);
    const image = await openImage(file, { readOnly: true, engine: new SyncEngine(), forceShare: v['force-share'], ceph });
    try {
      const map = await imageMap(image);
      const data = map.filter((e) => e.data);
      const dataBytes = data.reduce((n, e) => n + e.length, 0);
      const ownBytes = map.filter((e) => e.present && e.depth === 0).reduce((n, e) => n + e.length, 0);
      const layers = [];
      for (const layer of chain) {
        const opened = layer === chain[0] ? image : await openImage(layer.file, { readOnly: true, engine: new SyncEngine(), forceShare: v['force-share'], ceph });
        // An RBD layer's space is the cluster's (vblk info rbd:... tells).
        const diskUsage = isRbdName(layer.file) ? undefined : fs.statSync(layer.file).blocks * 512;
        layers.push({ file: layer.file, format: layer.format, virtualSize: opened.size, diskUsage });
        if (opened !== image) await opened.close();
      }
      const clusterSize = image instanceof Qcow2Image ? image.clusterSize : undefined;
      const result = {
        file,
        format: chain[0].format,
        virtualSize: image.size,
        diskUsage: layers[0].diskUsage!,
        ...(clusterSize ? { clusterSize } : {}),
        dataBytes,
        dataExtents: data.length,
        ownBytes,
        backingChain: layers.slice(1),
      };
      if (v.json) {
        process.stdout.write(`${JSON.stringify(result)}\n`);
        return 0;
      }
      const pct = (n: number): string => (image.size ? ((100 * n) / image.size).toFixed(1) : '0.0');
      let out =
        `file:          ${file}\n` +
        `format:        ${result.format}${clusterSize ? ` (cluster size ${formatSize(clusterSize)})` : ''}\n` +
        `virtual size:  ${formatSize(image.size)} (${image.size} bytes)\n` +
        `disk usage:    ${formatSize(result.diskUsage)}\n` +
        `data:          ${formatSize(dataBytes)} in ${data.length} extents (${pct(dataBytes)}% of the virtual size)\n`;
      if (chain.length > 1) {
        out += `in this layer: ${formatSize(ownBytes)} (${pct(ownBytes)}%; the rest reads through to the backing chain)\n`;
        out += `backing chain:\n`;
        layers.slice(1).forEach((l, i) => {
          out += `  ${i + 1}. ${l.file} (${l.format}, ${formatSize(l.virtualSize)})\n`;
        });
      }
      process.stdout.write(out);
      return 0;
    } finally {
      await image.close();
    }
  },
};
