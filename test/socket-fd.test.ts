// socket-fd: an accepted UNIX connection gets the send buffer asked for,
// as far as net.core.wmem_max allows; readInto takes exactly the bytes
// waiting in the kernel, in order, and says 0 (without throwing) when
// none are waiting, at end of input and on a closed descriptor.

import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { readInto, socketFd, UNIX_SEND_BUFFER, widenSendBuffer } from '../src/server/socket-fd.js';
import { tempDir } from './helpers/server.js';

const linuxOnly = { skip: process.platform !== 'linux' && 'Linux only' };

/** A connected pair: the accepted side paused, so only readInto reads it. */
async function pair(t: { teardown(fn: () => unknown): void }): Promise<{ client: net.Socket; server: net.Socket }> {
  const socketPath = path.join(tempDir(t), 's.sock');
  const listener = net.createServer({ pauseOnConnect: true });
  const accepted = new Promise<net.Socket>((resolve) => listener.once('connection', resolve));
  await new Promise<void>((resolve) => listener.listen(socketPath, resolve));
  t.teardown(() => listener.close());
  const client = net.connect(socketPath);
  const server = await accepted;
  await new Promise((resolve) => (client.connecting ? client.once('connect', resolve) : resolve(null)));
  t.teardown(() => {
    client.destroy();
    server.destroy();
  });
  return { client, server };
}

t.test('an accepted UNIX connection gets a wider send buffer', linuxOnly, async (t) => {
  const { server } = await pair(t);
  const wmemMax = Number(fs.readFileSync('/proc/sys/net/core/wmem_max', 'utf8'));
  // Linux caps the request at wmem_max and doubles it for its bookkeeping.
  t.equal(widenSendBuffer(server), 2 * Math.min(UNIX_SEND_BUFFER, wmemMax));
});

t.test('readInto takes what is waiting, in order, and 0 when nothing is', linuxOnly, async (t) => {
  const { client, server } = await pair(t);
  const fd = socketFd(server);
  t.type(fd, 'number');
  const target = Buffer.alloc(100_000);
  t.equal(readInto(fd!, target), 0, 'nothing waiting yet');
  const sent = Buffer.from(Array.from({ length: 70_000 }, (_, i) => (i * 7) % 251));
  client.write(sent);
  let got = 0;
  for (let tries = 0; got < sent.length && tries < 200; tries++) {
    got += readInto(fd!, target.subarray(got));
    if (got < sent.length) await sleep(5);
  }
  t.equal(got, sent.length, 'every byte arrived');
  t.same(target.subarray(0, got), sent, 'in order');
  t.equal(readInto(fd!, target), 0, 'nothing left');
  client.end();
  await sleep(20);
  t.equal(readInto(fd!, target), 0, 'end of input reads as 0');
  t.equal(readInto(-1, target), 0, 'a bad descriptor reads as 0, not an exception');
});
