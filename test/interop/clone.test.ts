// vblk clone: the sparse copy on a file system without reflinks (ext4 or
// tmpfs, what the temporary directory usually is), checked with cmp,
// st_blocks and qemu-img check/compare; the reflink on a loop-mounted XFS
// made with reflink=1, checked with filefrag's 'shared' flag; and the
// refusals. The XFS test skips only where nothing can be mounted (not
// root, no loop device, mount not permitted); a missing mkfs.xfs fails.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { serve, tempDir, vblk } from '../helpers/server.js';
import { cannotMount, sys, SYS_ENV } from '../helpers/system.js';
import { run } from '../helpers/tools.js';
import { allocatedBytes, dataBytes, expectedLayout, makeSparse, standardWrites } from './sparse.js';

const MiB = 1 << 20;

function hasCommand(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { env: SYS_ENV }).status === 0;
}

async function same(t: Test, a: string, b: string): Promise<void> {
  const r = await run('cmp', [a, b]);
  t.equal(r.code, 0, `cmp ${path.basename(a)} ${path.basename(b)}: ${r.stdout}${r.stderr}`);
}

/** The file system type of DIR, as stat -f names it (ext2/ext3, tmpfs, xfs, btrfs...). */
function fsType(dir: string): string {
  return sys('stat', ['-f', '-c', '%T', dir]).out.trim();
}

t.test('without reflinks: a sparse copy with copy_file_range, holes kept', async (t) => {
  const dir = tempDir(t);
  const size = 64 * MiB;
  const src = path.join(dir, 'src.img');
  const dst = path.join(dir, 'dst.img');
  const writes = standardWrites(size);
  makeSparse(src, size, writes);
  fs.chmodSync(src, 0o640);
  // A temporary directory on a reflink file system would take the fast
  // path; --no-reflink keeps this test about the copy there.
  const reflinkFs = /xfs|btrfs|bcachefs/.test(fsType(dir));
  const r = await vblk(['clone', src, dst, ...(reflinkFs ? ['--no-reflink'] : [])]);
  t.equal(r.code, 0, `vblk clone: ${r.stderr}`);
  t.match(r.stdout, /copied \d+ bytes with copy_file_range/, 'says it copied with copy_file_range');
  if (!reflinkFs) t.match(r.stdout, /reflink not supported here: EOPNOTSUPP/, 'and why no reflink');
  const copied = Number(/copied (\d+) bytes/.exec(r.stdout)?.[1]);
  const data = dataBytes(expectedLayout(size, writes));
  t.equal(copied, data, 'copied exactly the data extents');
  t.match(r.stderr, /copying .*100%/, 'progress on stderr');
  await same(t, src, dst);
  t.equal(fs.statSync(dst).size, size, 'same size');
  t.equal(fs.statSync(dst).mode & 0o777, 0o640, "SRC's mode");
  const a = allocatedBytes(src);
  const b = allocatedBytes(dst);
  t.ok(b >= data && b <= a + 256 * 1024, `destination allocates about what the source does (${b} against ${a}; data ${data})`);
  t.ok(b < size / 4, 'the destination is still sparse');

  // A file that is all hole.
  const empty = path.join(dir, 'empty.img');
  fs.writeFileSync(empty, '');
  fs.truncateSync(empty, 8 * MiB);
  const e = await vblk(['clone', empty, path.join(dir, 'empty-copy.img')]);
  t.equal(e.code, 0, `vblk clone: ${e.stderr}`);
  t.equal(fs.statSync(path.join(dir, 'empty-copy.img')).size, 8 * MiB);
  t.equal(allocatedBytes(path.join(dir, 'empty-copy.img')), 0, 'a hole stays a hole');
});

