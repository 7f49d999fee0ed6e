// parseListenAddress, exportUri, and claimSocketPath/listen on real UNIX
// sockets: a stale socket is replaced, a live one or any other file is not.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import t from 'tap';
import { claimSocketPath, exportUri, listen, parseListenAddress } from '../src/server/listeners.js';
import { tempDir } from './helpers/server.js';

function listening(socketPath: string): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    const server = net.createServer((c) => c.end());
    server.once('error', reject);
    server.listen(socketPath, () => resolve(server));
  });
}

function closeServer(server: net.Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

function connects(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(socketPath);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

t.test('parseListenAddress accepts PORT, HOST:PORT and [V6]:PORT', async (t) => {
  t.same(parseListenAddress('10809'), { host: '127.0.0.1', port: 10809 }, 'a port alone is loopback');
  t.same(parseListenAddress('localhost:10809'), { host: 'localhost', port: 10809 });
  t.same(parseListenAddress('0.0.0.0:1'), { host: '0.0.0.0', port: 1 });
  t.same(parseListenAddress('[::1]:10809'), { host: '::1', port: 10809 });
  t.same(parseListenAddress('[::]:0'), { host: '::', port: 0 }, 'port 0 lets the system choose');
  t.same(parseListenAddress('[fe80::1%eth0]:65535'), { host: 'fe80::1%eth0', port: 65535 }, 'highest port, zone id');
  t.same(parseListenAddress(':10809'), { host: '127.0.0.1', port: 10809 }, 'an empty host is loopback');
});

t.test('parseListenAddress refuses what is not an address', async (t) => {
  for (const bad of ['', 'localhost', 'localhost:', ':', '::1:10809', '[::1]', '[::1]:', '::1', 'host:-1', 'host:12ab', '65536', '99999999', 'a:b:1', '[::1]10809', ' 10809', '10809 ']) {
    t.throws(() => parseListenAddress(bad), /--listen/, `'${bad}'`);
  }
  t.throws(() => parseListenAddress('70000'), /out of range/, 'out of range says so');
});

t.test('exportUri for UNIX sockets', async (t) => {
  t.equal(exportUri({ kind: 'unix', path: '/run/vblk.sock' }, ''), 'nbd+unix:///?socket=/run/vblk.sock', 'default export');
  t.equal(exportUri({ kind: 'unix', path: '/run/vblk.sock' }, 'disk'), 'nbd+unix:///disk?socket=/run/vblk.sock');
  t.equal(
    exportUri({ kind: 'unix', path: '/tmp/my dir/v#1.sock' }, 'my disk'),
    'nbd+unix:///my%20disk?socket=/tmp/my%20dir/v%231.sock',
    'spaces and # are percent-encoded in the name and the path',
  );
  t.equal(exportUri({ kind: 'unix', path: 'rel/v.sock' }, 'a&b'), `nbd+unix:///a%26b?socket=${path.resolve('rel/v.sock')}`, 'a relative path is made absolute');
  t.equal(exportUri({ kind: 'unix', path: '/s' }, 'ü?'), 'nbd+unix:///%C3%BC%3F?socket=/s', 'UTF-8 and ? in names');
});

t.test('exportUri for TCP', async (t) => {
  t.equal(exportUri({ kind: 'tcp', host: '127.0.0.1', port: 10809 }, ''), 'nbd://127.0.0.1:10809/');
  t.equal(exportUri({ kind: 'tcp', host: 'localhost', port: 10809 }, 'my disk'), 'nbd://localhost:10809/my%20disk');
  t.equal(exportUri({ kind: 'tcp', host: '::1', port: 10809 }, 'x'), 'nbd://[::1]:10809/x', 'IPv6 in brackets');
  t.equal(exportUri({ kind: 'tcp', host: '0.0.0.0', port: 10809 }, 'a/b'), 'nbd://0.0.0.0:10809/a%2Fb', 'a slash in a name is encoded');
});

t.test('exportUri with TLS: nbds and nbds+unix', async (t) => {
  t.equal(exportUri({ kind: 'unix', path: '/run/vblk.sock' }, 'disk', true), 'nbds+unix:///disk?socket=/run/vblk.sock');
  t.equal(exportUri({ kind: 'tcp', host: '::1', port: 10809 }, '', true), 'nbds://[::1]:10809/');
  t.equal(exportUri({ kind: 'tcp', host: '127.0.0.1', port: 40123 }, 'x', false), 'nbd://127.0.0.1:40123/x', 'plain unless asked');
});

t.test('claimSocketPath: a missing path is free', async (t) => {
  const dir = tempDir(t);
  await t.resolves(claimSocketPath(path.join(dir, 'none.sock')));
  t.notOk(fs.existsSync(path.join(dir, 'none.sock')), 'and nothing is created');
});

t.test('claimSocketPath: a regular file, a directory or a symlink is refused and left alone', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'data.img');
  fs.writeFileSync(file, 'precious');
  await t.rejects(claimSocketPath(file), /not a socket/);
  t.equal(fs.readFileSync(file, 'utf8'), 'precious', 'file kept');
  const sub = path.join(dir, 'sub');
  fs.mkdirSync(sub);
  await t.rejects(claimSocketPath(sub), /not a socket/, 'directory');
  t.ok(fs.statSync(sub).isDirectory());
  const link = path.join(dir, 'link.sock');
  fs.symlinkSync(file, link);
  await t.rejects(claimSocketPath(link), /not a socket/, 'symlink');
  t.ok(fs.lstatSync(link).isSymbolicLink(), 'symlink kept');
});

