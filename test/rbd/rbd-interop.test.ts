// vblk serving Ceph RBD images, checked with clients nobody here wrote:
// qemu-io, qemu-img, nbdcopy, nbdinfo and fio through vblk's NBD export,
// and the cluster's own view of the image (rbd export, rbd diff, rbd snap
// ls, rbd children) and QEMU's rbd driver (qemu-img convert from rbd:,
// from qemu-block-extra) as the judges. One single-node cluster for the
// whole file (test/ceph/cluster.sh, through test/helpers/ceph.ts); every
// image has a name of its own.

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { startCeph } from '../helpers/ceph.js';
import { bootGuest } from '../helpers/guest.js';
import { killAtEnd, serve, tempDir, VBLK, vblk, type Exit } from '../helpers/server.js';
import { run, type RunResult } from '../helpers/tools.js';
import { images, output } from './images.js';

const MiB = 1 << 20;
const SIZE = 64 * MiB;

const ceph = await startCeph(t);
const { fresh, exported, create: createImage } = images(ceph);
const conf = (): string[] => ['--ceph-conf', ceph.conf];
/** The name vblk and QEMU read: QEMU's syntax, the configuration file in it for QEMU. */
const vblkName = (image: string): string => `rbd:${ceph.pool}/${image}`;
const qemuName = (image: string): string => `rbd:${ceph.pool}/${image}:conf=${ceph.conf}`;
const out = output;
const create = (image: string, size = SIZE): Promise<void> => createImage(image, size);

async function ok(t: Test, cmd: string, args: string[], what: string): Promise<RunResult> {
  const r = await run(cmd, args);
  t.equal(r.code, 0, what, { output: out(r) });
  return r;
}

interface DiffExtent {
  offset: number;
  length: number;
  exists: string;
}

/** Merged [start, end) runs of data. */
function runs(extents: { offset: number; length: number }[]): [number, number][] {
  const sorted = [...extents].sort((a, b) => a.offset - b.offset);
  const merged: [number, number][] = [];
  for (const e of sorted) {
    const last = merged.at(-1);
    if (last && last[1] >= e.offset) last[1] = Math.max(last[1], e.offset + e.length);
    else merged.push([e.offset, e.offset + e.length]);
  }
  return merged;
}

async function nbdDataRuns(uri: string): Promise<[number, number][]> {
  const r = await run('nbdinfo', ['--map', '--json', uri]);
  if (r.code !== 0) throw new Error(`nbdinfo --map: ${out(r)}`);
  const map = JSON.parse(r.stdout) as { offset: number; length: number; type: number }[];
  return runs(map.filter((e) => (e.type & 1) === 0));
}

async function rbdDataRuns(image: string, wholeObject: boolean): Promise<[number, number][]> {
  const diff = JSON.parse(await ceph.rbd(['diff', '--format', 'json', ...(wholeObject ? ['--whole-object'] : []), `${ceph.pool}/${image}`])) as DiffExtent[];
  return runs(diff.filter((e) => e.exists === 'true'));
}

