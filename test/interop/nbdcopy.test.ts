// nbdcopy against a running vblk: a 256 MiB random image copied out of an
// export and into one, over one connection and over four, must arrive
// byte for byte. The image copied in has a hole over data the target
// already held, so the copy must also zero it.

import { createHash, randomFillSync } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { serve, tempDir, vblk } from '../helpers/server.js';
import { run, type RunResult } from '../helpers/tools.js';

const MiB = 1 << 20;
const SIZE = 256 * MiB;
const HOLE = { offset: 100 * MiB, length: 16 * MiB };

function out(r: RunResult): { stdout: string; stderr: string } {
  return { stdout: r.stdout, stderr: r.stderr };
}

function sha256(file: string): string {
  const hash = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.alloc(8 * MiB);
  try {
    for (let pos = 0; ; ) {
      const n = fs.readSync(fd, buf, 0, buf.length, pos);
      if (n === 0) break;
      hash.update(buf.subarray(0, n));
      pos += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return hash.digest('hex');
}

/** Writes random data to FILE (SIZE bytes), leaving HOLE unwritten when `hole` is set. */
function randomImage(file: string, hole: boolean): void {
  const fd = fs.openSync(file, 'wx');
  const chunk = Buffer.alloc(16 * MiB);
  try {
    fs.ftruncateSync(fd, SIZE);
    for (let pos = 0; pos < SIZE; pos += chunk.length) {
      if (hole && pos >= HOLE.offset && pos < HOLE.offset + HOLE.length) continue;
      randomFillSync(chunk);
      fs.writeSync(fd, chunk, 0, chunk.length, pos);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** Fills [offset, offset+length) of FILE with BYTE. */
function fill(file: string, offset: number, length: number, byte: number): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, Buffer.alloc(length, byte), 0, length, offset);
  } finally {
    fs.closeSync(fd);
  }
}

t.test('nbdcopy out of vblk, one connection and four', async (t) => {
  const dir = tempDir(t);
  const src = path.join(dir, 'src.img');
  randomImage(src, false);
  const want = sha256(src);
  const served = await serve(t, [src]);

  for (const extra of [[], ['--connections=4']]) {
    const dst = path.join(dir, `out${extra.length ? '-4' : '-1'}.img`);
    const r = await run('nbdcopy', [...extra, served.uri(), dst]);
    t.equal(r.code, 0, `nbdcopy ${extra.join(' ')} URI out.img exits 0`, out(r));
    t.equal(fs.statSync(dst).size, SIZE, 'the copy has the export size');
    t.equal(sha256(dst), want, `copy out ${extra.join(' ') || '(one connection)'} is byte-identical`);
  }
  t.equal(sha256(src), want, 'the source image is unchanged');
});

t.test('nbdcopy into vblk, one connection and four', async (t) => {
  const dir = tempDir(t);
  const input = path.join(dir, 'in.img');
  randomImage(input, true);
  const want = sha256(input);
  // Two targets made by vblk create, holding junk where the input has its
  // hole: a copy that skipped the hole would leave the junk behind.
  const targets = [path.join(dir, 'dst1.img'), path.join(dir, 'dst4.img')];
  for (const target of targets) {
    const c = await vblk(['create', target, '--size', '256M']);
    t.equal(c.code, 0, 'vblk create', { stderr: c.stderr });
    fill(target, HOLE.offset - 4 * MiB, HOLE.length + 8 * MiB, 0xee);
  }
  t.not(sha256(targets[0]), want, 'control: the prepared target differs from the input');
  const served = await serve(t, [targets[0], '--export', `four=${targets[1]}`]);

  const one = await run('nbdcopy', [input, served.uri()]);
  t.equal(one.code, 0, 'nbdcopy in.img URI exits 0', out(one));
  t.equal(sha256(targets[0]), want, 'copy in over one connection is byte-identical');

  const four = await run('nbdcopy', ['--connections=4', input, served.uri('four')]);
  t.equal(four.code, 0, 'nbdcopy --connections=4 in.img URI exits 0', out(four));
  t.equal(sha256(targets[1]), want, 'copy in over four connections is byte-identical');
  t.equal(fs.statSync(targets[1]).size, SIZE, 'the target keeps its size');
});
