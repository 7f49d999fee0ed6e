// Front ends that break the vhost-user protocol do not take vblk down:
// a bad header, a payload size past the limit, an unknown request and a
// ring started in memory nobody shared each end only their own
// connection, with a log line; a message cut short holds only its own;
// one that never reads its replies is hung up on once its socket is full,
// one that floods the server with requests does not starve the others,
// and one that hangs up before its replies are sent ends only itself;
// and the next front end (libblkio's blkio-info) is served as before.

import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import t from 'tap';
import { libblkioTools } from '../helpers/libblkio.js';
import { serve, tempDir } from '../helpers/server.js';
import { run } from '../helpers/tools.js';

function header(request: number, flags: number, size: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt32LE(request, 0);
  b.writeUInt32LE(flags, 4);
  b.writeUInt32LE(size, 8);
  return b;
}

/** Sends `bytes` and resolves with what came back once the server closed the connection (or after 3 s). */
function exchange(socket: string, bytes: Buffer): Promise<{ closed: boolean; reply: Buffer }> {
  return new Promise((resolve) => {
    const c = net.connect(socket);
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      c.destroy();
      resolve({ closed: false, reply: Buffer.concat(chunks) });
    }, 3000);
    c.on('data', (d) => chunks.push(d));
    c.on('close', () => {
      clearTimeout(timer);
      resolve({ closed: true, reply: Buffer.concat(chunks) });
    });
    c.on('error', () => undefined);
    c.write(bytes);
  });
}

const GET_FEATURES = 1;
const SET_OWNER = 3;
const SET_VRING_KICK = 12;

t.test('hostile front ends end only their own connection', async (t) => {
  const dir = tempDir(t);
  const image = path.join(dir, 'disk.raw');
  fs.writeFileSync(image, '');
  fs.truncateSync(image, 64 << 20);
  const socket = path.join(dir, 'vu.sock');
  const served = await serve(t, [image, '--vhost-user-blk', socket, '--num-queues', '2'], { socket: false });

  const cases: [string, Buffer][] = [
    ['version 2 header', header(GET_FEATURES, 0x2, 0)],
    ['payload size past the limit', header(GET_FEATURES, 0x1, 1 << 20)],
    ['unknown request without NEED_REPLY', header(999, 0x1, 0)],
    ['ring kicked with no memory and no ring set up', Buffer.concat([header(SET_OWNER, 0x1, 0), header(SET_VRING_KICK, 0x1, 8), Buffer.from([0, 1, 0, 0, 0, 0, 0, 0])])],
  ];
  for (const [what, bytes] of cases) {
    const r = await exchange(socket, bytes);
    t.ok(r.closed, `${what}: the server closes the connection`);
  }
  // A message cut short holds only its own connection, which waits for the rest.
  const stalled = exchange(socket, Buffer.concat([header(SET_OWNER, 0x1, 8), Buffer.alloc(3)]));
  const answered = await exchange(socket, header(GET_FEATURES, 0x1, 0));
  t.equal(answered.reply.length, 20, 'a well-formed GET_FEATURES is still answered (12-byte header, u64)');

  // A front end that asks and never reads: once its socket buffer is full it is hung up on, at once.
  const flood = await new Promise<{ closed: boolean; pending: number }>((resolve) => {
    const c = net.connect(socket);
    const asks = Buffer.concat(Array.from({ length: 4096 }, () => header(GET_FEATURES, 0x1, 0)));
    const timer = setTimeout(() => {
      c.destroy();
      resolve({ closed: false, pending: 0 });
    }, 10_000);
    c.on('error', () => undefined);
    c.on('close', () => {
      clearTimeout(timer);
      resolve({ closed: true, pending: c.readableLength });
    });
    const send = (): void => {
      while (c.write(asks));
      c.once('drain', send);
    };
    c.on('connect', () => {
      c.pause();
      send();
    });
  });
  t.ok(flood.closed, 'a front end that never reads its replies is hung up on');
  const hungUp = (): boolean => served.logs().some((l) => l.msg === 'vhost-user connection closed' && l.reason === 'the front end does not read its replies');
  for (let i = 0; i < 100 && !hungUp(); i++) await new Promise((r) => setTimeout(r, 20));
  t.ok(hungUp(), 'and why is logged');

  // A front end that writes requests as fast as it can (SET_OWNER: no reply) does not starve the others.
  let flooding = true;
  const flooder = net.connect(socket);
  flooder.on('error', () => undefined);
  const owners = Buffer.concat(Array.from({ length: 4096 }, () => header(SET_OWNER, 0x1, 0)));
  const pump = (): void => {
    while (flooding && flooder.write(owners));
    if (flooding) flooder.once('drain', pump);
  };
  flooder.on('connect', pump);
  const stopFlood = setTimeout(() => (flooding = false), 30_000);
  const during = await run(libblkioTools()['blkio-info'], ['virtio-blk-vhost-user', `path=${socket}`, 'capacity']);
  const stillFlooding = flooding && !flooder.destroyed;
  flooding = false;
  clearTimeout(stopFlood);
  flooder.destroy();
  t.equal(during.stdout.trim(), String(64 << 20), 'blkio-info is answered while another front end floods the server');
  t.ok(stillFlooding, 'before the flood ended (the flooder was not cut)');

  // One that asks a thousand questions and hangs up without the answers: replies to a closed socket (EPIPE).
  await new Promise<void>((resolve) => {
    const c = net.connect(socket, () => c.write(Buffer.concat(Array.from({ length: 1000 }, () => header(GET_FEATURES, 0x1, 0))), () => c.destroy()));
    c.on('error', () => undefined);
    c.on('close', () => resolve());
  });
  const epipe = (): boolean => served.logs().some((l) => /^send failed/.test(String(l.reason)));
  for (let i = 0; i < 100 && !epipe() && served.proc.exitCode === null; i++) await new Promise((r) => setTimeout(r, 20));
  t.ok(epipe(), 'replies to a front end that hung up end its connection, logged');

  const info = await run(libblkioTools()['blkio-info'], ['virtio-blk-vhost-user', `path=${socket}`, 'capacity']);
  t.equal(info.stdout.trim(), String(64 << 20), 'and the next front end is served');
  t.ok(served.logs().some((l) => /protocol violation|closing vhost-user connection/.test(String(l.msg))), 'violations are logged');
  t.equal(served.proc.exitCode, null, 'the server is still running');
  if (served.proc.exitCode !== null) t.comment(JSON.stringify(served.logs().slice(-5)));
  t.equal((await stalled).closed, false, 'the connection with half a message was left waiting, not cut');
});
