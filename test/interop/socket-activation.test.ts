// Socket activation: systemd-socket-activate listens (as a systemd
// .socket unit would) and starts vblk on the first connection with the
// listening socket as descriptor 3; libnbd's '[ CMD ]' does the same.
// vblk serves every connection on it, prints its URI, writes and removes
// --pid-file, and leaves the socket file to its owner. Variables for
// another process are ignored, bad ones refused with one line.

import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import t, { type Test } from 'tap';
import { socketActivated, tempDir, VBLK, type Exit } from '../helpers/server.js';
import { run } from '../helpers/tools.js';

const SIZE = 8 << 20;

function image(t: Test): string {
  const file = path.join(tempDir(t), 'disk.img');
  fs.writeFileSync(file, '');
  fs.truncateSync(file, SIZE);
  return file;
}

/** A TCP port nobody listens on right now. */
async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Starts the activated command (it runs on the first connection) and hangs up. */
function poke(socketPath: string): Promise<void> {
  return new Promise((resolve) => {
    const c = net.connect(socketPath, () => c.destroy());
    c.on('close', () => resolve());
    c.on('error', () => resolve());
  });
}

/** The exit, or 'still running' after 15 s (a server that should have exited but serves fails the test instead of hanging it). */
function exitOf(exited: Promise<Exit>): Promise<Exit | 'still running'> {
  return Promise.race([exited, new Promise<'still running'>((resolve) => setTimeout(() => resolve('still running'), 15_000).unref())]);
}

/** `vblk serve ARGS` run by sh with LISTEN_PID set to its own pid and the given variables, `redirect` applied (sh syntax). */
function withVariables(variables: string, args: string[], redirect = ''): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return run('sh', ['-c', `LISTEN_PID=$$ ${variables} exec "$0" "$@" ${redirect}`, process.execPath, VBLK, 'serve', ...args]);
}

t.test('a UNIX socket: qemu-io and nbdinfo connect to it, again and again; the socket file stays, the pid file comes and goes', async (t) => {
  const file = image(t);
  const dir = tempDir(t);
  const sock = path.join(dir, 'vblk.sock');
  const pidFile = path.join(dir, 'vblk.pid');
  const act = await socketActivated(t, ['-l', sock], [file, '--pid-file', pidFile]);
  const uri = `nbd+unix:///?socket=${sock}`;

  const write = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 1M', uri]);
  t.equal(write.code, 0, `first connection (starts vblk): a write\n${write.stderr}`);
  t.equal((await run('nbdinfo', ['--size', uri])).stdout.trim(), String(SIZE), 'second connection: nbdinfo');
  const sizes = await Promise.all([1, 2, 3].map(() => run('nbdinfo', ['--size', uri])));
  t.same(
    sizes.map((r) => r.stdout.trim()),
    [String(SIZE), String(SIZE), String(SIZE)],
    'three at once',
  );
  const read = await run('qemu-io', ['-f', 'raw', '-r', '-c', 'read -P 0x5a 0 1M', '-c', 'read -P 0 1M 1M', uri]);
  t.equal(read.code, 0, `the write reads back\n${read.stdout}${read.stderr}`);

  t.equal(act.stdout(), '', 'nothing on stdout, which may be a client’s (libnbd [ CMD ])');
  t.ok(act.stderr().includes(`"uris":["${uri}"]`), "the URI, with the socket's path (getsockname), is logged");
  t.match(act.stderr(), /"listen":"fd 3 \/[^"]*vblk\.sock"/, 'the log names the descriptor and its path');
  t.equal(fs.readFileSync(pidFile, 'utf8'), `${act.proc.pid}\n`, 'the pid file holds the pid (systemd-socket-activate execs vblk)');

  t.same(await act.stop(), { code: 0, signal: null }, 'SIGTERM: exit 0');
  t.ok(fs.statSync(sock).isSocket(), 'the socket file, which vblk did not make, is left alone');
  t.notOk(fs.existsSync(pidFile), 'the pid file is removed');
  const content = fs.readFileSync(file);
  t.ok(content.subarray(0, 1 << 20).every((b) => b === 0x5a), 'the write is in the image');
  t.ok(content.subarray(1 << 20).every((b) => b === 0), 'and nothing else');
});

