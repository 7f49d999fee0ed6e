// qemu-img against a running vblk: convert a random image into an export
// and compare it (a one-byte difference must be found), info reports the
// virtual size, and map shows the sparse layout the file really has.

import { createHash, randomFillSync } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { serve, tempDir, vblk } from '../helpers/server.js';
import { run, type RunResult } from '../helpers/tools.js';
import { allocatedBytes, dataBytes, expectedLayout, makeSparse, mergeExtents, standardWrites, type Extent } from './sparse.js';

const MiB = 1 << 20;

function out(r: RunResult): { stdout: string; stderr: string } {
  return { stdout: r.stdout, stderr: r.stderr };
}

function sha256(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

function flipByte(file: string, offset: number): void {
  const fd = fs.openSync(file, 'r+');
  try {
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, offset);
    b[0] ^= 0xff;
    fs.writeSync(fd, b, 0, 1, offset);
  } finally {
    fs.closeSync(fd);
  }
}

t.test('qemu-img convert into vblk, then compare', async (t) => {
  const dir = tempDir(t);
  const ref = path.join(dir, 'ref.img');
  const target = path.join(dir, 'target.img');
  const size = 32 * MiB;
  fs.writeFileSync(ref, randomFillSync(Buffer.alloc(size)));
  const created = await vblk(['create', target, '--size', '32M']);
  t.equal(created.code, 0, 'vblk create', { stderr: created.stderr });
  const served = await serve(t, [target]);
  const uri = served.uri();

  const conv = await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', ref, uri]);
  t.equal(conv.code, 0, 'qemu-img convert -n into the export exits 0', out(conv));
  t.equal(sha256(target), sha256(ref), 'the backing file is byte-identical to the reference');

  const same = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', ref, uri]);
  t.equal(same.code, 0, 'qemu-img compare exits 0', out(same));
  t.match(same.stdout, /Images are identical/, 'and says the images are identical');

  // Negative control: one byte changed in the reference.
  const at = 23 * MiB + 12345;
  flipByte(ref, at);
  const diff = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', ref, uri]);
  t.equal(diff.code, 1, 'one changed byte in the reference: compare exits 1', out(diff));
  const m = /Content mismatch at offset (\d+)/.exec(diff.stdout);
  t.ok(m, 'compare reports a content mismatch', out(diff));
  if (m) {
    const reported = Number(m[1]);
    // qemu-img compare works in 512-byte sectors and names the sector's start.
    t.equal(reported, at - (at % 512), `the mismatch is reported in the sector of the changed byte (${at})`);
  }

  // And one byte changed behind the server's back is seen through it.
  flipByte(ref, at); // reference back to the original
  const again = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', ref, uri]);
  t.equal(again.code, 0, 'restored reference compares equal again', out(again));
  flipByte(target, 7);
  const served2 = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', ref, uri]);
  t.equal(served2.code, 1, 'one changed byte in the served file: compare exits 1', out(served2));
  t.match(served2.stdout, /Content mismatch at offset 0\b/, 'at the first sector', out(served2));
});

t.test('qemu-img info reports the virtual size of each export', async (t) => {
  const dir = tempDir(t);
  const a = path.join(dir, 'a.img');
  const b = path.join(dir, 'b.img');
  const sizes = { '': 32 * MiB, odd: 5 * MiB + 12 * 1024 };
  fs.writeFileSync(a, '');
  fs.truncateSync(a, sizes['']);
  fs.writeFileSync(b, '');
  fs.truncateSync(b, sizes.odd);
  const served = await serve(t, [a, '--export', `odd=${b}`]);
  for (const [name, size] of Object.entries(sizes)) {
    const r = await run('qemu-img', ['info', '--output=json', served.uri(name)]);
    t.equal(r.code, 0, `qemu-img info '${name}' exits 0`, out(r));
    const info = JSON.parse(r.stdout) as { 'virtual-size': number; format: string };
    t.equal(info['virtual-size'], size, `export '${name}' has virtual size ${size}`);
    t.equal(info.format, 'raw', 'probed as raw');
    const human = await run('qemu-img', ['info', served.uri(name)]);
    t.match(human.stdout, new RegExp(`virtual size: .*\\(${size} bytes\\)`), 'the human form agrees', out(human));
  }
});

t.test('qemu-img map agrees with the sparse layout of the file', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'sparse.img');
  const size = 64 * MiB;
  const writes = standardWrites(size);
  makeSparse(file, size, writes);
  const expected = expectedLayout(size, writes);
  // The premise: the file system allocated exactly the blocks written.
  t.equal(allocatedBytes(file), dataBytes(expected), 'premise: the file system allocated exactly the 4 KiB blocks written');
  t.ok(expected.some((e) => e.data) && expected.some((e) => !e.data), 'the layout has both data and holes');

  const served = await serve(t, [file]);
  const r = await run('qemu-img', ['map', '--output=json', '-f', 'raw', served.uri()]);
  t.equal(r.code, 0, 'qemu-img map exits 0', out(r));
  const entries = JSON.parse(r.stdout) as { start: number; length: number; data: boolean; zero: boolean; present?: boolean }[];
  for (const e of entries) {
    t.equal(e.zero, !e.data, `extent at ${e.start}: zero is the opposite of data`, { entry: e });
  }
  const got: Extent[] = mergeExtents(entries.map((e) => ({ offset: e.start, length: e.length, data: e.data })));
  t.same(got, expected, 'the map matches the layout written', { map: r.stdout });
  t.equal(
    entries.reduce((n, e) => n + e.length, 0),
    size,
    'the map covers the whole export',
  );
});
