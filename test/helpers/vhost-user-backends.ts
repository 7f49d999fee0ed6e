// vhost-user-blk back ends for interop tests: vblk (`vblk serve
// --vhost-user-blk`) and the reference, qemu-storage-daemon's
// vhost-user-blk export, each serving one image on a UNIX socket and
// stopped when the test ends.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { killAtEnd, serve, type Teardown } from './server.js';
import { requireTool } from './tools.js';

export interface BackendOptions {
  queues: number;
  /** The image's format (vblk finds it by itself; qemu-storage-daemon is told). */
  format?: 'raw' | 'qcow2';
}

export interface RunningBackend {
  /** Stops it (SIGTERM for a process) and gives its exit code. */
  stop(): Promise<number | null>;
  /** What it logged, one JSON object per line (vblk only; others give none). */
  logs(): Record<string, unknown>[];
}

export interface VhostUserBackend {
  name: string;
  /** What GET_ID answers for an image served as start() serves it (NUL-padded to 20 bytes). */
  id: string;
  /** Serves `image` on `socket`; resolves once it listens. Stopped when the test ends at the latest. */
  start(t: Teardown, image: string, socket: string, options: BackendOptions): Promise<RunningBackend>;
}

/** Waits for a back end's socket file to appear, failing early if the back end exits. */
export async function waitForSocket(socket: string, alive: () => boolean): Promise<void> {
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
  async start(t, image, socket, { queues, format = 'raw' }) {
    requireTool('qemu-storage-daemon');
    const proc = spawn('qemu-storage-daemon', [
      '--blockdev', `driver=file,node-name=f,filename=${image}`,
      '--blockdev', `driver=${format},node-name=img,file=f`,
      '--export', `type=vhost-user-blk,id=e,node-name=img,addr.type=unix,addr.path=${socket},writable=on,num-queues=${queues}`,
    ], { stdio: 'inherit' }); // prettier-ignore
    const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
    const alive = killAtEnd(t, proc, exited);
    await waitForSocket(socket, alive);
    return {
      stop: () => {
        if (alive()) proc.kill('SIGTERM');
        return exited;
      },
      logs: () => [],
    };
  },
};

export const vblkBackend: VhostUserBackend = {
  name: 'vblk',
  // The default export's gateway id.
  id: 'vblk',
  async start(t, image, socket, { queues }) {
    const served = await serve(t, [image, '--vhost-user-blk', socket, '--num-queues', String(queues)], { socket: false });
    return { stop: async () => (await served.stop()).code, logs: () => served.logs() };
  },
};