t.test('vblk create and info, and the rbd CLI sees the same image', async (t) => {
  const image = fresh('create');
  const r = await vblk(['create', vblkName(image), '--size', '48M', '--object-size', '1M', ...conf()]);
  t.equal(r.code, 0, 'vblk create exits 0', { stderr: r.stderr });
  const info = JSON.parse(await ceph.rbd(['info', '--format', 'json', `${ceph.pool}/${image}`])) as { size: number; order: number; features: string[] };
  t.equal(info.size, 48 * MiB, 'rbd info: 48 MiB');
  t.equal(info.order, 20, 'rbd info: 1 MiB objects (order 20)');
  t.ok(info.features.includes('exclusive-lock'), 'the cluster default features, exclusive-lock among them');
  const v = await vblk(['info', vblkName(image), '--json', ...conf()]);
  t.equal(v.code, 0, 'vblk info exits 0', { stderr: v.stderr });
  const mine = JSON.parse(v.stdout) as { virtualSize: number; objectSize: number; features: string[]; dataBytes: number; lockOwners: string[] };
  t.equal(mine.virtualSize, 48 * MiB, 'vblk info: the same size');
  t.equal(mine.objectSize, MiB, 'vblk info: the same object size');
  t.same(mine.features, info.features, 'vblk info: the same features');
  t.equal(mine.dataBytes, 0, 'a new image holds no data');
  t.same(mine.lockOwners, [], 'and nobody holds its lock');
  const again = await vblk(['create', vblkName(image), '--size', '1M', ...conf()]);
  t.equal(again.code, 1, 'creating it again fails');
  t.match(again.stderr, /exists/i, 'saying it exists');
  const q = await ok(t, 'qemu-img', ['info', '--output=json', qemuName(image)], "QEMU's rbd driver opens it");
  t.equal((JSON.parse(q.stdout) as { 'virtual-size': number })['virtual-size'], 48 * MiB, 'and reads the same size');
  const grow = await vblk(['resize', vblkName(image), '+16M', ...conf()]);
  t.equal(grow.code, 0, 'vblk resize +16M exits 0', { stderr: grow.stderr });
  t.equal((JSON.parse(await ceph.rbd(['info', '--format', 'json', `${ceph.pool}/${image}`])) as { size: number }).size, 64 * MiB, 'rbd info: now 64 MiB');
  const shrink = await vblk(['resize', vblkName(image), '32M', ...conf()]);
  t.equal(shrink.code, 1, 'shrinking without --shrink fails');
  t.match(shrink.stderr, /give --shrink/, 'saying what it needs');
});

t.test('qemu-io, nbdcopy, fio and qemu-img through the NBD export; rbd export and QEMU rbd: agree byte for byte', async (t) => {
  const dir = tempDir(t);
  const image = fresh('io');
  await create(image);
  const source = Buffer.alloc(SIZE);
  crypto.randomFillSync(source, 0, 12 * MiB);
  crypto.randomFillSync(source, 30 * MiB, 3 * MiB + 4096);
  const sourceFile = path.join(dir, 'source.raw');
  fs.writeFileSync(sourceFile, source);

  const server = await serve(t, [vblkName(image), ...conf()]);
  const uri = server.uri();
  await ok(t, 'nbdcopy', [sourceFile, uri], 'nbdcopy writes a 64 MiB file with random ranges into the export');
  await ok(t, 'qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a -f 40M 1M', '-c', 'write -P 0xa5 41M 64k', '-c', 'flush', '-c', 'read -P 0x5a 40M 1M', uri], 'qemu-io: a FUA write, a plain one, a flush, and the pattern read back');
  source.fill(0x5a, 40 * MiB, 41 * MiB);
  source.fill(0xa5, 41 * MiB, 41 * MiB + 65536);
  const fio = await run('fio', [
    '--ioengine=nbd', `--uri=${uri}`, '--name=verify', '--rw=randwrite', '--bs=4k', '--iodepth=32',
    `--offset=${48 * MiB}`, `--size=${8 * MiB}`, '--verify=crc32c', '--do_verify=1', '--verify_fatal=1', '--randrepeat=1', '--output-format=json',
  ], { cwd: dir }); // fio leaves its verify state file where it runs
  t.equal(fio.code, 0, 'fio: 8 MiB of 4 KiB random writes at depth 32, then every block verified', { output: out(fio) });
  const fioJob = JSON.parse(fio.stdout.slice(fio.stdout.indexOf('{'))) as { jobs: { error: number; write: { total_ios: number }; read: { total_ios: number } }[] };
  t.equal(fioJob.jobs[0].error, 0, 'fio saw no error');
  t.ok(fioJob.jobs[0].read.total_ios >= 2048, `fio read back what it wrote (${fioJob.jobs[0].read.total_ios} reads)`);

  const viaNbd = path.join(dir, 'via-nbd.raw');
  await ok(t, 'qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, viaNbd], 'qemu-img convert reads the export');
  t.equal((await server.stop()).code, 0, 'vblk exits 0 on SIGTERM');

  const viaRbd = await exported(dir, image);
  const viaQemu = path.join(dir, 'via-qemu-rbd.raw');
  await ok(t, 'qemu-img', ['convert', '-f', 'raw', '-O', 'raw', qemuName(image), viaQemu], "qemu-img convert reads the image with QEMU's rbd driver");
  const nbdBytes = fs.readFileSync(viaNbd);
  t.ok(viaRbd.subarray(0, 48 * MiB).equals(source.subarray(0, 48 * MiB)), 'rbd export: what nbdcopy and qemu-io wrote is in the cluster');
  t.ok(nbdBytes.equals(viaRbd), 'qemu-img convert over NBD and rbd export match byte for byte');
  t.ok(fs.readFileSync(viaQemu).equals(viaRbd), "QEMU's rbd driver and rbd export match byte for byte");
  const compare = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', viaNbd, qemuName(image)]);
  t.equal(compare.code, 0, 'qemu-img compare: the NBD copy and rbd: are identical', { output: out(compare) });
});

