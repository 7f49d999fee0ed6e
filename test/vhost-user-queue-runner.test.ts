// The queue runner with notification descriptors a front end may hand
// over that are not eventfds: a call "eventfd" whose peer is gone (the
// write fails with EPIPE) and a kick "eventfd" at its end (readable, but
// reads nothing). Either stops that queue (device needs reset, reported
// once) instead of throwing out of an event-loop callback, which would
// take the whole server down. A working call eventfd is the control.

import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { Gateway } from '../src/device/gateway.js';
import { RawImage } from '../src/device/images/raw.js';
import { chooseEngine } from '../src/io/probe.js';
import { blkIdBytes, type BlkSettings } from '../src/protocol/vhost-user/blk-config.js';
import { VIRTIO_BLK_S, VIRTIO_BLK_T } from '../src/protocol/vhost-user/virtio-constants.js';
import { SplitVirtqueue } from '../src/protocol/vhost-user/virtqueue.js';
import { QueueRunner } from '../src/server/vhost-user/queue-runner.js';
import { eventfd, eventfdRead } from '../src/sys/eventfd.js';
import { socketPair } from '../src/sys/fd-passing.js';
import { tempDir } from './helpers/server.js';
import { BufferGuestMemory, GuestAllocator, VirtioGuestQueue } from './helpers/virtio-guest.js';

const BASE = 0x100000;
const { engine } = chooseEngine('sync');
t.teardown(() => engine.close());

const settings: BlkSettings = {
  capacity: 1 << 20,
  readOnly: false,
  flush: true,
  blockSize: 512,
  segMax: 126,
  numQueues: 1,
  discard: null,
  writeZeroes: null,
  id: blkIdBytes('runner'),
};

function setup(t: Test, fds: { kick: number | null; call: number | null }) {
  const file = path.join(tempDir(t), 'disk.raw');
  fs.writeFileSync(file, Buffer.alloc(1 << 20));
  const device = RawImage.open(file, { readOnly: false, engine });
  t.teardown(() => device.close());
  const memory = new BufferGuestMemory([{ gpa: BASE, buffer: Buffer.alloc(1 << 20) }]);
  const alloc = new GuestAllocator(BASE, BASE + (1 << 20));
  const guest = VirtioGuestQueue.layout(memory, alloc, 8);
  const vq = new SplitVirtqueue({ size: 8, ...guest.deviceRings(), memory, eventIdx: false });
  const broken: string[] = [];
  const stats = { requests: {}, perQueue: {}, errors: 0 };
  const runner = new QueueRunner(0, vq, new Gateway(device), settings, fds.kick, fds.call, null, stats, {
    broken: (reason) => broken.push(reason),
    failed: () => undefined,
  });
  t.teardown(() => runner.pause());
  /** Offers a GET_ID request (answered by the model, no I/O); returns where its status byte is. */
  const getId = (): number => {
    const header = alloc.alloc(16);
    memory.view(header, 16).writeUInt32LE(VIRTIO_BLK_T.GET_ID, 0);
    const id = alloc.alloc(20);
    const status = alloc.alloc(1);
    memory.view(status, 1)[0] = 0xff;
    guest.addChain([
      { gpa: header, length: 16, writable: false },
      { gpa: id, length: 20, writable: true },
      { gpa: status, length: 1, writable: true },
    ]);
    guest.publish();
    return status;
  };
  return { memory, guest, broken, getId };
}

const settle = () => new Promise((r) => setTimeout(r, 50));

t.test('control: a request completes and the call eventfd is written', async (t) => {
  const call = eventfd();
  t.teardown(() => fs.closeSync(call));
  const s = setup(t, { kick: null, call });
  const status = s.getId();
  await settle();
  t.equal(s.memory.view(status, 1)[0], VIRTIO_BLK_S.OK, 'GET_ID answered');
  t.equal(eventfdRead(call), 1, 'the driver was notified');
  t.same(s.broken, []);
});

t.test('a call descriptor whose peer is gone stops the queue, once, and nothing throws', async (t) => {
  const [call, peer] = socketPair();
  fs.closeSync(peer);
  t.teardown(() => fs.closeSync(call));
  const s = setup(t, { kick: null, call });
  const status = s.getId();
  await settle();
  t.equal(s.memory.view(status, 1)[0], VIRTIO_BLK_S.OK, 'the request itself was answered');
  t.same(s.broken, ['the call descriptor cannot be written'], 'the queue stopped: the device needs reset');
  s.getId();
  await settle();
  t.equal(s.broken.length, 1, 'and stays stopped, reported once');
});

t.test('a kick descriptor at its end stops the queue instead of spinning or throwing', async (t) => {
  const [kick, peer] = socketPair();
  fs.closeSync(peer);
  t.teardown(() => fs.closeSync(kick));
  const s = setup(t, { kick, call: null });
  await settle();
  t.equal(s.broken.length, 1, 'the queue stopped');
  t.match(s.broken[0], /^kick descriptor: read 0 bytes from descriptor \d+, not an eventfd's 8/);
});
