// The TypeScript vhost-user-blk driver (test/helpers/vhost-user-driver.ts)
// against qemu-storage-daemon, the reference nobody here wrote, and
// against vblk, with one test body: the config space, GET_ID, writes of
// random patterns in flight on every queue at once, reads of everything
// back, flush, write-zeroes with and without UNMAP, discard, a read past
// the end (IOERR) and an unknown request type (UNSUPP); after the driver
// closes, the image file must hold exactly what the model says. Run in
// three shapes: one queue; four queues with indirect descriptors, event
// indexes and memory added region by region; two polled queues.
// Back ends that answer wrongly, not at all, or hang up make connect()
// fail with an Error that says so, never hang.

import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import t, { type Test } from 'tap';
import { FLAG_REPLY, REQ, VERSION } from '../src/protocol/vhost-user/constants.js';
import { encodeMessage, encodeU64 } from '../src/protocol/vhost-user/messages.js';
import { VIRTIO_BLK_S, VIRTIO_F } from '../src/protocol/vhost-user/virtio-constants.js';
import { tempDir } from './helpers/server.js';
import { qemuStorageDaemon, vblkBackend, type VhostUserBackend } from './helpers/vhost-user-backends.js';
import { VhostUserDriver, type DriverOptions } from './helpers/vhost-user-driver.js';

const SIZE = 16 << 20;
const SECTOR = 512;

const SHAPES: { name: string; options: DriverOptions }[] = [
  { name: '1 queue', options: { numQueues: 1 } },
  {
    name: '4 queues, indirect descriptors, event idx, ADD_MEM_REG of 2 regions',
    options: { numQueues: 4, indirect: true, eventIdx: true, memoryMessages: 'add', regions: 2 },
  },
  { name: '2 queues, completions polled', options: { numQueues: 2, completions: 'poll' } },
];

/** `count` non-overlapping [sector, sectors) ranges of 1..64 sectors in random places. */
function randomRanges(count: number): [number, number][] {
  const slot = Math.floor(SIZE / SECTOR / count);
  return Array.from({ length: count }, (_, i) => {
    const sectors = 1 + crypto.randomInt(Math.min(64, slot));
    return [i * slot + crypto.randomInt(slot - sectors + 1), sectors] as [number, number];
  });
}