t.test('nbdinfo --map agrees with rbd diff (whole objects with fast-diff; extents without)', async (t) => {
  for (const fastDiff of [true, false]) {
    const image = fresh(fastDiff ? 'map-fast' : 'map-exact');
    await create(image);
    if (!fastDiff) {
      // Object map and fast-diff off: librbd then lists each object's extents.
      await ceph.rbd(['feature', 'disable', `${ceph.pool}/${image}`, 'fast-diff', 'object-map']);
    }
    const server = await serve(t, [vblkName(image), ...conf()]);
    await ok(t, 'qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 64k', '-c', 'write -P 2 5M 4k', '-c', 'write -P 3 20M 8M', '-c', 'write -z 22M 1M', server.uri()], 'qemu-io writes three ranges');
    const nbd = await nbdDataRuns(server.uri());
    const rbd = await rbdDataRuns(image, fastDiff);
    t.same(nbd, rbd, `${fastDiff ? 'fast-diff' : 'no fast-diff'}: the data nbdinfo --map reports is what rbd diff${fastDiff ? ' --whole-object' : ''} reports`);
    t.ok(nbd.length > 0 && nbd.at(-1)![1] <= 28 * MiB, `and nothing past what was written: ${JSON.stringify(nbd)}`);
    await server.stop();
  }
});

t.test('snapshots: vblk snapshot create, list, serve @SNAP read-only, revert, delete; rbd snap ls agrees', async (t) => {
  const dir = tempDir(t);
  const image = fresh('snap');
  await create(image);
  let server = await serve(t, [vblkName(image), ...conf()]);
  await ok(t, 'qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 2M', server.uri()], 'the first content');
  await server.stop();
  const r = await vblk(['snapshot', 'create', vblkName(image), 'first', ...conf()]);
  t.equal(r.code, 0, 'vblk snapshot create exits 0', { stderr: r.stderr });
  const atFirst = await exported(dir, image);
  const snaps = JSON.parse(await ceph.rbd(['snap', 'ls', '--format', 'json', `${ceph.pool}/${image}`])) as { name: string }[];
  t.same(snaps.map((s) => s.name), ['first'], 'rbd snap ls lists it');
  const list = await vblk(['snapshot', 'list', vblkName(image), '--json', ...conf()]);
  t.same((JSON.parse(list.stdout) as { name: string }[]).map((s) => s.name), ['first'], 'vblk snapshot list too');

  server = await serve(t, [vblkName(image), ...conf()]);
  await ok(t, 'qemu-io', ['-f', 'raw', '-c', 'write -P 0x22 1M 2M', server.uri()], 'the image changes after the snapshot');
  await server.stop();

  const old = await serve(t, [`${vblkName(image)}@first`, ...conf()]);
  const info = await run('nbdinfo', ['--json', old.uri()]);
  t.equal((JSON.parse(info.stdout) as { exports: { is_read_only: boolean }[] }).exports[0].is_read_only, true, '@first is served read-only');
  await ok(t, 'qemu-io', ['-f', 'raw', '-r', '-c', 'read -P 0x11 0 2M', '-c', 'read -P 0 2M 1M', old.uri()], 'and reads as the image did then');
  const write = await run('qemu-io', ['-f', 'raw', '-c', 'write 0 4k', old.uri()]);
  t.match(out(write), /(not permitted|read-only|Permission denied)/i, 'a write to it is refused');
  await old.stop();

  const revert = await vblk(['snapshot', 'revert', vblkName(image), 'first', ...conf()]);
  t.equal(revert.code, 0, 'vblk snapshot revert exits 0', { stderr: revert.stderr });
  t.ok((await exported(dir, image)).equals(atFirst), 'after the revert rbd export gives back the content at the snapshot');
  const del = await vblk(['snapshot', 'delete', vblkName(image), 'first', ...conf()]);
  t.equal(del.code, 0, 'vblk snapshot delete exits 0', { stderr: del.stderr });
  t.same(JSON.parse(await ceph.rbd(['snap', 'ls', '--format', 'json', `${ceph.pool}/${image}`])), [], 'rbd snap ls: gone');
  const missing = await vblk(['snapshot', 'delete', vblkName(image), 'first', ...conf()]);
  t.equal(missing.code, 1, 'deleting it again fails');
  t.match(missing.stderr, /no snapshot 'first'/, 'saying there is no such snapshot');
});

