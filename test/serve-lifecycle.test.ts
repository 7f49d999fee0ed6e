// vblk serve from start to exit: the socket file it makes and removes,
// stale and live sockets, a TCP listener, its log lines, and an orderly
// shutdown in which late requests get ESHUTDOWN.

import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { CHUNK, CMD, NBD_ERR } from '../src/protocol/nbd/constants.js';
import { connect, type NbdError } from '../src/client/index.js';
import { RawClient, replyError } from './helpers/nbd-client.js';
import { serve, tempDir, vblk } from './helpers/server.js';
import { run } from './helpers/tools.js';

function image(t: Test, size = 8 << 20): string {
  const file = path.join(tempDir(t), 'disk.img');
  fs.writeFileSync(file, '');
  fs.truncateSync(file, size);
  return file;
}

t.test('SIGTERM and SIGINT: exit 0 and the socket file is gone', async (t) => {
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    const srv = await serve(t, [image(t)]);
    t.ok(fs.statSync(srv.socket).isSocket(), 'the socket exists while serving');
    const exit = await srv.stop(signal);
    t.same(exit, { code: 0, signal: null }, `${signal}: exit status 0`);
    t.notOk(fs.existsSync(srv.socket), `${signal}: socket removed`);
    t.ok(srv.logs().some((l) => l.msg === 'shutdown complete'), `${signal}: logged`);
  }
});

t.test('the socket is created 0600 unless --socket-mode says otherwise', async (t) => {
  const srv = await serve(t, [image(t)]);
  t.equal(fs.statSync(srv.socket).mode & 0o777, 0o600);
  const srv2 = await serve(t, [image(t), '--socket-mode', '0660']);
  t.equal(fs.statSync(srv2.socket).mode & 0o777, 0o660);
});

t.test('a stale socket is replaced, a live one refused, a non-socket left alone', async (t) => {
  const dir = tempDir(t);
  const sock = path.join(dir, 's.sock');
  // A socket file nobody listens on, as a killed server leaves behind.
  await run('python3', ['-c', `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(sock)})`]);
  t.ok(fs.statSync(sock).isSocket(), 'stale socket file left behind');
  const srv = await serve(t, [image(t), '--socket', sock], { socket: false });
  t.equal((await run('nbdinfo', ['--size', `nbd+unix:///?socket=${sock}`])).stdout.trim(), String(8 << 20), 'serving on it');

  const second = await vblk(['serve', image(t), '--socket', sock]);
  t.equal(second.code, 1, 'a second server on a live socket exits 1');
  t.match(second.stderr, /already listening on/, 'and says why');
  t.equal((await run('nbdinfo', ['--size', `nbd+unix:///?socket=${sock}`])).code, 0, 'the first one still serves');
  await srv.stop();

  const plain = path.join(dir, 'not-a-socket');
  fs.writeFileSync(plain, 'precious');
  const third = await vblk(['serve', image(t), '--socket', plain]);
  t.equal(third.code, 1);
  t.match(third.stderr, /exists and is not a socket/);
  t.equal(fs.readFileSync(plain, 'utf8'), 'precious', 'the file is untouched');
});

t.test('--listen adds a TCP listener with its own URI', async (t) => {
  const srv = await serve(t, [image(t), '--listen', '127.0.0.1:0']);
  const tcp = srv.uris.find((u) => u.startsWith('nbd://127.0.0.1:'));
  t.ok(tcp, 'a TCP URI is printed');
  t.ok(srv.uris.some((u) => u.startsWith('nbd+unix:///?socket=')), 'and the UNIX one');
  const r = await run('nbdinfo', ['--size', tcp!]);
  t.equal(r.stdout.trim(), String(8 << 20), 'nbdinfo answers over TCP');
});

t.test('one log line per connection open and close, with counts and bytes', async (t) => {
  const srv = await serve(t, [image(t)]);
  const r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 64k', '-c', 'read -P 1 0 64k', srv.uri()]);
  t.equal(r.code, 0, r.stderr);
  await srv.stop();
  const closed = srv.logs().filter((l) => l.msg === 'connection closed');
  const io = closed.find((l) => (l.bytesWritten as number) > 0);
  t.ok(io, 'a close line for the qemu-io connection');
  t.equal(io!.bytesWritten, 65536);
  t.equal(io!.bytesRead, 65536);
  t.equal((io!.requests as Record<string, number>).NBD_CMD_WRITE, 1);
  t.equal(srv.logs().filter((l) => l.msg === 'connection opened').length, closed.length, 'opened and closed pair up');
  t.notOk(srv.logs().some((l) => l.msg === 'request'), 'no per-request lines at the default level');
});

