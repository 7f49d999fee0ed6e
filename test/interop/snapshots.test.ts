// vblk snapshot and vblk commit, checked with QEMU's tools: what each
// layer reads (qemu-io -r read -P), the chain QEMU sees (qemu-img info
// --backing-chain), and qemu-img check on every image vblk wrote.

import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { tempDir, vblk } from '../helpers/server.js';
import { run } from '../helpers/tools.js';

const MiB = 1 << 20;

async function ok(t: Test, args: string[]): Promise<string> {
  const r = await vblk(args);
  t.equal(r.code, 0, `vblk ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

async function write(file: string, format: string, pattern: number, offset: number, length: number): Promise<void> {
  const r = await run('qemu-io', ['-f', format, '-c', `write -P ${pattern} ${offset} ${length}`, file]);
  if (r.code !== 0) throw new Error(r.stderr);
}

/** True when every (pattern, offset, length) reads back from the image. */
async function reads(file: string, expected: [number, number, number][]): Promise<boolean> {
  const args = ['-r', '-f', 'qcow2'];
  for (const [p, o, l] of expected) args.push('-c', `read -P ${p} ${o} ${l}`);
  const r = await run('qemu-io', [...args, file]);
  return r.code === 0 && !/verification failed/i.test(r.stdout);
}

async function clean(t: Test, dir: string): Promise<void> {
  for (const f of fs.readdirSync(dir).filter((f) => f.endsWith('.qcow2'))) {
    const r = await run('qemu-img', ['check', path.join(dir, f)]);
    t.equal(r.code, 0, `qemu-img check ${f}: ${r.stdout}${r.stderr}`);
  }
}

async function chain(file: string): Promise<string[]> {
  const r = await run('qemu-img', ['info', '--backing-chain', '--output=json', file]);
  return (JSON.parse(r.stdout) as { filename: string }[]).map((l) => path.basename(l.filename));
}

t.test('create, list, fork, delete and revert snapshots', async (t) => {
  const dir = tempDir(t);
  const base = path.join(dir, 'base.img');
  const disk = path.join(dir, 'disk.qcow2');
  await ok(t, ['create', base, '--size', '16M']);
  await write(base, 'raw', 1, 0, MiB);
  await ok(t, ['create', disk, '--backing', base]);
  await write(disk, 'qcow2', 2, MiB, MiB);
  t.match(await ok(t, ['snapshot', 'create', disk, 's1']), /disk@s1\.qcow2/);
  await write(disk, 'qcow2', 3, 2 * MiB, MiB);
  await ok(t, ['snapshot', 'create', disk, 's2']);
  await write(disk, 'qcow2', 4, 3 * MiB, MiB);
  t.same(await chain(disk), ['disk.qcow2', 'disk@s2.qcow2', 'disk@s1.qcow2', 'base.img'], 'QEMU sees the chain');
  const list = JSON.parse(await ok(t, ['snapshot', 'list', disk, '--json'])) as { name: string }[];
  t.same(list.map((s) => s.name), ['s2', 's1'], 'list, newest first');

  const all: [number, number, number][] = [[1, 0, MiB], [2, MiB, MiB], [3, 2 * MiB, MiB], [4, 3 * MiB, MiB]];
  t.ok(await reads(disk, all), 'the top reads everything written');
  t.ok(await reads(path.join(dir, 'disk@s1.qcow2'), [[1, 0, MiB], [2, MiB, MiB], [0, 2 * MiB, 2 * MiB]]), 's1 reads as at its time');
  t.notOk(await reads(path.join(dir, 'disk@s1.qcow2'), [[3, 2 * MiB, MiB]]), 'negative control: s1 lacks later writes');

  await ok(t, ['snapshot', 'fork', disk, 's1', path.join(dir, 'fork.qcow2')]);
  t.ok(await reads(path.join(dir, 'fork.qcow2'), [[2, MiB, MiB], [0, 2 * MiB, 2 * MiB]]), 'a fork starts at s1');

  await ok(t, ['snapshot', 'delete', disk, 's2']);
  t.notOk(fs.existsSync(path.join(dir, 'disk@s2.qcow2')), 'the deleted snapshot file is gone');
  t.same(await chain(disk), ['disk.qcow2', 'disk@s1.qcow2', 'base.img']);
  t.ok(await reads(disk, all), 'and the top still reads the same');

  await ok(t, ['snapshot', 'revert', disk, 's1']);
  t.ok(await reads(disk, [[1, 0, MiB], [2, MiB, MiB], [0, 2 * MiB, 2 * MiB]]), 'after revert the top reads as s1');
  t.same(await chain(disk), ['disk.qcow2', 'disk@s1.qcow2', 'base.img']);
  await clean(t, dir);

  const bad = await vblk(['snapshot', 'revert', disk, 'nope']);
  t.equal(bad.code, 1);
  t.match(bad.stderr, /no snapshot 'nope'/);
  const again = await vblk(['snapshot', 'create', disk, 's1']);
  t.equal(again.code, 1);
  t.match(again.stderr, /exists already/);
  const name = await vblk(['snapshot', 'create', disk, 'a/b']);
  t.equal(name.code, 1);
  t.match(name.stderr, /may only have letters/);
});

t.test('commit writes the overlay into its backing file and empties it', async (t) => {
  const dir = tempDir(t);
  const base = path.join(dir, 'base.qcow2');
  const top = path.join(dir, 'top.qcow2');
  await ok(t, ['create', base, '--size', '8M']);
  await write(base, 'qcow2', 1, 0, 4 * MiB);
  await ok(t, ['create', top, '--backing', base]);
  await write(top, 'qcow2', 5, 65536, 200000);
  const z = await run('qemu-io', ['-f', 'qcow2', '-c', `write -z ${2 * MiB} ${MiB}`, top]);
  t.equal(z.code, 0);
  t.match(await ok(t, ['commit', top]), /is empty again/);
  const expected: [number, number, number][] = [[1, 0, 65536], [5, 65536, 200000], [1, 265536, 2 * MiB - 265536], [0, 2 * MiB, MiB], [1, 3 * MiB, MiB]];
  const r = await run('qemu-io', ['-r', '-f', 'qcow2', ...expected.flatMap(([p, o, l]) => ['-c', `read -P ${p} ${o} ${l}`]), base]);
  t.equal(r.code, 0, 'the base holds the overlay\'s data and zeroes');
  t.notMatch(r.stdout, /verification failed/i);
  const map = JSON.parse((await run('qemu-img', ['map', '--output=json', top])).stdout) as { depth: number; present: boolean }[];
  t.ok(map.every((e) => e.depth > 0 || !e.present), 'the overlay is empty');
  const info = JSON.parse((await vblk(['info', top, '--json'])).stdout);
  t.equal(info.ownBytes, 0);
  await clean(t, dir);
  const none = await vblk(['commit', base]);
  t.equal(none.code, 1, 'an image without a backing file cannot be committed');
  t.match(none.stderr, /no backing file/);
});
