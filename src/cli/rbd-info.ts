// vblk info rbd:...: what the cluster says of an RBD image, and how much
// of it holds data (its allocation map, parent included).

import { imageMap } from '../device/images/map.js';
import { openRbd } from '../device/images/rbd.js';
import { describeRbd } from '../device/images/rbd-admin.js';
import type { CephOptions } from '../device/images/rbd-cluster.js';
import { imageSpec } from '../device/images/rbd-name.js';
import { snapshotLine } from './rbd-snapshot.js';
import { formatSize } from './size.js';

export async function printRbdInfo(name: string, ceph: CephOptions, json: boolean): Promise<number> {
  // Opened first and closed last, so describeRbd shares its cluster connection instead of making one of its own.
  const image = await openRbd(name, { readOnly: true, ceph });
  let d, map;
  try {
    d = await describeRbd(name, ceph);
    map = await imageMap(image);
  } finally {
    await image.close();
  }
  const data = map.filter((e) => e.data);
  const dataBytes = data.reduce((n, e) => n + e.length, 0);
  const result = {
    file: name,
    format: 'rbd',
    virtualSize: d.size,
    objectSize: d.objectSize,
    features: d.featureNames,
    parent: d.parent,
    snapshots: d.snapshots,
    lockOwners: d.lockOwners,
    dataBytes,
    dataExtents: data.length,
  };
  if (json) {
    process.stdout.write(`${JSON.stringify(result)}\n`);
    return 0;
  }
  const pct = d.size ? ((100 * dataBytes) / d.size).toFixed(1) : '0.0';
  const parent = d.parent ? imageSpec({ ...d.parent, options: [] }) : 'none';
  let out =
    `image:         ${name}\n` +
    `format:        rbd (objects of ${formatSize(d.objectSize)})\n` +
    `virtual size:  ${formatSize(d.size)} (${d.size} bytes)\n` +
    `features:      ${d.featureNames.join(', ') || 'none'}\n` +
    `parent:        ${parent}\n` +
    `data:          ${formatSize(dataBytes)} in ${data.length} extents (${pct}% of the virtual size)\n` +
    `locked by:     ${d.lockOwners.join(', ') || 'nobody'}\n`;
  out += d.snapshots.length === 0 ? 'snapshots:     none\n' : 'snapshots:\n';
  for (const s of d.snapshots) out += `  ${snapshotLine(s)}\n`;
  process.stdout.write(out);
  return 0;
}