t.test('claimSocketPath: a stale socket is removed', async (t) => {
  const dir = tempDir(t);
  const live = path.join(dir, 'live.sock');
  const stale = path.join(dir, 'stale.sock');
  const server = await listening(live);
  // Node unlinks its socket on close; a hard link keeps the inode, with nobody listening.
  fs.linkSync(live, stale);
  await closeServer(server);
  t.ok(fs.lstatSync(stale).isSocket(), 'a socket file is left behind');
  t.notOk(await connects(stale), 'nobody answers on it');
  await t.resolves(claimSocketPath(stale));
  t.notOk(fs.existsSync(stale), 'removed');
});

t.test('claimSocketPath: the socket of a killed server is removed', async (t) => {
  const dir = tempDir(t);
  const sock = path.join(dir, 'killed.sock');
  const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(sock)}, () => console.log('up'))`], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', () => reject(new Error('listener exited early')));
  });
  t.ok(await connects(sock), 'the child is listening');
  await t.rejects(claimSocketPath(sock), /already listening/, 'a live server is refused');
  child.kill('SIGKILL');
  await exited;
  t.ok(fs.lstatSync(sock).isSocket(), 'SIGKILL leaves the socket file');
  await t.resolves(claimSocketPath(sock));
  t.notOk(fs.existsSync(sock), 'removed');
});

t.test('claimSocketPath: a live socket is refused with a clear message', async (t) => {
  const dir = tempDir(t);
  const sock = path.join(dir, 'busy.sock');
  const server = await listening(sock);
  t.teardown(() => closeServer(server));
  await t.rejects(claimSocketPath(sock), { message: `another server is already listening on ${sock}` });
  t.ok(fs.lstatSync(sock).isSocket(), 'left in place');
  t.ok(await connects(sock), 'and the server still answers');
});

t.test('claimSocketPath: a live server that is too busy to accept is refused, not unlinked', async (t) => {
  // A listener whose event loop is blocked stops accepting; once its
  // backlog is full, connect() fails with EAGAIN although it is alive.
  const dir = tempDir(t);
  const sock = path.join(dir, 'busy.sock');
  const script = `require('net').createServer().listen({ path: ${JSON.stringify(sock)}, backlog: 1 }, () => {
    console.log('up');
    const end = Date.now() + 20000;
    while (Date.now() < end) {}
  })`;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  t.teardown(async () => {
    child.kill('SIGKILL');
    await exited;
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', () => reject(new Error('listener exited early')));
  });
  const held: net.Socket[] = [];
  t.teardown(() => held.forEach((c) => c.destroy()));
  let refused: string | null = null;
  for (let i = 0; i < 20 && !refused; i++) {
    refused = await new Promise<string | null>((resolve) => {
      const c = net.connect(sock);
      c.once('connect', () => {
        held.push(c);
        resolve(null);
      });
      c.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
    });
  }
  t.equal(refused, 'EAGAIN', 'the backlog is full');
  await t.rejects(claimSocketPath(sock), /already listening|busy|refus/, 'a live server is refused');
  t.ok(fs.existsSync(sock), 'its socket is left in place');
});

t.test('listen on a UNIX socket claims the path and sets the exact mode', async (t) => {
  const dir = tempDir(t);
  const sock = path.join(dir, 'v.sock');
  const currentUmask = (): number => {
    const u = process.umask(0o022);
    process.umask(u);
    return u;
  };
  const umaskBefore = currentUmask();
  const first = net.createServer((c) => c.end());
  await listen(first, { kind: 'unix', path: sock, mode: 0o660 });
  t.teardown(() => closeServer(first));
  t.equal(fs.statSync(sock).mode & 0o777, 0o660, 'mode 0660');
  t.ok(await connects(sock));
  t.equal(currentUmask(), umaskBefore, 'umask restored');
  const second = net.createServer();
  await t.rejects(listen(second, { kind: 'unix', path: sock, mode: 0o600 }), /already listening/, 'a second server is refused');
  const tcp = net.createServer();
  await listen(tcp, { kind: 'tcp', host: '127.0.0.1', port: 0 });
  t.teardown(() => closeServer(tcp));
  const addr = tcp.address() as net.AddressInfo;
  t.ok(addr.port > 0, 'TCP listens on a chosen port');
});