t.test('clones: vblk clone IMAGE@SNAP NEW is an RBD child; it reads the parent and writes only itself', async (t) => {
  const dir = tempDir(t);
  const parent = fresh('parent');
  const child = fresh('child');
  await create(parent);
  let server = await serve(t, [vblkName(parent), ...conf()]);
  await ok(t, 'qemu-io', ['-f', 'raw', '-c', 'write -P 0x33 8M 4M', server.uri()], 'the parent gets data');
  await server.stop();
  t.equal((await vblk(['snapshot', 'create', vblkName(parent), 'gold', ...conf()])).code, 0, 'a snapshot to clone');
  const c = await vblk(['clone', `${vblkName(parent)}@gold`, vblkName(child), ...conf()]);
  t.equal(c.code, 0, 'vblk clone exits 0', { stderr: c.stderr });
  const children = (await ceph.rbd(['children', `${ceph.pool}/${parent}@gold`])).trim().split('\n');
  t.same(children, [`${ceph.pool}/${child}`], 'rbd children lists the clone');
  const snaps = JSON.parse(await ceph.rbd(['snap', 'ls', '--format', 'json', `${ceph.pool}/${parent}`])) as { name: string; protected: string }[];
  t.equal(snaps[0].protected, 'true', 'the parent snapshot was protected');

  server = await serve(t, [vblkName(child), ...conf()]);
  await ok(t, 'qemu-io', ['-f', 'raw', '-c', 'read -P 0x33 8M 4M', '-c', 'write -P 0x44 9M 1M', '-c', 'read -P 0x44 9M 1M', server.uri()], "the clone reads the parent's data, and writes its own");
  const map = await nbdDataRuns(server.uri());
  t.ok(map.some(([s, e]) => s <= 8 * MiB && e >= 12 * MiB), "block status counts the parent's data as data");
  await server.stop();
  const parentNow = await exported(dir, `${parent}@gold`);
  t.ok(parentNow.subarray(9 * MiB, 10 * MiB).every((b) => b === 0x33), "the parent snapshot still holds its own bytes where the clone wrote");
  const info = JSON.parse((await vblk(['info', vblkName(child), '--json', ...conf()])).stdout) as { parent: { image: string; snapshot: string } };
  t.same([info.parent.image, info.parent.snapshot], [parent, 'gold'], 'vblk info names the parent');
  const protectedDelete = await vblk(['snapshot', 'delete', vblkName(parent), 'gold', ...conf()]);
  t.equal(protectedDelete.code, 1, 'a snapshot with a clone cannot be deleted');
});

