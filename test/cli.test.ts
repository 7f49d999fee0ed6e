// The vblk command line: help with examples everywhere, clear errors with
// the right exit status, create and info, and the README's start command
// working in a fresh directory.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { tempDir, vblk } from './helpers/server.js';
import { run } from './helpers/tools.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

t.test('every command has --help with examples', async (t) => {
  const top = await vblk(['--help']);
  t.equal(top.code, 0);
  for (const cmd of ['serve', 'create', 'info', 'journal']) {
    t.match(top.stdout, new RegExp(`^  ${cmd} `, 'm'), `top-level help lists ${cmd}`);
    const r = await vblk([cmd, '--help']);
    t.equal(r.code, 0, `${cmd} --help exits 0`);
    t.match(r.stdout, new RegExp(`Usage: vblk ${cmd}`), `${cmd} --help has usage`);
    t.match(r.stdout, /Examples:\n {2}vblk /, `${cmd} --help has examples`);
  }
});

t.test('command-line mistakes exit 2 with a pointer to --help', async (t) => {
  const cases: [string[], RegExp][] = [
    [[], /Usage: vblk COMMAND/],
    [['frobnicate'], /unknown command 'frobnicate'/],
    [['serve', 'x.img', '--bogus'], /Unknown option '--bogus'.*see 'vblk serve --help'/],
    [['serve', 'x.img'], /nowhere to listen/],
    [['serve', '--socket', '/tmp/x.sock'], /nothing to serve/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--export', 'noequals'], /expected NAME=FILE/],
    [['serve', 'x.img', '--listen', 'host:port'], /expected HOST:PORT/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--log-level', 'loud'], /--log-level must be one of/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--engine', 'warp'], /--engine must be auto, sync, threads, uring, posix-aio/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--poll-us', '20000'], /--poll-us must be a number from 0 to 10000/],
    [['serve', 'x.img', '--vhost-user-blk', ''], /--vhost-user-blk : no socket path/],
    [['serve', 'x.img', '--vhost-user-blk', '/tmp/v.sock', '--num-queues', '0'], /--num-queues must be a number from 1 to 64/],
    [['serve', 'x.img', '--vhost-user-blk', '/tmp/v.sock', '--num-queues', '65'], /--num-queues must be a number from 1 to 64/],
    [['serve', '--export', 'a=x.img', '--vhost-user-blk', '/tmp/v.sock'], /there is no default export; name one/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'nosuch'], /unknown filter 'nosuch' \(filters: error, delay, rate, power-cut, journal, dirty\)/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'error:bogus=1'], /unknown key 'bogus'/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'error:op=read,op=write'], /op is given twice/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'error:op=rename'], /op must be read, write, flush, trim, zero or any/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'error:error=EAGAIN'], /error must be one of EIO/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'error:error=EIO,errno=EIO'], /error and errno name the same thing/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'error:error-rate=150%'], /error-rate must be 0 to 1/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'error:count=-1'], /count must be a whole number/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'error:offset=lots'], /offset: 'lots' is not a size/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'dirty:granularity=3000'], /granularity must be a power of two from 512 to 2G/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'dirty:granularity=256'], /granularity must be a power of two/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'dirty:bitmap=a+a'], /bitmap names a bitmap twice/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'dirty:bitmap=a+'], /bitmap needs a name/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'dirty:name=a'], /unknown key 'name'/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'error:noequals'], /'noequals' is not key=value/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'journal'], /journal: file=LOG is required/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'journal:file='], /file must name a file/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'journal:file=a,size=1'], /unknown key 'size'/],
    [['journal'], /expected list, replay or crash-states/],
    [['journal', 'undo', 'x.log'], /unknown action 'undo'/],
    [['journal', 'list'], /expected the journal file after list/],
    [['journal', 'replay', 'x.log', '--base', 'b.img', '--out', 'o.img'], /replay needs --to/],
    [['journal', 'crash-states', 'x.log', '--base', 'b.img'], /crash-states needs --out/],
    [['journal', 'crash-states', 'x.log', '--base', 'b.img', '--out', 'd', '--max', '0'], /--max must be a number from 1/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'delay:read=fast'], /read must be a duration such as 5ms/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'delay:read=-5ms'], /read must be a duration/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'delay:read=5ms,rdelay=6ms'], /rdelay sets the read delay a second time/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'delay:delay-fast-zero=1'], /unknown key 'delay-fast-zero'/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'delay:jitter=5ms,length=0'], /length must be above 0/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'rate:bytes=lots'], /bytes: 'lots' is not a size/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'rate:bytes=50M,rate=400M'], /bytes and rate both set the limit/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'rate:requests=1.5'], /requests must be a whole number/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'rate:burst=1'], /unknown key 'burst'/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'power-cut:policy=some'], /policy must be all, random, torn, not 'some'/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'power-cut:seed=x'], /seed must be a whole number/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'power-cut:seed=4294967296'], /seed must be below 2\^32/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'power-cut:max-dirty=4k'], /max-dirty must be at least 1M/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'power-cut:max-dirty=lots'], /max-dirty: 'lots' is not a size/],
    [['serve', 'x.img', '--socket', '/tmp/x.sock', '--filter', 'power-cut:fua=ignore'], /unknown key 'fua'/],
    [['info', 'x.img', '--engines'], /--engines takes no FILE/],
    [['create', 'x.img'], /--size is required/],
    [['create', 'x.img', '--size', 'lots'], /is not a size/],
  ];
  for (const [args, pattern] of cases) {
    const r = await vblk(args);
    t.equal(r.code, 2, `vblk ${args.join(' ')} exits 2`);
    t.match(r.stderr + r.stdout, pattern, `vblk ${args.join(' ')} says why`);
  }
});

