// Images on tmpfs, a file system without non-blocking reads: preadv2 with
// RWF_NOWAIT says EOPNOTSUPP there (and on FUSE), and the io_uring
// engine must then read through the ring instead of failing. The engine
// conformance suite runs on a tmpfs file for every engine (not under
// direct I/O, which means nothing on tmpfs and which older kernels
// refuse there); a qcow2 image QEMU wrote on tmpfs opens and reads with
// the default engine, in-process and served to qemu-io over NBD.
// test/engine-matrix.mjs also runs the interop suite once with TMPDIR
// on tmpfs.

import path from 'node:path';
import t, { type Test } from 'tap';
import { openImage } from '../../src/device/images/open.js';
import { joinSegments, request } from '../../src/device/types.js';
import { chooseEngine } from '../../src/io/probe.js';
import { engineConformance } from '../helpers/engine-conformance.js';
import { serve } from '../helpers/server.js';
import { isTmpfs, tmpfsDir } from '../helpers/tmpfs.js';
import { run } from '../helpers/tools.js';

const seed = Number(process.env.VBLK_SEED ?? Date.now() % 1_000_000);
t.comment(`fast-check seed ${seed} (replay with VBLK_SEED=${seed})`);

t.test('the scratch directories are on tmpfs', async (t) => {
  t.ok(isTmpfs(tmpfsDir(t)));
});

engineConformance(t, { dir: (t) => tmpfsDir(t), direct: false, seed });

/** (pattern, offset, length) QEMU writes into the image; the rest reads as zeroes. */
const PATTERN: [number, number, number][] = [
  [0x5a, 0, 4096],
  [0x3c, 65536 + 512, 3000],
  [0x11, 1 << 20, 1 << 20],
];

async function qcow2OnTmpfs(t: Test): Promise<string> {
  const image = path.join(tmpfsDir(t), 'disk.qcow2');
  const created = await run('qemu-img', ['create', '-q', '-f', 'qcow2', image, '4M']);
  t.equal(created.code, 0, `qemu-img create ${created.stderr}`);
  const writes = PATTERN.flatMap(([p, at, n]) => ['-c', `write -P ${p} ${at} ${n}`]);
  const written = await run('qemu-io', ['-f', 'qcow2', ...writes, image]);
  t.equal(written.code, 0, `qemu-io write ${written.stderr}`);
  return image;
}

t.test('a qcow2 image on tmpfs opens and reads with the default engine', async (t) => {
  const image = await qcow2OnTmpfs(t);
  const { engine } = chooseEngine('auto');
  t.teardown(() => engine.close());
  const img = await openImage(image, { readOnly: true, engine });
  t.teardown(() => img.close());
  const expected = Buffer.alloc(4 << 20);
  for (const [p, at, n] of PATTERN) expected.fill(p, at, at + n);
  // Small reads (the page-cache path) and one large one (a worker's).
  for (const [at, n] of [[0, 4096], [65536, 4096], [(1 << 20) - 512, 8192], [0, 4 << 20]]) {
    const data = joinSegments(at, n, await img.read(request('read', at, n)));
    t.ok(data.equals(expected.subarray(at, at + n)), `${n} bytes at ${at} read back`);
  }
});

t.test('a qcow2 image on tmpfs served over NBD reads back in qemu-io', async (t) => {
  const image = await qcow2OnTmpfs(t);
  const server = await serve(t, [image]);
  const checks = PATTERN.flatMap(([p, at, n]) => ['-c', `read -P ${p} ${at} ${n}`]);
  const r = await run('qemu-io', ['-r', '-f', 'raw', ...checks, '-c', `read -P 0 ${2 << 20} ${2 << 20}`, server.uri()]);
  t.equal(r.code, 0, r.stderr);
  t.notMatch(r.stdout + r.stderr, /fail|error/i, r.stdout);
  t.equal((r.stdout.match(/^read /gm) ?? []).length, PATTERN.length + 1, 'every read verified');
  t.equal((await server.stop()).code, 0, 'the server shut down cleanly');
});