t.test('a local qcow2 overlay on an RBD image: served, checked by qemu-img, committed into the cluster', async (t) => {
  const dir = tempDir(t);
  const base = fresh('golden');
  await create(base, 32 * MiB);
  let server = await serve(t, [vblkName(base), ...conf()]);
  await ok(t, 'qemu-io', ['-f', 'raw', '-c', 'write -P 0x55 0 8M', server.uri()], 'the golden image');
  await server.stop();

  const overlay = path.join(dir, 'local.qcow2');
  const c = await vblk(['create', overlay, '--backing', vblkName(base), ...conf()]);
  t.equal(c.code, 0, 'vblk create --backing rbd:... exits 0', { stderr: c.stderr });
  const qinfo = JSON.parse((await ok(t, 'qemu-img', ['info', '--output=json', overlay], 'qemu-img info reads the overlay')).stdout) as {
    'virtual-size': number;
    'backing-filename': string;
    'backing-filename-format': string;
  };
  t.equal(qinfo['virtual-size'], 32 * MiB, "the overlay takes the RBD image's size");
  t.equal(qinfo['backing-filename'], `${vblkName(base)}:conf=${ceph.conf}`, 'its backing file is the rbd: name, with the configuration vblk was given');
  t.equal(qinfo['backing-filename-format'], 'raw', 'format raw');

  server = await serve(t, [overlay, ...conf()]);
  await ok(t, 'qemu-io', ['-f', 'raw', '-c', 'read -P 0x55 0 8M', '-c', 'write -P 0x66 4M 1M', '-c', 'write -P 0x77 20M 64k', server.uri()], 'through vblk: the golden data, and local writes');
  await server.stop();
  await ok(t, 'qemu-img', ['check', overlay], 'qemu-img check: the overlay is clean');
  t.ok((await exported(dir, base)).subarray(4 * MiB, 5 * MiB).every((b) => b === 0x55), 'the RBD image is untouched by the overlay');

  const expected = Buffer.alloc(32 * MiB);
  expected.fill(0x55, 0, 8 * MiB);
  expected.fill(0x66, 4 * MiB, 5 * MiB);
  expected.fill(0x77, 20 * MiB, 20 * MiB + 65536);
  const expectedFile = path.join(dir, 'expected.raw');
  fs.writeFileSync(expectedFile, expected);
  await ok(t, 'qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', overlay, expectedFile], 'qemu-img compare: overlay over RBD reads as expected');

  const commit = await vblk(['commit', overlay, ...conf()]);
  t.equal(commit.code, 0, 'vblk commit into the RBD image exits 0', { stderr: commit.stderr });
  t.ok((await exported(dir, base)).equals(expected), 'rbd export: the RBD image now holds what the overlay read');
  await ok(t, 'qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', overlay, expectedFile], 'and the emptied overlay still reads the same');
});

