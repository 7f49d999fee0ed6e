// The crash-consistency experiment of issue 13: a real ext4 written
// through a journaled export, then every sampled state a power cut could
// have left checked by e2fsprogs. The path: vblk (in process, so the test
// can set marks) -> nbdfuse (the export as a file) -> a loop device ->
// mkfs.ext4, mount, files written with dd conv=fsync, umount. States are
// taken only after mkfs finished (--after mkfs): before that the disk is
// legitimately not a file system. Each state gets its ext4 journal
// replayed (e2fsck -E journal_only), then must pass e2fsck -fn, and must
// hold every file whose fsync completed before its cut, with its content
// (debugfs dump). The negative control builds a state that ignores the
// last file's fsync (drops the writes it made durable) and shows the file
// check fails on it. Needs root and /dev/fuse; skips otherwise, except under CI (fails).

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { applyEntries } from '../../src/cli/journal-apply.js';
import { JournalFilter } from '../../src/device/filters/journal.js';
import { decodeJournal } from '../../src/device/journal/codec.js';
import { cutsOf } from '../../src/device/journal/crash-states.js';
import { openImage } from '../../src/device/images/open.js';
import { SyncEngine } from '../../src/io/sync-engine.js';
import { serveInProcess } from '../helpers/in-process.js';
import { tempDir, vblk } from '../helpers/server.js';
import { cannotMount } from '../helpers/system.js';
import { run } from '../helpers/tools.js';

const cannot = cannotMount() ?? (fs.existsSync('/dev/fuse') ? null : 'no /dev/fuse');
// CI must run it: there a missing capability is a failure, not a skip.
if (cannot && process.env.CI) t.fail(`the ext4 crash-consistency test cannot run: ${cannot}`);
const skip = process.env.CI ? null : cannot;
const FILES = ['f1', 'f2', 'f3'];

async function must(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.code}\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

t.test('ext4 through --filter journal: every crash state after mkfs is consistent and holds its fsync\'d files', { skip: skip ?? false }, async (t) => {
  const dir = tempDir(t);
  const file = (name: string): string => path.join(dir, name);
  fs.writeFileSync(file('base.img'), Buffer.alloc(32 << 20));
  fs.copyFileSync(file('base.img'), file('disk.img'));
  const journal = new JournalFilter(await openImage(file('disk.img'), { readOnly: false, engine: new SyncEngine() }), { file: file('log') });
  const server = await serveInProcess(t, journal, dir);

  fs.mkdirSync(file('fuse'));
  fs.mkdirSync(file('mnt'));
  const fuse = spawn('nbdfuse', [file('fuse/disk'), server.uri], { stdio: 'ignore' });
  const fuseExited = new Promise((resolve) => fuse.on('exit', resolve));
  let loop = '';
  let mounted = false;
  t.teardown(async () => {
    if (mounted) await run('/usr/bin/umount', ['-l', file('mnt')]);
    if (loop) await run('/usr/sbin/losetup', ['-d', loop]);
    if (fuse.exitCode === null) {
      await run('/usr/bin/fusermount3', ['-u', file('fuse')]);
      fuse.kill('SIGKILL');
    }
  });
  for (let i = 0; i < 500 && !fs.existsSync(file('fuse/disk')); i++) await new Promise((r) => setTimeout(r, 20));

  await must('/usr/sbin/mkfs.ext4', ['-q', '-F', file('fuse/disk')]);
  await journal.mark('mkfs');
  loop = (await must('/usr/sbin/losetup', ['--find', '--show', file('fuse/disk')])).trim();
  await must('/usr/bin/mount', ['-t', 'ext4', loop, file('mnt')]);
  mounted = true;
  const marks = new Map<string, number>();
  for (const [i, name] of FILES.entries()) {
    fs.writeFileSync(file(`${name}.src`), crypto.randomBytes((i + 1) * 12288 + 100));
    await must('/usr/bin/dd', [`if=${file(`${name}.src`)}`, `of=${file(`mnt/${name}`)}`, 'bs=4k', 'conv=fsync', 'status=none']);
    marks.set(name, (await journal.mark(name)).seq);
  }
  await must('/usr/bin/umount', [file('mnt')]);
  mounted = false;
  await must('/usr/sbin/losetup', ['-d', loop]);
  loop = '';
  await must('/usr/bin/fusermount3', ['-u', file('fuse')]);
  await fuseExited;
  await server.shutdown();

  const made = await vblk(['journal', 'crash-states', file('log'), '--base', file('base.img'), '--out', file('states'), '--max', '40', '--seed', '13', '--after', 'mkfs']);
  t.equal(made.code, 0, made.stderr);
  const manifest = JSON.parse(fs.readFileSync(file('states/manifest.json'), 'utf8')) as { states: { file: string; beforeFlush: number | null }[] };
  t.equal(manifest.states.length, 40, '--max 40 states');

  /** Which of FILES a state holds intact (debugfs dump compared with the source). */
  const intact = async (img: string): Promise<string[]> => {
    const out: string[] = [];
    for (const name of FILES) {
      const dumped = file(`dump-${name}`);
      fs.rmSync(dumped, { force: true });
      await run('/usr/sbin/debugfs', ['-R', `dump /${name} ${dumped}`, img]);
      if (fs.existsSync(dumped) && fs.readFileSync(dumped).equals(fs.readFileSync(file(`${name}.src`)))) out.push(name);
    }
    return out;
  };
  /** Journal recovery, then a full read-only check: exit code of the check. */
  const fsck = async (img: string): Promise<number | null> => {
    await run('/usr/sbin/e2fsck', ['-E', 'journal_only', '-y', img]);
    return (await run('/usr/sbin/e2fsck', ['-fn', img])).code;
  };

  const checked = new Map(FILES.map((f) => [f, 0]));
  for (const s of manifest.states) {
    const img = file(`states/${s.file}`);
    t.equal(await fsck(img), 0, `${s.file}: e2fsck -fn finds nothing`);
    const due = FILES.filter((f) => marks.get(f)! < (s.beforeFlush ?? Infinity));
    const have = await intact(img);
    t.same(due.filter((f) => !have.includes(f)), [], `${s.file}: the files fsync'd before its cut are there (${due.join(', ') || 'none'})`);
    for (const f of due) checked.set(f, checked.get(f)! + 1);
  }
  for (const f of FILES) t.ok(checked.get(f)! > 0, `${f} was checked in ${checked.get(f)} states`);

  // Negative control: the end state with the last fsync ignored. (debugfs
  // reads metadata as it lies on disk, so the ext4 journal is replayed first.)
  const entries = decodeJournal(fs.readFileSync(file('log'))).entries;
  const end = cutsOf(entries).at(-1)!;
  fs.copyFileSync(file('base.img'), file('broken.img'));
  await applyEntries(file('broken.img'), end.certain.filter((e) => e.seq < marks.get('f2')!));
  t.equal(await fsck(file('broken.img')), 0, 'the broken state is a consistent file system (an earlier state)');
  const broken = await intact(file('broken.img'));
  t.notOk(broken.includes('f3'), 'with f3\'s fsync ignored, the check finds f3 missing or wrong');
  t.ok(broken.includes('f1') && broken.includes('f2'), 'while f1 and f2 are there');
});
