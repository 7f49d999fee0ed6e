// Without the native addon vblk still installs and serves: a failed build
// never fails `npm ci`, and the server and `vblk info --engines` say why
// the addon's engines are missing.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { serve, tempDir, vblk } from './helpers/server.js';
import { run } from './helpers/tools.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

t.test('a failed addon build exits 0 and leaves the reason in native/build/error.log', async (t) => {
  const dir = tempDir(t);
  fs.cpSync(path.join(ROOT, 'native'), path.join(dir, 'native'), {
    recursive: true,
    filter: (src) => !src.includes(`${path.sep}build`) || src.endsWith('build.mjs'),
  });
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'));
  const r = spawnSync(process.execPath, [path.join(dir, 'native', 'build.mjs')], {
    encoding: 'utf8',
    env: { ...process.env, CXX: '/bin/false', CC: '/bin/false' },
  });
  t.equal(r.status, 0, 'the install step still succeeds');
  t.match(r.stderr, /the native addon was not built/, 'and says so');
  const log = fs.readFileSync(path.join(dir, 'native', 'build', 'error.log'), 'utf8');
  t.match(log, /make|error/i, 'error.log holds the build output');
  t.notOk(fs.existsSync(path.join(dir, 'native', 'build', 'Release', 'vblk_native.node')), 'no addon was left behind');
});

t.test('without the addon: auto serves with threads and says why; info --engines explains', async (t) => {
  process.env.VBLK_NO_NATIVE = '1';
  t.teardown(() => delete process.env.VBLK_NO_NATIVE);
  const file = path.join(tempDir(t), 'disk.img');
  fs.writeFileSync(file, '');
  fs.truncateSync(file, 8 << 20);
  const srv = await serve(t, [file]);
  const ready = srv.logs().find((l) => l.msg === 'export ready')!;
  t.equal(ready.engine, 'threads');
  t.match(ready.reason as string, /io_uring is not: disabled by VBLK_NO_NATIVE=1/);
  const io = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 7 0 64k', '-c', 'read -P 7 0 64k', srv.uri()]);
  t.equal(io.code, 0, 'and serves');
  const info = await vblk(['info', '--engines', '--json']);
  const engines = Object.fromEntries(JSON.parse(info.stdout).engines.map((e: { name: string }) => [e.name, e]));
  t.same([engines.sync.available, engines.threads.available, engines.uring.available], [true, true, false]);
  t.match(engines.uring.detail, /VBLK_NO_NATIVE/);
  const asked = await vblk(['serve', file, '--socket', path.join(srv.dir, 'x.sock'), '--engine', 'uring']);
  t.equal(asked.code, 1, 'asking for uring by name is an error, not a fallback');
  t.match(asked.stderr, /the uring engine is not available here/);
  const direct = await vblk(['serve', file, '--socket', path.join(srv.dir, 'y.sock'), '--direct']);
  t.equal(direct.code, 1);
  t.match(direct.stderr, /--direct needs aligned buffers from the native addon/);
});

t.test('without the addon: vhost-user guest memory and fd watches say why, the koffi calls still work', async (t) => {
  const dist = (file: string) => JSON.stringify(new URL(`../src/${file}`, import.meta.url).href);
  const script = `
    import { MemoryTable } from ${dist('server/vhost-user/memory-table.js')};
    import { native, requireNative } from ${dist('io/native.js')};
    import { eventfd, eventfdRead, eventfdWrite } from ${dist('sys/eventfd.js')};
    const out = { native: native === null };
    try { new MemoryTable(); } catch (err) { out.table = [err.code, err.message]; }
    try { requireNative('watching a kick eventfd'); } catch (err) { out.watch = err.message; }
    const fd = eventfd();
    eventfdWrite(fd, 2);
    out.eventfd = eventfdRead(fd);
    console.log(JSON.stringify(out));
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
    encoding: 'utf8',
    env: { ...process.env, VBLK_NO_NATIVE: '1' },
  });
  t.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  t.equal(out.native, true, 'the addon is off');
  t.same(out.table, [
    'ERR_NATIVE_UNAVAILABLE',
    'vhost-user guest memory needs the native addon, which is unavailable: disabled by VBLK_NO_NATIVE=1',
  ]);
  t.match(out.watch, /^watching a kick eventfd needs the native addon/);
  t.equal(out.eventfd, 2, 'eventfd through koffi needs no addon');
});
