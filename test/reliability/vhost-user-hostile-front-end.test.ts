// Front ends that break the vhost-user protocol do not take vblk down:
// a bad header, a payload size past the limit, an unknown request and a
// ring started in memory nobody shared each end only their own
// connection, with a log line; a message cut short holds only its own;
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

  const info = await run(libblkioTools()['blkio-info'], ['virtio-blk-vhost-user', `path=${socket}`, 'capacity']);
  t.equal(info.stdout.trim(), String(64 << 20), 'and the next front end is served');
  t.ok(served.logs().some((l) => /protocol violation|closing vhost-user connection/.test(String(l.msg))), 'violations are logged');
  t.equal(served.proc.exitCode, null, 'the server is still running');
  t.equal((await stalled).closed, false, 'the connection with half a message was left waiting, not cut');
});