t.test('a qcow2 overlay clones beside its source, and refuses where its backing name points elsewhere', async (t) => {
  const dir = tempDir(t);
  const base = path.join(dir, 'base.img');
  const top = path.join(dir, 'top.qcow2');
  const copy = path.join(dir, 'copy.qcow2');
  t.equal((await vblk(['create', base, '--size', '16M'])).code, 0);
  t.equal((await run('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 4M', base])).code, 0);
  t.equal((await vblk(['create', top, '--backing', base])).code, 0);
  t.equal((await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 2 1M 2M', '-c', 'write -P 3 9M 64k', top])).code, 0);

  const r = await vblk(['clone', top, copy]);
  t.equal(r.code, 0, `vblk clone: ${r.stderr}`);
  const check = await run('qemu-img', ['check', copy]);
  t.equal(check.code, 0, `qemu-img check: ${check.stdout}${check.stderr}`);
  const cmp = await run('qemu-img', ['compare', top, copy]);
  t.equal(cmp.code, 0, `qemu-img compare: ${cmp.stdout}${cmp.stderr}`);
  t.match(cmp.stdout, /Images are identical/);
  const info = JSON.parse((await run('qemu-img', ['info', '--output=json', copy])).stdout) as { 'backing-filename': string };
  t.equal(info['backing-filename'], 'base.img', 'the backing name is kept as it was');

  const sub = path.join(dir, 'sub');
  fs.mkdirSync(sub);
  const away = await vblk(['clone', top, path.join(sub, 'copy.qcow2')]);
  t.equal(away.code, 1, 'refused where base.img would not resolve');
  t.match(away.stderr, /relative backing file 'base\.img'.*does not exist/);
  t.notOk(fs.existsSync(path.join(sub, 'copy.qcow2')), 'and nothing written');
  fs.writeFileSync(path.join(sub, 'base.img'), 'another file');
  const other = await vblk(['clone', top, path.join(sub, 'copy.qcow2')]);
  t.equal(other.code, 1);
  t.match(other.stderr, /a different file/, 'nor where it names a different file');
});

t.test('refusals: an existing DST without --force, a missing SRC, the same file', async (t) => {
  const dir = tempDir(t);
  const src = path.join(dir, 'a.img');
  const dst = path.join(dir, 'b.img');
  makeSparse(src, 4 * MiB, [{ offset: MiB, length: 5000 }]);
  fs.writeFileSync(dst, 'keep me');
  const r = await vblk(['clone', src, dst]);
  t.equal(r.code, 1);
  t.match(r.stderr, /^vblk: .*b\.img exists already; use --force to replace it/);
  t.equal(fs.readFileSync(dst, 'utf8'), 'keep me', 'DST untouched');

  const f = await vblk(['clone', src, dst, '--force']);
  t.equal(f.code, 0, `vblk clone --force: ${f.stderr}`);
  await same(t, src, dst);
  t.same(fs.readdirSync(dir).sort(), ['a.img', 'b.img'], 'no temporary file left');

  const missing = await vblk(['clone', path.join(dir, 'nope.img'), path.join(dir, 'c.img')]);
  t.equal(missing.code, 1);
  t.match(missing.stderr, /^vblk: .*nope\.img does not exist/);
  t.notOk(fs.existsSync(path.join(dir, 'c.img')));

  const self = await vblk(['clone', src, src, '--force']);
  t.equal(self.code, 1);
  t.match(self.stderr, /are the same file/);
  t.equal(fs.statSync(src).size, 4 * MiB, 'SRC untouched');

  const usage = await vblk(['clone', src]);
  t.equal(usage.code, 2);
  t.match(usage.stderr, /expected SRC and DST.*vblk clone --help/);
  const help = await vblk(['clone', '--help']);
  t.match(help.stdout, /Usage: vblk clone/);
  t.match(help.stdout, /Examples:\n {2}vblk clone /);
});

t.test('refuses an image in use: a SRC being written, a DST being served', async (t) => {
  const dir = tempDir(t);
  const src = path.join(dir, 'a.img');
  const dst = path.join(dir, 'b.img');
  makeSparse(src, 4 * MiB, [{ offset: 0, length: 4096 }]);
  makeSparse(dst, 4 * MiB, []);
  const server = await serve(t, [src]);
  const busy = await vblk(['clone', src, path.join(dir, 'c.img')]);
  t.equal(busy.code, 1, 'a SRC served writable is not copied half-written');
  t.match(busy.stderr, /a\.img: failed to get shared "write" lock/);
  t.notOk(fs.existsSync(path.join(dir, 'c.img')), 'no partial DST');
  await server.stop();

  const served = await serve(t, [dst, '--read-only']);
  const replace = await vblk(['clone', src, dst, '--force']);
  t.equal(replace.code, 1, 'a DST in use is not replaced under its server');
  t.match(replace.stderr, /b\.img: failed to get "write" lock/);
  await served.stop();
  t.equal((await vblk(['clone', src, dst, '--force'])).code, 0, 'both free: the clone goes ahead');
  await same(t, src, dst);
});

/** filefrag -v of FILE (xfs_io's fiemap where filefrag is missing): one line per extent, with its flags. */
function extentMap(file: string): string {
  const frag = sys('filefrag', ['-v', file]);
  return frag.code === 0 ? frag.out : sys('xfs_io', ['-r', '-c', 'fiemap -v', file]).out;
}

const noMount = cannotMount();
if (noMount) console.log(`# skipping the XFS reflink test: ${noMount}`);

t.test('on XFS with reflink=1: a reflink, extents shared', { skip: noMount ?? false }, async (t) => {
  if (!hasCommand('mkfs.xfs')) {
    t.fail("mkfs.xfs is missing: install xfsprogs (apt-get install xfsprogs)");
    return;
  }
  // Not tempDir: the mount must be gone before the directory is removed.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vblk-xfs-'));
  const mnt = path.join(dir, 'mnt');
  let mounted = false;
  t.teardown(() => {
    if (mounted) {
      const u = sys('umount', [mnt]);
      if (u.code !== 0) {
        console.log(`# umount ${mnt} failed (${u.out.trim()}); leaving ${dir}`);
        return;
      }
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const img = path.join(dir, 'xfs.img');
  fs.mkdirSync(mnt);
  fs.writeFileSync(img, '');
  fs.truncateSync(img, 300 * MiB);
  const mkfs = sys('mkfs.xfs', ['-q', '-m', 'reflink=1', img]);
  if (mkfs.code !== 0) {
    t.fail(`mkfs.xfs -m reflink=1: ${mkfs.out}`);
    return;
  }
  const mount = sys('mount', ['-o', 'loop', img, mnt]);
  if (mount.code !== 0) {
    if (/permission denied|not permitted|must be superuser/i.test(mount.out)) {
      const why = `mount is not permitted here (${mount.out.trim()})`;
      console.log(`# skipping the XFS reflink test: ${why}`);
      t.plan(0, why);
      return;
    }
    t.fail(`mount -o loop: ${mount.out}`);
    return;
  }
  mounted = true;

  const src = path.join(mnt, 'src.img');
  const dst = path.join(mnt, 'dst.img');
  makeSparse(src, 32 * MiB, standardWrites(32 * MiB));
  t.notMatch(extentMap(src), /shared/, 'negative control: before the clone nothing is shared');
  const r = await vblk(['clone', src, dst]);
  t.equal(r.code, 0, `vblk clone: ${r.stderr}`);
  t.match(r.stdout, /cloned with reflink/, 'says reflink');
  t.notMatch(r.stderr, /copying/, 'no progress bar for an O(1) clone');
  await same(t, src, dst);
  const map = extentMap(dst);
  const extents = map.split('\n').filter((l) => /^\s*\d+:/.test(l));
  t.ok(extents.length > 0 && extents.every((l) => /shared/.test(l)), `every extent of the clone is shared:\n${map}`);

  // A qcow2 image clones the same way.
  const q = path.join(mnt, 'q.qcow2');
  t.equal((await vblk(['create', q, '--size', '64M'])).code, 0);
  t.equal((await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 7 0 8M', q])).code, 0);
  const qr = await vblk(['clone', q, path.join(mnt, 'q2.qcow2')]);
  t.match(qr.stdout, /cloned with reflink/);
  const cmp = await run('qemu-img', ['compare', q, path.join(mnt, 'q2.qcow2')]);
  t.equal(cmp.code, 0, `qemu-img compare: ${cmp.stdout}${cmp.stderr}`);
});
