// --filter journal (device/filters/journal.ts) and `vblk journal`, with
// qemu-io and qemu-img as the clients. Through `vblk serve`: the log holds
// each write, zero, trim and flush, FUA where qemu-io asked for it, and
// `journal list` shows them. In process (mark() is a live action): a
// replay to a mark equals, by qemu-img compare, the image copied out of
// the export when the mark was set, and not the image of another mark;
// a replay to the last seq equals the image at the end.

import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { JournalFilter } from '../src/device/filters/journal.js';
import { openImage } from '../src/device/images/open.js';
import { SyncEngine } from '../src/io/sync-engine.js';
import { serveInProcess } from './helpers/in-process.js';
import { serve, tempDir, vblk } from './helpers/server.js';
import { run } from './helpers/tools.js';

async function qemuIo(uri: string, commands: string[]): Promise<void> {
  const r = await run('qemu-io', ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), uri]);
  if (r.code !== 0 || /failed|error/i.test(r.stdout + r.stderr)) throw new Error(`qemu-io: ${r.stdout}${r.stderr}`);
}

t.test('vblk serve --filter journal:file=LOG logs what qemu-io does; journal list shows it', async (t) => {
  const dir = tempDir(t);
  const log = path.join(dir, 'disk.log');
  const served = await serve(t, ['memory:4M', '--filter', `journal:file=${log}`]);
  await qemuIo(served.uri(), ['write -P 1 0 64k', 'flush', 'write -z 64k 64k', 'discard 1M 64k']);
  await run('qemu-io', ['-f', 'raw', '-t', 'none', '-c', 'write -P 2 2M 4k', served.uri()]);
  served.proc.kill('SIGTERM');
  await served.exited;

  const json = await vblk(['journal', 'list', log, '--json']);
  t.equal(json.code, 0, json.stderr);
  const doc = JSON.parse(json.stdout) as { header: { size: number }; entries: Record<string, unknown>[] };
  t.equal(doc.header.size, 4 << 20);
  const data = doc.entries.filter((e) => e.type !== 'flush').map((e) => [e.type, e.offset, e.length]);
  t.same(data, [
    ['write', 0, 65536],
    ['zero', 65536, 65536],
    ['trim', 1 << 20, 65536],
    ['write', 2 << 20, 4096],
  ], 'each write, zero and trim, with its range, in order');
  t.same(doc.entries.map((e) => e.seq), doc.entries.map((_, i) => i + 1), 'seqs 1, 2, 3, ...');
  const firstFlush = doc.entries.find((e) => e.type === 'flush')!;
  t.equal(firstFlush.seq, 2, 'the flush qemu-io asked for follows the first write');
  t.equal(firstFlush.covers, 1, 'and covers it');

  const table = await vblk(['journal', 'list', log]);
  t.equal(table.code, 0);
  t.match(table.stdout, /^journal of a 4 MiB disk/);
  t.match(table.stdout, /^ +1 {2}write +0\+65536/m);
  t.match(table.stdout, /^ +2 {2}flush +covers seq 1$/m);
  t.match(table.stdout, /entries: 2 writes \(68 KiB\), 1 trims, 1 zeroes, \d+ flushes, 0 marks\n$/);

  fs.truncateSync(log, fs.statSync(log).size - 3);
  const torn = await vblk(['journal', 'list', log, '--json']);
  t.equal(torn.code, 0, 'a torn journal still lists');
  t.match(torn.stderr, /torn/, 'and says where it stopped');
  t.equal((JSON.parse(torn.stdout) as { entries: unknown[] }).entries.length, doc.entries.length - 1, 'up to its last whole entry');
});

t.test('replay --to MARK equals the image copied at that mark (qemu-img compare)', async (t) => {
  const dir = tempDir(t);
  const file = (name: string): string => path.join(dir, name);
  fs.writeFileSync(file('base.img'), Buffer.alloc(4 << 20, 0x5a));
  fs.copyFileSync(file('base.img'), file('disk.img'));
  const journal = new JournalFilter(await openImage(file('disk.img'), { readOnly: false, engine: new SyncEngine() }), { file: file('log') });
  const server = await serveInProcess(t, journal, dir);
  const uri = server.uri;
  const copyAt = async (name: string): Promise<void> => {
    const r = await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, file(name)]);
    if (r.code !== 0) throw new Error(r.stderr);
  };

  await qemuIo(uri, ['write -P 1 0 1M', 'write -z 3M 512k', 'write -P 2 64k 4k']);
  const one = await journal.mark('one');
  t.equal(one.seq, journal.stats().seq, 'mark() gives the seq of the mark, the last one given out');
  await copyAt('one.img');
  await qemuIo(uri, ['write -P 3 512k 1M', 'discard 3584k 512k', 'write -P 4 4095k 1k']);
  t.match(await journal.mark('two'), { seq: Number }, 'a second mark');
  await copyAt('two.img');
  await qemuIo(uri, ['write -P 5 0 4M']);
  t.match(journal.stats(), { marks: 2, writes: 5, zeroes: 1, trims: 1 });
  await server.shutdown();

  const compare = async (a: string, b: string): Promise<number | null> => (await run('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'raw', file(a), file(b)])).code;
  for (const mark of ['one', 'two']) {
    const r = await vblk(['journal', 'replay', file('log'), '--base', file('base.img'), '--to', mark, '--out', file(`replay-${mark}.img`)]);
    t.equal(r.code, 0, r.stderr);
    t.equal(await compare(`replay-${mark}.img`, `${mark}.img`), 0, `replay to ${mark} equals the image at ${mark}`);
  }
  t.equal(await compare('replay-one.img', 'two.img'), 1, 'replay to one differs from the image at two');
  t.equal(await compare('replay-two.img', 'one.img'), 1, 'replay to two differs from the image at one');
  const last = String(journal.stats().seq);
  t.equal((await vblk(['journal', 'replay', file('log'), '--base', file('base.img'), '--to', last, '--out', file('end.img')])).code, 0);
  t.equal(await compare('end.img', 'disk.img'), 0, 'replay to the last seq equals the image at the end');
  const bad = await vblk(['journal', 'replay', file('log'), '--base', file('base.img'), '--to', 'three', '--out', file('x.img')]);
  t.equal(bad.code, 1);
  t.match(bad.stderr, /no mark 'three' in the journal \(marks: one, two\)/);
});
