// vblk resize, checked with QEMU's tools: qcow2 growth that moves the L1
// table (qemu-img check finds no leak, qemu-io reads the old data and
// writes the new end), overlays grown past their backing file, raw
// growth and shrinking, and the refusals.

import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { serve, tempDir, vblk } from '../helpers/server.js';
import { run } from '../helpers/tools.js';

const MiB = 1 << 20;

async function ok(t: Test, args: string[]): Promise<string> {
  const r = await vblk(args);
  t.equal(r.code, 0, `vblk ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

async function qemuIo(t: Test, format: string, file: string, commands: string[]): Promise<void> {
  const r = await run('qemu-io', ['-f', format, ...commands.flatMap((c) => ['-c', c]), file]);
  t.ok(r.code === 0 && !/fail|error/i.test(r.stdout + r.stderr), `qemu-io ${commands.join('; ')}: ${r.stdout}${r.stderr}`);
}

async function check(t: Test, file: string): Promise<void> {
  const r = await run('qemu-img', ['check', '--output=json', file]);
  t.equal(r.code, 0, `qemu-img check ${path.basename(file)}: ${r.stdout}${r.stderr}`);
  const report = JSON.parse(r.stdout) as { 'leaks'?: number; 'corruptions'?: number };
  t.notOk(report.leaks, 'no leaked clusters');
}

async function virtualSize(file: string): Promise<number> {
  const r = await run('qemu-img', ['info', '--output=json', file]);
  return (JSON.parse(r.stdout) as { 'virtual-size': number })['virtual-size'];
}

function l1(file: string): { size: number; offset: number } {
  const head = Buffer.alloc(48);
  const fd = fs.openSync(file, 'r');
  fs.readSync(fd, head, 0, 48, 0);
  fs.closeSync(fd);
  return { size: head.readUInt32BE(36), offset: Number(head.readBigUInt64BE(40)) };
}

t.test('a qcow2 image grows; its L1 table moves to a larger one', async (t) => {
  const dir = tempDir(t);
  const disk = path.join(dir, 'disk.qcow2');
  // 512-byte clusters: one L2 table maps 32 KiB, so 100 MiB needs 3200 L1 entries (50 clusters).
  await ok(t, ['create', disk, '--size', '100M', '--cluster-size', '512']);
  await qemuIo(t, 'qcow2', disk, ['write -P 3 0 64k', 'write -P 4 99M 1M']);
  const before = l1(disk);
  t.equal(before.size, 3200);

  t.match(await ok(t, ['resize', disk, '+100M']), /from 100 MiB to 200 MiB/);
  const after = l1(disk);
  t.equal(after.size, 6400, 'L1 has an entry for every L2 table of the new size');
  t.not(after.offset, before.offset, 'in a new place');
  t.equal(await virtualSize(disk), 200 * MiB, 'QEMU sees the new size');
  await check(t, disk);
  await qemuIo(t, 'qcow2', disk, ['read -P 3 0 64k', 'read -P 4 99M 1M', 'read -P 0 100M 99M', 'write -P 5 199M 1M', 'read -P 5 199M 1M']);
  await check(t, disk);

  // The same writes on a raw copy that QEMU resized: vblk's image reads the same.
  const ref = path.join(dir, 'ref.raw');
  t.equal((await run('qemu-img', ['create', '-f', 'raw', ref, '200M'])).code, 0);
  await qemuIo(t, 'raw', ref, ['write -P 3 0 64k', 'write -P 4 99M 1M', 'write -P 5 199M 1M']);
  const server = await serve(t, [disk, '--read-only']);
  const compare = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', server.uri(), ref]);
  t.equal(compare.code, 0, `qemu-img compare through vblk: ${compare.stdout}${compare.stderr}`);
  await server.stop();

  const again = await vblk(['resize', disk, '100M']);
  t.equal(again.code, 1, 'a qcow2 image never shrinks');
  t.match(again.stderr, /shrinking a qcow2 image is not supported/);
  t.equal(await virtualSize(disk), 200 * MiB, 'and is left as it was');
});

t.test('an overlay grows past its backing file and reads zeroes there', async (t) => {
  const dir = tempDir(t);
  const base = path.join(dir, 'base.img');
  const top = path.join(dir, 'top.qcow2');
  await ok(t, ['create', base, '--size', '8M']);
  await qemuIo(t, 'raw', base, ['write -P 7 0 8M']);
  await ok(t, ['create', top, '--backing', base]);
  await ok(t, ['resize', top, '1G']);
  t.equal(await virtualSize(top), 1 << 30);
  t.equal(fs.statSync(base).size, 8 * MiB, 'the backing file is not touched');
  await qemuIo(t, 'qcow2', top, ['read -P 7 0 8M', 'read -P 0 8M 1M', 'read -P 0 1023M 1M', 'write -P 9 1000M 64k']);
  await check(t, top);
  const server = await serve(t, [top]);
  const size = await run('nbdinfo', ['--size', server.uri()]);
  t.equal(size.stdout.trim(), String(1 << 30), 'vblk serves the new size');
});

t.test('raw images grow sparse and shrink only with --shrink', async (t) => {
  const dir = tempDir(t);
  const disk = path.join(dir, 'disk.img');
  await ok(t, ['create', disk, '--size', '4M']);
  await qemuIo(t, 'raw', disk, ['write -P 1 0 4M']);
  await ok(t, ['resize', disk, '+60M']);
  t.equal(fs.statSync(disk).size, 64 * MiB);
  t.ok(fs.statSync(disk).blocks * 512 < 8 * MiB, 'the new part is a hole');
  await qemuIo(t, 'raw', disk, ['read -P 1 0 4M', 'read -P 0 4M 60M']);

  const refused = await vblk(['resize', disk, '2M']);
  t.equal(refused.code, 1);
  t.match(refused.stderr, /pass --shrink/);
  t.equal(fs.statSync(disk).size, 64 * MiB, 'untouched without --shrink');
  await ok(t, ['resize', disk, '2M', '--shrink']);
  t.equal(fs.statSync(disk).size, 2 * MiB);
  await qemuIo(t, 'raw', disk, ['read -P 1 0 2M']);
});

t.test('refusals: an image in use, bad sizes', async (t) => {
  const dir = tempDir(t);
  const disk = path.join(dir, 'disk.qcow2');
  await ok(t, ['create', disk, '--size', '16M']);
  const server = await serve(t, [disk]);
  const busy = await vblk(['resize', disk, '32M']);
  t.equal(busy.code, 1, 'not while vblk serves it');
  t.match(busy.stderr, /failed to get (shared )?"write" lock/);
  await server.stop();
  t.equal(await virtualSize(disk), 16 * MiB);

  const bad = await vblk(['resize', disk, 'lots']);
  t.equal(bad.code, 2);
  t.match(bad.stderr, /'lots' is not a size/);
  const zero = await vblk(['resize', disk, '0']);
  t.equal(zero.code, 1);
  t.match(zero.stderr, /above 0/);
  const help = await vblk(['resize', '--help']);
  t.match(help.stdout, /Examples:\n {2}vblk resize /);
});
