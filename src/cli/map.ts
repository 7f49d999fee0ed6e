// vblk map: where an image's data comes from, run by run.

import { backingChain, openImage } from '../device/images/open.js';
import { imageMap } from '../device/images/map.js';
import { SyncEngine } from '../io/sync-engine.js';
import { UsageError, type Command } from './command.js';
import { CEPH_HELP, CEPH_OPTIONS, cephFromOptions, checkRbdName, type CephValues } from './ceph-options.js';

const HELP = `Usage: vblk map FILE [--output human|json] [-U]

Print the extent map of an image and its backing chain: for each run of
bytes, the layer it comes from (depth 0 is FILE itself, 1 its backing
file, ...), and whether it holds data or reads as zeroes. Runs no layer
has are marked not present. The JSON form has the fields of
'qemu-img map --output=json' except the host offsets. FILE may be an
RBD image (rbd:POOL/IMAGE[@SNAPSHOT]), or have one as its backing file.

Options:
  --output FORMAT   human (default) or json
  -U, --force-share read the image without locking it, even while QEMU or
                    vblk serve writes it (the map may be stale)
${CEPH_HELP}  -h, --help        show this help

Examples:
  vblk map top.qcow2
  vblk map top.qcow2 --output json | jq '.[] | select(.data)'
  vblk map rbd:vms/disk1 --ceph-conf /etc/ceph/lab.conf
`;

export const map: Command<{ output?: string; 'force-share'?: boolean } & CephValues> = {
  name: 'map',
  summary: 'print the extent map of an image and its backing chain',
  help: HELP,
  options: { output: { type: 'string' }, 'force-share': { type: 'boolean', short: 'U' }, ...CEPH_OPTIONS },
  async run(v, positionals) {
    if (positionals.length !== 1) throw new UsageError('expected exactly one FILE');
    const output = v.output ?? 'human';
    if (output !== 'human' && output !== 'json') throw new UsageError('--output must be human or json');
    const file = positionals[0];
    checkRbdName(file);
    const chain = backingChain(file);
    const image = await openImage(file, { readOnly: true, engine: new SyncEngine(), forceShare: v['force-share'], ceph: cephFromOptions(v) });
    try {
      const entries = await imageMap(image);
      if (output === 'json') {
        process.stdout.write(`${JSON.stringify(entries, null, 1)}\n`);
        return 0;
      }
      const lines = ['Offset              Length              Depth  Contents  File'];
      for (const e of entries) {
        const what = !e.present ? 'absent' : e.data ? 'data' : 'zero';
        const from = e.present ? chain[e.depth].file : '-';
        lines.push(`0x${e.start.toString(16).padEnd(18)}0x${e.length.toString(16).padEnd(18)}${String(e.depth).padEnd(7)}${what.padEnd(10)}${from}`);
      }
      process.stdout.write(`${lines.join('\n')}\n`);
      return 0;
    } finally {
      await image.close();
    }
  },
};
