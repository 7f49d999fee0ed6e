// At SIGTERM, clients that do not cooperate must not hold the exit:
// one that sits idle with its end open (hung, or stopped), and one that
// keeps sending requests after it was told ESHUTDOWN. The server closes
// their connections itself and exits 0 without reaching the shutdown
// timeout, which is set far longer than the test needs, so reaching it
// shows in the log instead of as a timing.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { CMD, NBD_ERR } from '../../src/protocol/nbd/constants.js';
import { RawClient, replyError } from '../helpers/nbd-client.js';
import { serve, tempDir, type Served } from '../helpers/server.js';
import { requireTool, TOOL_ENV } from '../helpers/tools.js';

const SIZE = 8 << 20;

async function server(t: Test): Promise<Served> {
  const file = path.join(tempDir(t), 'disk.img');
  fs.writeFileSync(file, '');
  fs.truncateSync(file, SIZE);
  return serve(t, [file, '--shutdown-timeout', '20']);
}

function reachedTimeout(srv: Served): boolean {
  return srv.logs().some((l) => l.msg === 'shutdown timeout: cutting connections');
}

t.test('SIGTERM with idle clients that keep their end open: closed at once, exit 0', async (t) => {
  const srv = await server(t);
  const c = await RawClient.connect(srv.socket);
  await c.handshake();
  c.request({ flags: 0, type: CMD.READ, cookie: 1n, offset: 0, length: 512 });
  await c.structuredReply();

  // A real client, connected and then stopped: it can neither read nor close.
  requireTool('nbdsh');
  const nbdsh = spawn('nbdsh', ['-u', srv.uri(), '-c', 'h.pread(512, 0)\nprint("connected", flush=True)\nimport time\ntime.sleep(3600)'], {
    env: TOOL_ENV,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  t.teardown(() => {
    nbdsh.kill('SIGKILL');
  });
  await new Promise<void>((resolve) => nbdsh.stdout.once('data', () => resolve()));
  nbdsh.kill('SIGSTOP');

  const exit = await srv.stop('SIGTERM');
  t.same(exit, { code: 0, signal: null }, 'the server exits 0');
  t.notOk(reachedTimeout(srv), 'without waiting for the shutdown timeout');
  t.ok(await c.closesWithin(5000), 'the raw client sees its connection closed');
  const reasons = srv.logs().filter((l) => l.msg === 'connection closed' && l.export === '').map((l) => l.reason);
  t.same(reasons, ['server shutdown', 'server shutdown'], 'both connections closed by the shutdown');
});

t.test('clients that keep sending after the signal do not hold the exit', async (t) => {
  const srv = await server(t);
  // One sends small requests one after another and reads the replies.
  const chatty = await RawClient.connect(srv.socket);
  await chatty.handshake();
  let cookie = 0n;
  const send = (): void => chatty.request({ flags: 0, type: CMD.READ, cookie: cookie++, offset: 0, length: 512 });
  send();
  await chatty.structuredReply();
  // The other has begun a write whose payload it sends a byte at a time, never finishing it.
  const dribbler = await RawClient.connect(srv.socket);
  await dribbler.handshake();
  dribbler.request({ flags: 0, type: CMD.WRITE, cookie: 1n, offset: 0, length: 1 << 20 }, Buffer.alloc(1000, 0x5a));
  const sender = setInterval(() => {
    if (!chatty.isClosed && chatty.socket.writableLength < 4096) send();
    if (!dribbler.isClosed) dribbler.send(Buffer.alloc(1, 0x5a));
  }, 1);
  t.teardown(() => clearInterval(sender));

  const exit = await srv.stop('SIGTERM');
  clearInterval(sender);
  t.same(exit, { code: 0, signal: null }, 'the server exits 0');
  t.notOk(reachedTimeout(srv), 'without waiting for the shutdown timeout');
  await chatty.closed;
  await dribbler.closed;
  const errors: number[] = [];
  while (chatty.buffered > 0) errors.push(replyError((await chatty.structuredReply())[0]));
  t.ok(errors.includes(NBD_ERR.ESHUTDOWN), `requests after the signal got ESHUTDOWN (${cookie} sent, ${errors.length + 1} answered)`);
  t.equal(dribbler.buffered, 0, 'the write that never arrived whole got no reply');
  const reasons = srv.logs().filter((l) => l.msg === 'connection closed').map((l) => l.reason);
  t.same(reasons, ['server shutdown', 'server shutdown'], 'both connections closed by the shutdown');
});
