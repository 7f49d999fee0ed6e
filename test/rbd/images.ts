// What the RBD tests do to images around vblk: name a fresh one, create
// it with `vblk create`, and read what the cluster holds with `rbd
// export` (the judge), plus the output of a client for a failed check.

import fs from 'node:fs';
import path from 'node:path';
import type { Ceph } from '../helpers/ceph.js';
import { vblk } from '../helpers/server.js';
import type { RunResult } from '../helpers/tools.js';

export interface Images {
  /** A name no other image of this process has. */
  fresh(what: string): string;
  /** `vblk create rbd:POOL/IMAGE --size SIZE`. */
  create(image: string, size: number): Promise<void>;
  /** The image's (or a snapshot's, IMAGE@SNAP) bytes as `rbd export` gives them. */
  exported(dir: string, image: string): Promise<Buffer>;
}

export function images(ceph: Ceph): Images {
  let serial = 0;
  return {
    fresh: (what) => `${what}-${process.pid}-${++serial}`,
    async create(image, size) {
      const r = await vblk(['create', `rbd:${ceph.pool}/${image}`, '--size', String(size), '--ceph-conf', ceph.conf]);
      if (r.code !== 0) throw new Error(`vblk create ${image}: ${r.stderr}`);
    },
    async exported(dir, image) {
      const file = path.join(dir, `${image.replace(/[@/]/g, '_')}.export`);
      fs.rmSync(file, { force: true });
      await ceph.rbd(['export', `${ceph.pool}/${image}`, file]);
      return fs.readFileSync(file);
    },
  };
}

/** What a client printed, for the diagnostics of a failed check. */
export const output = (r: RunResult): string => `${r.stdout}${r.stderr}`.trim().slice(0, 2000);