t.test('shutdown: a request arriving during shutdown gets ESHUTDOWN, then the server exits 0', async (t) => {
  const file = image(t);
  const srv = await serve(t, [file]);
  const c = await RawClient.connect(srv.socket);
  await c.handshake();
  // Half a write is on the wire when the signal arrives: the server waits for the rest.
  const payload = Buffer.alloc(1 << 20, 0x77);
  c.request({ flags: 0, type: CMD.WRITE, cookie: 1n, offset: 0, length: payload.length }, payload.subarray(0, 1000));
  await new Promise((r) => setTimeout(r, 100));
  srv.proc.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 300));
  t.equal(srv.proc.exitCode, null, 'still running while a request is half received');
  c.send(payload.subarray(1000));
  const [chunk] = await c.structuredReply();
  t.equal(chunk.payload.type, CHUNK.ERROR);
  t.equal(replyError(chunk), NBD_ERR.ESHUTDOWN, 'ESHUTDOWN');
  t.ok(await c.closesWithin(3000), 'then the connection is closed');
  t.same(await srv.exited, { code: 0, signal: null }, 'and the server exits 0');
  t.ok(fs.readFileSync(file).subarray(0, 1 << 20).every((b) => b === 0), 'the refused write was not applied');
});

t.test('shutdown: requests in flight finish before the exit', async (t) => {
  const file = image(t, 64 << 20);
  const srv = await serve(t, [file]);
  const disk = await connect(srv.uri());
  const data = Buffer.alloc(8 << 20, 0x3c);
  const writes = [0, 1, 2, 3].map((i) => disk.write(i * data.length, data, { fua: true }));
  srv.proc.kill('SIGTERM');
  // A write done before the signal succeeds, a refused one fails with ESHUTDOWN.
  const errors = (await Promise.allSettled(writes)).map((r) => (r.status === 'fulfilled' ? 0 : (r.reason as NbdError).errno));
  t.ok(errors.every((e) => e === 0 || e === NBD_ERR.ESHUTDOWN), 'each write either done or refused with ESHUTDOWN');
  t.same(await srv.exited, { code: 0, signal: null });
  const content = fs.readFileSync(file);
  errors.forEach((e, i) => {
    if (e === 0) t.ok(content.subarray(i * data.length, (i + 1) * data.length).every((b) => b === 0x3c), `write ${i} is in the file`);
  });
});

t.test('--pid-file: written with the pid once ready, removed at exit; a bad one fails the start', async (t) => {
  const dir = tempDir(t);
  const pidFile = path.join(dir, 'vblk.pid');
  const srv = await serve(t, [image(t), '--pid-file', pidFile]);
  t.equal(fs.readFileSync(pidFile, 'utf8'), `${srv.proc.pid}\n`, 'the pid, once the server is ready');
  t.same(fs.readdirSync(dir), ['vblk.pid'], 'no temporary file left beside it');
  t.same(await srv.stop(), { code: 0, signal: null });
  t.notOk(fs.existsSync(pidFile), 'gone after SIGTERM');

  const sock = path.join(dir, 's.sock');
  const missing = await vblk(['serve', image(t), '--socket', sock, '--pid-file', path.join(dir, 'no', 'such', 'dir', 'vblk.pid')]);
  t.equal(missing.code, 1, 'a pid file that cannot be written: exit 1');
  t.match(missing.stderr, /^vblk: cannot write the pid file .*vblk\.pid: ENOENT$/m, 'saying why');
  t.equal(missing.stdout, '', 'no URI: the server was never ready');
  t.notOk(fs.existsSync(sock), 'and the socket it made is removed');
  const empty = await vblk(['serve', image(t), '--socket', sock, '--pid-file', '']);
  t.equal(empty.code, 2);
  t.match(empty.stderr, /^vblk: serve: --pid-file needs a file name; see 'vblk serve --help'\n$/);
});