/** `vblk serve ARGS` without waiting for it to be ready; its stderr as it comes. */
function spawnServe(t: Test, args: string[]): { stderr: () => string; exited: Promise<Exit>; kill: (signal: NodeJS.Signals) => void } {
  const proc = spawn(process.execPath, [VBLK, 'serve', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stdout.resume();
  proc.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<Exit>((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  killAtEnd(t, proc, exited);
  return { stderr: () => stderr, exited, kill: (signal) => proc.kill(signal) };
}

async function until(what: string, check: () => boolean, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

t.test('the exclusive lock: a second vblk fails or waits, QEMU cannot write underneath', async (t) => {
  const dir = tempDir(t);
  const image = fresh('lock');
  await create(image);
  const first = await serve(t, [vblkName(image), ...conf()]);
  await ok(t, 'qemu-io', ['-f', 'raw', '-c', 'write -P 0x21 0 1M', first.uri()], 'the first server writes');
  const owners = JSON.parse((await vblk(['info', vblkName(image), '--json', ...conf()])).stdout) as { lockOwners: string[] };
  t.match(owners.lockOwners, [/^client\.\d+ \(127\.0\.0\.1:\d+\/\d+\)$/], `vblk info names the holder: ${owners.lockOwners.join(', ')}`);
  t.equal(owners.lockOwners.length, 1, 'one holder');

  const second = await vblk(['serve', vblkName(image), '--socket', path.join(dir, 'second.sock'), ...conf()]);
  t.equal(second.code, 1, 'a second vblk serving the image exits 1');
  t.match(second.stderr, /is locked by .* --rbd-lock wait/s, 'naming the holder and the way to wait');
  t.notOk(fs.existsSync(path.join(dir, 'second.sock')), 'and never listened');

  const qemu = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x99 0 64k', qemuName(image)]);
  t.not(qemu.code === 0 && !/failed/.test(out(qemu)), true, 'QEMU writing the image directly fails');
  t.match(out(qemu), /Read-only file system/, 'with EROFS: the lock is not handed over');
  await ok(t, 'qemu-io', ['-f', 'raw', '-c', 'read -P 0x21 0 1M', first.uri()], 'and the data is what vblk wrote');

  const waiting = spawnServe(t, [vblkName(image), '--socket', path.join(dir, 'waiter.sock'), '--rbd-lock', 'wait', ...conf()]);
  await until('the waiting log line', () => /waiting for the RBD image's exclusive lock/.test(waiting.stderr()));
  t.notOk(/"msg":"ready"/.test(waiting.stderr()), '--rbd-lock wait: the second server waits, not ready');
  t.equal((await first.stop()).code, 0, 'the first server stops (SIGTERM: it releases the lock)');
  await until('the waiting server to be ready', () => /"msg":"ready"/.test(waiting.stderr()));
  t.pass('then the waiting one takes the lock and serves');
  await ok(t, 'qemu-io', ['-f', 'raw', '-c', 'read -P 0x21 0 1M', '-c', 'write -P 0x22 1M 1M', `nbd+unix:///?socket=${path.join(dir, 'waiter.sock')}`], 'it reads and writes the image');
  // A holder killed with SIGKILL never releases the lock: once its watch expires, librbd breaks the lock for the next one.
  const heir = spawnServe(t, [vblkName(image), '--socket', path.join(dir, 'heir.sock'), '--rbd-lock', 'wait', ...conf()]);
  await until('the heir to wait', () => /waiting for the RBD image's exclusive lock/.test(heir.stderr()));
  waiting.kill('SIGKILL');
  await waiting.exited;
  const killed = Date.now();
  await until('the heir to be ready once the dead holder\'s watch expired', () => /"msg":"ready"/.test(heir.stderr()), 120_000);
  t.pass(`after its holder was killed with SIGKILL, a waiting vblk took the lock in ${((Date.now() - killed) / 1000).toFixed(1)} s (the watch timeout)`);
  await ok(t, 'qemu-io', ['-f', 'raw', '-c', 'read -P 0x22 1M 1M', `nbd+unix:///?socket=${path.join(dir, 'heir.sock')}`], 'and serves what the dead one wrote');
  heir.kill('SIGTERM');
  t.equal((await heir.exited).code, 0, 'and exits 0');

  const noLockImage = fresh('nolock');
  await create(noLockImage, MiB);
  await ceph.rbd(['feature', 'disable', `${ceph.pool}/${noLockImage}`, 'fast-diff', 'object-map', 'exclusive-lock']);
  const refused = await vblk(['serve', vblkName(noLockImage), '--socket', path.join(dir, 'nl.sock'), ...conf()]);
  t.equal(refused.code, 1, 'an image without the exclusive-lock feature is refused');
  t.match(refused.stderr, /no exclusive-lock feature.*--rbd-lock off/s, 'saying why and what to do');
  const off = await serve(t, [vblkName(noLockImage), '--rbd-lock', 'off', ...conf()]);
  await ok(t, 'qemu-io', ['-f', 'raw', '-c', 'write -P 7 0 4k', '-c', 'read -P 7 0 4k', off.uri()], '--rbd-lock off serves it');
  await off.stop();
});

t.test('mistakes get one clear line, never a crash', async (t) => {
  const dir = tempDir(t);
  const sock = path.join(dir, 's.sock');
  const cases: { args: string[]; code: number; says: RegExp; env?: NodeJS.ProcessEnv }[] = [
    { args: ['serve', 'rbd:justapool', '--socket', sock], code: 2, says: /expected rbd:POOL\/IMAGE/ },
    { args: ['serve', 'rbd:p/i@', '--socket', sock], code: 2, says: /snapshot name after '@' is empty/ },
    { args: ['serve', 'rbd:p/i:novalue', '--socket', sock], code: 2, says: /expected KEY=VALUE/ },
    { args: ['serve', vblkName('x'), '--rbd-lock', 'maybe', '--socket', sock, ...conf()], code: 2, says: /--rbd-lock must be fail, wait, off/ },
    { args: ['serve', vblkName('x'), '--rbd-timeout=-1', '--socket', sock, ...conf()], code: 2, says: /--rbd-timeout must be a number/ },
    { args: ['serve', vblkName(fresh('absent')), '--socket', sock, ...conf()], code: 1, says: /No such file or directory \(no such pool or image\)/ },
    { args: ['serve', 'rbd:nopool/x', '--socket', sock, ...conf()], code: 1, says: /opening pool nopool/ },
    { args: ['serve', vblkName('x'), '--socket', sock, '--ceph-conf', path.join(dir, 'missing.conf')], code: 1, says: /reading .*missing\.conf/ },
    { args: ['info', vblkName('x'), ...conf()], code: 1, says: /No such file or directory/ },
    { args: ['create', vblkName('x'), ...conf()], code: 2, says: /--size is required/ },
    { args: ['create', vblkName('x'), '--size', '1M', '--object-size', '3000', ...conf()], code: 2, says: /--object-size must be a power of two/ },
    { args: ['create', `${vblkName('x')}@s`, '--size', '1M', ...conf()], code: 1, says: /has no @SNAPSHOT/ },
    { args: ['clone', vblkName('x'), vblkName('y'), ...conf()], code: 1, says: /clone from a snapshot/ },
    { args: ['clone', `${vblkName('x')}@s`, path.join(dir, 'f.img'), ...conf()], code: 2, says: /both SRC and DST are rbd: names/ },
    { args: ['snapshot', 'fork', vblkName('x'), 's', 'n', ...conf()], code: 2, says: /vblk clone/ },
    { args: ['serve', vblkName('x'), '--socket', sock, ...conf()], code: 1, says: /disabled by VBLK_NO_RBD=1/, env: { ...process.env, VBLK_NO_RBD: '1' } },
  ];
  for (const c of cases) {
    const r = await vblk(c.args, undefined, c.env);
    const label = c.args.slice(0, 2).join(' ') + (c.env ? ' (VBLK_NO_RBD=1)' : '');
    t.equal(r.code, c.code, `${label} ${c.args.slice(2).join(' ')}: exit ${c.code}`);
    t.match(r.stderr, c.says, `${label}: says why`, { stderr: r.stderr });
    t.notMatch(r.stderr, /\n\s+at /, `${label}: no stack trace`);
  }
  const engines = await vblk(['info', '--engines']);
  t.match(engines.stdout, /^rbd: images yes\s+librbd \d+\.\d+\.\d+$/m, 'vblk info --engines: rbd: images can be served, with librbd');
  const without = (await vblk(['info', '--engines'], undefined, { ...process.env, VBLK_NO_RBD: '1' })).stdout;
  t.match(without, /^rbd: images no\s+disabled by VBLK_NO_RBD=1$/m, 'and without the addon, says it cannot and why');
});

t.test('a QEMU guest on an RBD image through vblk vhost-user-blk', async (t) => {
  const dir = tempDir(t);
  const image = fresh('guest');
  await create(image);
  const base = crypto.randomBytes(2 * MiB);
  const baseFile = path.join(dir, 'base.raw');
  fs.writeFileSync(baseFile, base);
  await ok(t, 'qemu-io', ['-f', 'raw', '-c', `write -s ${baseFile} ${40 * MiB} ${2 * MiB}`, qemuName(image)], "the host's data, written with QEMU's rbd driver");
  const data = crypto.randomBytes(4 * MiB);
  const socket = path.join(dir, 'vu.sock');
  const server = await serve(t, [vblkName(image), '--vhost-user-blk', socket, '--num-queues', '2', ...conf()]);
  const md5 = (b: Buffer): string => crypto.createHash('md5').update(b).digest('hex');
  const script = [
    'result sectors $(cat /sys/block/vda/size)',
    `result base $(dd if=/dev/vda bs=65536 skip=${(40 * MiB) / 65536} count=32 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)`,
    `dd if=data of=/dev/vda bs=65536 seek=${(8 * MiB) / 65536} count=64 oflag=direct conv=notrunc,fsync 2>/dev/null; result write $?`,
    `blkdiscard -o ${52 * MiB} -l ${4 * MiB} /dev/vda; result discard $?`,
    'echo 3 > /proc/sys/vm/drop_caches',
    `result readback $(dd if=/dev/vda bs=65536 skip=${(8 * MiB) / 65536} count=64 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)`,
  ].join('\n');
  const boot = await bootGuest(t, { socket, numQueues: 2, cpus: 2, script, files: { data } });
  t.equal(boot.results.sectors, String(SIZE / 512), 'the guest sees the image size');
  t.equal(boot.results.base, md5(base), "the guest reads the host's data");
  t.equal(boot.results.write, '0', 'the guest writes 4 MiB with O_DIRECT and fsync');
  t.equal(boot.results.discard, '0', 'and discards 4 MiB');
  t.equal(boot.results.readback, md5(data), 'and reads its data back');
  t.equal(boot.qemuExit, 0, 'QEMU exits after the guest powers off');
  t.equal((await server.stop()).code, 0, 'vblk exits 0');
  const expected = Buffer.alloc(SIZE);
  data.copy(expected, 8 * MiB);
  base.copy(expected, 40 * MiB);
  t.ok((await exported(dir, image)).equals(expected), "rbd export: the cluster holds the guest's writes and discard");
});

t.test('reaching the cluster as the ceph CLI does: CEPH_CONF, and a client of its own with --ceph-id and --ceph-keyring', async (t) => {
  const dir = tempDir(t);
  const image = fresh('client');
  await create(image);
  const viaEnv = await vblk(['info', vblkName(image), '--json'], undefined, ceph.env);
  t.equal(viaEnv.code, 0, 'CEPH_CONF alone is enough', { stderr: viaEnv.stderr });
  t.equal((JSON.parse(viaEnv.stdout) as { virtualSize: number }).virtualSize, SIZE, 'and it reads the image');

  // As the README tells an operator: a client with the rbd profile on the pool.
  const keyring = path.join(dir, 'ceph.client.vblk-test.keyring');
  await ceph.ceph(['auth', 'get-or-create', 'client.vblk-test', 'mon', 'profile rbd', 'osd', `profile rbd pool=${ceph.pool}`, '-o', keyring]);
  const server = await serve(t, [vblkName(image), '--ceph-id', 'vblk-test', '--ceph-keyring', keyring, ...conf()]);
  await ok(t, 'qemu-io', ['-f', 'raw', '-c', 'write -P 0x3c 0 64k', '-c', 'read -P 0x3c 0 64k', server.uri()], 'served as client.vblk-test with its own keyring');
  const holder = JSON.parse((await vblk(['info', vblkName(image), '--json', ...conf()])).stdout) as { lockOwners: string[] };
  t.equal(holder.lockOwners.length, 1, `the lock is held: ${holder.lockOwners.join(', ')}`);
  await server.stop();

  const weak = path.join(dir, 'ceph.client.vblk-weak.keyring');
  await ceph.ceph(['auth', 'get-or-create', 'client.vblk-weak', 'mon', 'allow r', '-o', weak]);
  const refused = await vblk(['serve', vblkName(image), '--socket', path.join(dir, 'w.sock'), '--ceph-id', 'vblk-weak', '--ceph-keyring', weak, ...conf()]);
  t.equal(refused.code, 1, 'a client without OSD access is refused at start');
  t.match(refused.stderr, /Operation not permitted|Permission denied|not allowed/, 'saying it is not allowed', { stderr: refused.stderr });
  const wrongKey = await vblk(['info', vblkName(image), '--ceph-id', 'vblk-test', '--ceph-keyring', weak, ...conf()]);
  t.equal(wrongKey.code, 1, 'the wrong key for the client fails');
  t.notMatch(wrongKey.stderr, /\n\s+at /, 'with no stack trace');
});
