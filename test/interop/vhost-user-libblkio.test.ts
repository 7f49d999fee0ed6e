// libblkio's own programs (test/helpers/libblkio.ts) against a
// vhost-user-blk back end: blkio-info reads the capacity, limits and
// queue count, blkio-copy copies a 256 MiB file in and out, byte for byte.
// qemu-storage-daemon is the reference back end; vblk must do the same.

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { libblkioTools } from '../helpers/libblkio.js';
import { serve, tempDir } from '../helpers/server.js';
import { requireTool, run } from '../helpers/tools.js';

const SIZE = 256 << 20;
const QUEUES = 2;

interface Backend {
  name: string;
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

const qemuStorageDaemon: Backend = {
  name: 'qemu-storage-daemon',
  async start(t, image, socket, queues) {
    requireTool('qemu-storage-daemon');
    const proc = spawn('qemu-storage-daemon', [
      '--blockdev', `driver=file,node-name=f,filename=${image}`,
      '--blockdev', 'driver=raw,node-name=r,file=f',
      '--export', `type=vhost-user-blk,id=e,node-name=r,addr.type=unix,addr.path=${socket},writable=on,num-queues=${queues}`,
    ], { stdio: 'inherit' });
    let alive = true;
    proc.on('exit', () => (alive = false));
    t.teardown(() => {
      if (alive) proc.kill('SIGKILL');
    });
    await waitForSocket(socket, () => alive);
  },
};

const vblk: Backend = {
  name: 'vblk',
  async start(t, image, socket, queues) {
    await serve(t, [image, '--vhost-user-blk', socket, '--num-queues', String(queues)], { socket: false });
  },
};

function sha256(file: string, length = SIZE): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file).subarray(0, length)).digest('hex');
}

function libblkioSuite(backend: Backend): void {
  t.test(`${backend.name}: blkio-info and blkio-copy through libblkio's virtio-blk-vhost-user driver`, async (t) => {
    const tools = libblkioTools();
    const dir = tempDir(t);
    const image = path.join(dir, 'disk.raw');
    fs.writeFileSync(image, '');
    fs.truncateSync(image, SIZE);
    const socket = path.join(dir, 'vu.sock');
    await backend.start(t, image, socket, QUEUES);
    const driver = ['virtio-blk-vhost-user', `path=${socket}`];

    const info = await run(tools['blkio-info'], [...driver, 'capacity', 'max-queues', 'max-segments', 'request-alignment']);
    t.equal(info.code, 0, info.stderr);
    const [capacity, maxQueues, maxSegments, alignment] = info.stdout.trim().split('\n').map(Number);
    t.equal(capacity, SIZE, 'capacity');
    t.equal(maxQueues, QUEUES, 'queues');
    t.ok(maxSegments >= 1, `segments per request: ${maxSegments}`);
    t.equal(alignment, 512, 'request alignment');

    const input = path.join(dir, 'in.bin');
    fs.writeFileSync(input, crypto.randomBytes(SIZE));
    const copyIn = await run(tools['blkio-copy'], ['--input-file', input, '--output-blkio', ...driver], { timeoutMs: 300_000 });
    t.equal(copyIn.code, 0, copyIn.stderr);
    const output = path.join(dir, 'out.bin');
    fs.writeFileSync(output, ''); // blkio-copy writes into an existing file
    const copyOut = await run(tools['blkio-copy'], ['--input-blkio', ...driver, '--output-file', output], { timeoutMs: 300_000 });
    t.equal(copyOut.code, 0, copyOut.stderr);
    const want = sha256(input);
    t.equal(sha256(output), want, 'what came out through vhost-user is what went in');
    t.equal(sha256(image), want, 'and it is what the image holds');
  });
}

libblkioSuite(qemuStorageDaemon);
libblkioSuite(vblk);