t.test('a TCP socket: the URI has the bound address, data written reads back', async (t) => {
  const file = image(t);
  const port = await freePort();
  const act = await socketActivated(t, ['-l', `127.0.0.1:${port}`], [file]);
  const uri = `nbd://127.0.0.1:${port}/`;
  const write = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xc3 64k 128k', uri]);
  t.equal(write.code, 0, write.stderr);
  const read = await run('qemu-io', ['-f', 'raw', '-r', '-c', 'read -P 0xc3 64k 128k', '-c', 'read -P 0 0 64k', uri]);
  t.equal(read.code, 0, `${read.stdout}${read.stderr}`);
  t.equal((await run('nbdinfo', ['--size', uri])).stdout.trim(), String(SIZE));
  t.equal(act.stdout(), '', 'nothing on stdout');
  t.ok(act.stderr().includes(`"uris":["${uri}"]`), 'the TCP URI, with the bound address, is logged');
  t.same(await act.stop(), { code: 0, signal: null });
  t.ok(fs.readFileSync(file).subarray(64 << 10, 192 << 10).every((b) => b === 0xc3), 'the write is in the image');
});

t.test("libnbd's '[ CMD ]' starts vblk by socket activation: nbdcopy in and out, nbdinfo", async (t) => {
  const dir = tempDir(t);
  const file = image(t);
  const source = path.join(dir, 'source.raw');
  const pattern = Buffer.alloc(SIZE);
  for (let i = 0; i < SIZE; i += 4096) pattern.fill(i / 4096, i, i + 1000);
  fs.writeFileSync(source, pattern);
  const command = ['[', process.execPath, VBLK, 'serve', file, ']'];

  const into = await run('nbdcopy', ['--', source, ...command]);
  t.equal(into.code, 0, `nbdcopy into vblk\n${into.stderr}`);
  const compare = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', source, file]);
  t.equal(compare.code, 0, `the image is the source: ${compare.stdout}`);

  const copy = path.join(dir, 'copy.raw');
  const out = await run('nbdcopy', ['--', ...command, copy]);
  t.equal(out.code, 0, `nbdcopy out of vblk\n${out.stderr}`);
  t.ok(fs.readFileSync(copy).equals(pattern), 'the copy is the source');

  const info = await run('nbdinfo', ['--size', '--', ...command]);
  t.equal(info.code, 0, info.stderr);
  t.match(info.stdout, new RegExp(`^${SIZE}$`, 'm'), 'nbdinfo reads the size');
  t.match(info.stderr, /"msg":"shutdown complete"/, 'libnbd stops vblk with SIGTERM: an orderly shutdown');

  t.equal(info.stdout, `${SIZE}\n`, 'and nothing else reaches nbdinfo’s stdout');

  // With --stdio, vblk serves the one connection libnbd makes and exits by itself.
  const stdio = await run('nbdinfo', ['--size', '--', '[', process.execPath, VBLK, 'serve', '--stdio', file, ']']);
  t.equal(stdio.code, 0, stdio.stderr);
  t.equal(stdio.stdout, `${SIZE}\n`, "'nbdinfo [ vblk serve --stdio IMG ]' reads the size");
  t.match(stdio.stderr, /"msg":"the --stdio client has gone"/, 'vblk ends when its one connection does');
  t.match(stdio.stderr, /"msg":"shutdown complete"/, 'an orderly shutdown to the end');
  t.notMatch(stdio.stderr, /second signal/, 'which the SIGTERM libnbd sends after the connection does not cut short');
  const back = path.join(dir, 'back.raw');
  const viaStdio = await run('nbdcopy', ['--', '[', process.execPath, VBLK, 'serve', '--stdio', file, ']', back]);
  t.equal(viaStdio.code, 0, viaStdio.stderr);
  t.ok(fs.readFileSync(back).equals(pattern), "nbdcopy out of '[ vblk serve --stdio ]': the source");
});