function suite(backend: VhostUserBackend, shape: (typeof SHAPES)[number]): void {
  t.test(`${backend.name}, ${shape.name}`, async (t) => {
    const dir = tempDir(t);
    const image = path.join(dir, 'disk.raw');
    fs.writeFileSync(image, '');
    fs.truncateSync(image, SIZE);
    const socket = path.join(dir, 'vu.sock');
    const queues = shape.options.numQueues ?? 1;
    await backend.start(t, image, socket, { queues: 4 });
    const driver = await VhostUserDriver.connect(socket, { memoryMiB: 32, ...shape.options });
    t.teardown(() => driver.close().catch(() => undefined));
    const model = Buffer.alloc(SIZE);

    t.equal(driver.config?.capacity, SIZE, 'config space: capacity');
    t.equal(driver.backendQueues, 4, 'GET_QUEUE_NUM');
    t.equal(driver.has(VIRTIO_F.RING_INDIRECT_DESC), shape.options.indirect === true, 'indirect descriptors as asked');
    t.equal(driver.has(VIRTIO_F.RING_EVENT_IDX), shape.options.eventIdx === true, 'event idx as asked');

    const id = await driver.getId(0);
    t.equal(id.status, VIRTIO_BLK_S.OK, 'GET_ID succeeds');
    t.equal(id.data.length, 20, 'GET_ID fills 20 bytes');
    t.equal(id.data.toString('latin1').split('\0')[0], backend.id, 'GET_ID is the export id');

    // Writes of random patterns, in flight on every queue at once.
    const writes = randomRanges(96).map(([sector, sectors], i) => {
      const data = crypto.randomBytes(sectors * SECTOR);
      data.copy(model, sector * SECTOR);
      return driver.write(i % queues, sector, data);
    });
    const written = await Promise.all(writes);
    t.ok(written.every((c) => c.status === VIRTIO_BLK_S.OK), `${writes.length} writes on ${queues} queue(s) at once succeed`);

    const readAll = async (what: string) => {
      const chunk = 256 << 10;
      const reads = Array.from({ length: SIZE / chunk }, (_, i) => driver.read(i % queues, (i * chunk) / SECTOR, chunk));
      const got = await Promise.all(reads);
      t.ok(got.every((c) => c.status === VIRTIO_BLK_S.OK), `${what}: every read succeeds`);
      t.ok(Buffer.concat(got.map((c) => c.data)).equals(model), `${what}: the device reads back what was written`);
      t.ok(got.every((c) => c.usedLength >= chunk + 1), `${what}: used lengths cover data and status`);
    };
    await readAll('after the writes');
    t.equal((await driver.flush(queues - 1)).status, VIRTIO_BLK_S.OK, 'flush');

    // Write zeroes, with and without UNMAP, then discard (whose contents the spec leaves open, so they are rewritten).
    const [[z1, n1], [z2, n2], [d]] = randomRanges(3);
    t.equal((await driver.writeZeroes(0, z1, n1, false)).status, VIRTIO_BLK_S.OK, 'write zeroes');
    t.equal((await driver.writeZeroes(queues - 1, z2, n2, true)).status, VIRTIO_BLK_S.OK, 'write zeroes with UNMAP');
    model.fill(0, z1 * SECTOR, (z1 + n1) * SECTOR);
    model.fill(0, z2 * SECTOR, (z2 + n2) * SECTOR);
    t.equal((await driver.discard(0, d & ~7, 8)).status, VIRTIO_BLK_S.OK, 'discard');
    const pattern = crypto.randomBytes(8 * SECTOR);
    t.equal((await driver.write(0, d & ~7, pattern)).status, VIRTIO_BLK_S.OK, 'a write over the discarded range');
    pattern.copy(model, (d & ~7) * SECTOR);
    await readAll('after write zeroes and discard');

    t.equal((await driver.read(0, SIZE / SECTOR - 1, 2 * SECTOR)).status, VIRTIO_BLK_S.IOERR, 'a read past the end is IOERR');
    t.equal((await driver.request(0, { type: 0x7fff, inLength: 0 })).status, VIRTIO_BLK_S.UNSUPP, 'an unknown request type is UNSUPP');

    await driver.close();
    t.ok(fs.readFileSync(image).equals(model), 'after close the image file holds exactly the model');
  });
}

for (const shape of SHAPES) {
  suite(qemuStorageDaemon, shape);
  suite(vblkBackend, shape);
}

/** A back end on `socket` that answers every GET_FEATURES with `answer` (null: no answer; 'hang up': closes). */
async function fakeBackEnd(t: Test, socket: string, answer: Buffer | null | 'hang up'): Promise<void> {
  const server = net.createServer((c) => {
    c.on('error', () => undefined);
    c.on('data', (d) => {
      // SET_OWNER has no reply; answer the message after it (GET_FEATURES).
      if (d.length >= 24 || d.readUInt32LE(0) === REQ.GET_FEATURES) {
        if (answer === 'hang up') c.destroy();
        else if (answer) c.write(answer);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
}

t.test('a back end that answers wrongly, not at all, or hangs up: connect fails with a clear error', async (t) => {
  const dir = tempDir(t);
  const cases: [string, Buffer | null | 'hang up', RegExp][] = [
    ['no reply', null, /no reply to VHOST_USER_GET_FEATURES within 300 ms/],
    ['a reply to another request', encodeMessage(REQ.GET_QUEUE_NUM, VERSION | FLAG_REPLY, encodeU64(1n)), /the reply to VHOST_USER_GET_FEATURES is VHOST_USER_GET_QUEUE_NUM/],
    ['a reply of 3 bytes', encodeMessage(REQ.GET_FEATURES, VERSION | FLAG_REPLY, Buffer.alloc(3)), /the reply to GET_FEATURES is malformed/],
    ['a header of version 2', encodeMessage(REQ.GET_FEATURES, 2 | FLAG_REPLY, encodeU64(0n)), /malformed message from the back end/],
    ['features without VERSION_1', encodeMessage(REQ.GET_FEATURES, VERSION | FLAG_REPLY, encodeU64(0n)), /does not offer VERSION_1/],
    ['a hang-up', 'hang up', /the back end closed the connection/],
  ];
  for (const [what, answer, error] of cases) {
    const socket = path.join(dir, `${cases.findIndex((c) => c[0] === what)}.sock`);
    await fakeBackEnd(t, socket, answer);
    await t.rejects(VhostUserDriver.connect(socket, { timeoutMs: 300 }), error, what);
  }
});
