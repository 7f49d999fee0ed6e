// libblkio's own programs (test/helpers/libblkio.ts) against a
// vhost-user-blk back end: blkio-info reads the capacity, limits and
// queue count, blkio-copy copies a 256 MiB file in and out, byte for byte.
// qemu-storage-daemon is the reference back end; vblk must do the same.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { libblkioTools } from '../helpers/libblkio.js';
import { tempDir } from '../helpers/server.js';
import { run } from '../helpers/tools.js';
import { qemuStorageDaemon, vblkVhostUser, type VhostUserBackend } from '../helpers/vhost-user-backends.js';

const SIZE = 256 << 20;
const QUEUES = 2;

function sha256(file: string, length = SIZE): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file).subarray(0, length)).digest('hex');
}

function libblkioSuite(backend: VhostUserBackend): void {
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
libblkioSuite(vblkVhostUser);
