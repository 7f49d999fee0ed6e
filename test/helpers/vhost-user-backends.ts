// vhost-user-blk back ends for tests that run one body against each:
// qemu-storage-daemon (the reference nobody here wrote) and vblk serve.
// Both serve a raw image on a UNIX socket and are stopped when the test
// ends.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import type { Test } from 'tap';
import { serve } from './server.js';
import { requireTool } from './tools.js';

export interface VhostUserBackend {
  name: string;
  /** What GET_ID answers for an image served as start() serves it (NUL-padded to 20 bytes). */
  id: string;
  /** Serves IMAGE (raw) over vhost-user-blk on SOCKET with `queues` queues; resolves once it listens. */
  start(t: Test, image: string, socket: string, queues: number): Promise<void>;
}

async function waitForSocket(socket: string, alive: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !fs.existsSync(socket); i++) {
    if (!alive()) throw new Error(`the back end exited before listening on ${socket}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  if (!fs.existsSync(socket)) throw new Error(`no socket at ${socket}`);
}

export const qemuStorageDaemon: VhostUserBackend = {
  name: 'qemu-storage-daemon',
  // QEMU 7.2's vhost-user-blk export answers GET_ID with a fixed serial.
  id: 'vhost_user_blk',
  async start(t, image, socket, queues) {
    requireTool('qemu-storage-daemon');
    const proc = spawn('qemu-storage-daemon', [
      '--blockdev', `driver=file,node-name=f,filename=${image}`,
      '--blockdev', 'driver=raw,node-name=r,file=f',
      '--export', `type=vhost-user-blk,id=e,node-name=r,addr.type=unix,addr.path=${socket},writable=on,num-queues=${queues}`,
    ], { stdio: 'inherit' });
    let alive = true;
    const exited = new Promise((resolve) => proc.on('exit', resolve));
    void exited.then(() => (alive = false));
    t.teardown(async () => {
      if (alive) {
        proc.kill('SIGKILL');
        await exited;
      }
    });
    await waitForSocket(socket, () => alive);
  },
};

export const vblkVhostUser: VhostUserBackend = {
  name: 'vblk',
  // The default export's gateway id.
  id: 'vblk',
  async start(t, image, socket, queues) {
    await serve(t, [image, '--vhost-user-blk', socket, '--num-queues', String(queues)], { socket: false });
  },
};