t.test('variables for another process are ignored: vblk then needs --socket', async (t) => {
  const file = image(t);
  const dir = tempDir(t);
  const sock = path.join(dir, 'activated.sock');
  // sh is started with LISTEN_PID set to its pid and execs vblk under another LISTEN_PID.
  const wrapped = ['sh', '-c', 'LISTEN_PID=1 exec "$0" "$@"', process.execPath, VBLK, 'serve'];
  const ignored = await socketActivated(t, ['-l', sock], [file], wrapped);
  await poke(sock);
  t.same(await exitOf(ignored.exited), { code: 2, signal: null }, 'no listener of its own: exit 2');
  t.match(ignored.stderr(), /^vblk: serve: nowhere to listen: .*$/m, 'one line says so');

  const own = path.join(dir, 'own.sock');
  const withSocket = await socketActivated(t, ['-l', sock], [file, '--socket', own], wrapped);
  await poke(sock);
  const deadline = Date.now() + 15_000;
  while (!withSocket.stderr().includes('"msg":"ready"') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.equal((await run('nbdinfo', ['--size', `nbd+unix:///?socket=${own}`])).stdout.trim(), String(SIZE), 'with --socket it serves there');
  t.equal(withSocket.stdout(), `nbd+unix:///?socket=${own}\n`, 'and only there');
  t.same(await withSocket.stop(), { code: 0, signal: null });
});

t.test('bad variables and descriptors: exit 1 with one line', async (t) => {
  const file = image(t);
  const cases: [string, string, RegExp][] = [
    ['LISTEN_FDS=abc', '', /^vblk: socket activation: LISTEN_FDS=abc is not a number of descriptors\n$/],
    ['LISTEN_FDS=0', '', /^vblk: socket activation: LISTEN_FDS=0, the service manager passed no sockets\n$/],
    // Node opens descriptors of its own (epoll, eventfd) at start, and takes 3 if it is free.
    ['LISTEN_FDS=1', '3<&-', /^vblk: socket activation: descriptor 3 \(of LISTEN_FDS\) is not (open|a socket)\n$/],
    ['LISTEN_FDS=1', `3<${file}`, /^vblk: socket activation: descriptor 3 \(of LISTEN_FDS\) is not a socket\n$/],
    ['LISTEN_FDS=1 LISTEN_FDNAMES=a:b', '', /^vblk: socket activation: LISTEN_FDNAMES has 2 names for LISTEN_FDS=1 sockets\n$/],
  ];
  for (const [variables, redirect, message] of cases) {
    const r = await withVariables(variables, [file], redirect);
    t.equal(r.code, 1, `${variables} ${redirect}: exit 1`);
    t.match(r.stderr, message, `${variables} ${redirect}: says what is wrong`);
    t.equal(r.stdout, '', 'nothing on stdout');
  }
  const bad = await run('sh', ['-c', 'LISTEN_PID=x LISTEN_FDS=1 exec "$0" "$@"', process.execPath, VBLK, 'serve', file]);
  t.match(bad.stderr, /^vblk: socket activation: LISTEN_PID=x is not a process id\n$/);
});

t.test('a connection passed as if it were a listener (Accept=yes) is refused, pointing to --stdio', async (t) => {
  const file = image(t);
  const sock = path.join(tempDir(t), 'vblk.sock');
  const act = await socketActivated(t, ['--accept', '-l', sock], [file]);
  await poke(sock);
  // With --accept, each connection gets a child; the activator itself keeps running.
  const deadline = Date.now() + 15_000;
  while (!/is a connection/.test(act.stderr()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.match(act.stderr(), /^vblk: socket activation: descriptor 3 is a connection, not a listening socket; for a service with Accept=yes run 'vblk serve --stdio'$/m);
});

t.test('socket activation and --socket or --listen together: exit 2', async (t) => {
  const file = image(t);
  const sock = path.join(tempDir(t), 'vblk.sock');
  const act = await socketActivated(t, ['-l', sock], [file, '--listen', '0']);
  await poke(sock);
  t.same(await exitOf(act.exited), { code: 2, signal: null });
  t.match(act.stderr(), /^vblk: serve: the service manager passed 1 listening socket \(LISTEN_FDS\): leave out --socket and --listen; see 'vblk serve --help'$/m);
});