t.test('runtime failures exit 1 with one clear line', async (t) => {
  const dir = tempDir(t);
  const missing = await vblk(['serve', path.join(dir, 'missing.img'), '--socket', path.join(dir, 's.sock')]);
  t.equal(missing.code, 1);
  t.match(missing.stderr, /^vblk: ENOENT.*missing\.img/);
  const qcow = path.join(dir, 'q.qcow2');
  t.equal((await vblk(['create', qcow, '--size', '1M'])).code, 0);
  const fd = fs.openSync(qcow, 'r+');
  fs.writeSync(fd, Buffer.from([0, 0, 0, 2]), 0, 4, 32); // crypt_method LUKS
  fs.closeSync(fd);
  const q = await vblk(['serve', qcow, '--socket', path.join(dir, 's.sock')]);
  t.equal(q.code, 1);
  t.match(q.stderr, /vblk cannot serve this qcow2 image: it is encrypted/);
});

t.test('create makes a sparse raw image and refuses to overwrite', async (t) => {
  const file = path.join(tempDir(t), 'sub', 'disk.img');
  const r = await vblk(['create', file, '--size', '10G']);
  t.equal(r.code, 0, r.stderr);
  const st = fs.statSync(file);
  t.equal(st.size, 10 * 2 ** 30, 'the size asked for');
  t.equal(st.blocks, 0, 'no blocks allocated');
  const again = await vblk(['create', file, '--size', '1G']);
  t.equal(again.code, 1);
  t.match(again.stderr, /already exists; vblk create never replaces a file/);
  t.equal(fs.statSync(file).size, 10 * 2 ** 30, 'the existing image is untouched');
  const q = await run('qemu-img', ['info', '--output=json', file]);
  t.same(JSON.parse(q.stdout)['virtual-size'], 10 * 2 ** 30, 'qemu-img agrees on the size');
});

t.test('info prints size and allocation', async (t) => {
  const file = path.join(tempDir(t), 'disk.img');
  fs.writeFileSync(file, '');
  fs.truncateSync(file, 16 << 20);
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, Buffer.alloc(1 << 20, 1), 0, 1 << 20, 4 << 20);
  fs.writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 12 << 20);
  fs.closeSync(fd);
  const json = await vblk(['info', file, '--json']);
  t.equal(json.code, 0, json.stderr);
  const info = JSON.parse(json.stdout);
  t.same(
    { format: info.format, virtualSize: info.virtualSize, dataBytes: info.dataBytes, dataExtents: info.dataExtents },
    { format: 'raw', virtualSize: 16 << 20, dataBytes: (1 << 20) + 4096, dataExtents: 2 },
  );
  t.equal(info.diskUsage, fs.statSync(file).blocks * 512);
  const text = await vblk(['info', file]);
  t.match(text.stdout, /virtual size: +16 MiB \(16777216 bytes\)/);
  t.match(text.stdout, /data: +1 MiB in 2 extents/);
});

t.test("the README's start command serves a default image on a fresh directory", async (t) => {
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
  const dir = tempDir(t);
  fs.symlinkSync(path.join(ROOT, 'dist'), path.join(dir, 'dist'));
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'));
  const child = spawn('sh', ['-c', `exec ${pkg.scripts.start}`], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  t.teardown(() => child.kill('SIGKILL'));
  let stdout = '';
  child.stdout.on('data', (d) => (stdout += d));
  const deadline = Date.now() + 15000;
  while (!stdout.includes('\n') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  const uri = stdout.trim();
  t.equal(uri, `nbd+unix:///?socket=${path.join(dir, 'var/vblk.sock')}`, 'prints the NBD URI');
  const st = fs.statSync(path.join(dir, 'var/default.img'));
  t.same([st.size, st.blocks], [2 ** 30, 0], 'var/default.img: 1 GiB, sparse');
  const r = await run('nbdinfo', ['--json', uri]);
  t.equal(r.code, 0, r.stderr);
  t.equal(JSON.parse(r.stdout).exports[0]['export-size'], 2 ** 30, 'the URI answers nbdinfo');
  child.kill('SIGTERM');
  t.equal(await exited, 0, 'and it stops cleanly');
});
