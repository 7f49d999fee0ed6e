// --filter dirty (device/filters/dirty.ts): after qemu-io writes, zeroes,
// trims and reads, nbdinfo --map=qemu:dirty-bitmap:NAME shows exactly the
// granules written, zeroed or trimmed (reads mark nothing), the same JSON
// qemu-nbd -B NAME gives for the same commands on a qcow2 with that bitmap;
// the filter's live methods start, clear and drop bitmaps.

import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { DirtyFilter } from '../src/device/filters/dirty.js';
import { MemoryImage } from '../src/device/images/memory.js';
import { request } from '../src/device/types.js';
import { serve, tempDir } from './helpers/server.js';
import { run } from './helpers/tools.js';

const COMMANDS = ['write -P 1 1000 10', 'write -z 1M 100K', 'discard 3M 64K', 'read 2M 64K', 'write -P 2 4000K 96K'];

async function qemuIo(uri: string): Promise<void> {
  const r = await run('qemu-io', ['-f', 'raw', ...COMMANDS.flatMap((c) => ['-c', c]), uri]);
  if (r.code !== 0 || /failed/.test(r.stdout + r.stderr)) throw new Error(`qemu-io: ${r.stdout}${r.stderr}`);
}

async function dirtyMap(uri: string, name: string): Promise<unknown> {
  const r = await run('nbdinfo', [`--map=qemu:dirty-bitmap:${name}`, '--json', uri]);
  if (r.code !== 0) throw new Error(`nbdinfo: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

t.test('vblk --filter dirty and qemu-nbd -B answer the same map for the same qemu-io commands', async (t) => {
  const served = await serve(t, ['memory:4M', '--filter', 'dirty:bitmap=a+b,granularity=64K']);
  await qemuIo(served.uri());
  const ours = await dirtyMap(served.uri(), 'a');
  t.same(ours, [
    { offset: 0, length: 65536, type: 1, description: 'dirty' },
    { offset: 65536, length: 983040, type: 0, description: 'clean' },
    { offset: 1048576, length: 131072, type: 1, description: 'dirty' },
    { offset: 1179648, length: 1966080, type: 0, description: 'clean' },
    { offset: 3145728, length: 65536, type: 1, description: 'dirty' },
    { offset: 3211264, length: 851968, type: 0, description: 'clean' },
    { offset: 4063232, length: 131072, type: 1, description: 'dirty' },
  ], 'the written, zeroed and trimmed granules, the read one clean');
  t.same(await dirtyMap(served.uri(), 'b'), ours, 'bitmap b saw the same');
  const list = await run('nbdinfo', ['--list', served.uri()]);
  t.match(list.stdout, /qemu:dirty-bitmap:a\n\s*qemu:dirty-bitmap:b/, 'nbdinfo --list shows both contexts');

  const dir = tempDir(t);
  const img = path.join(dir, 'd.qcow2');
  for (const args of [['create', '-q', '-f', 'qcow2', img, '4M'], ['bitmap', '--add', '-g', '65536', img, 'a']]) {
    t.equal((await run('qemu-img', args)).code, 0);
  }
  // qemu-nbd serves one client and exits (no -t); the bitmap persists in the qcow2 between the two.
  for (const pass of ['write', 'map']) {
    const sock = path.join(dir, `${pass}.sock`);
    const nbd = run('qemu-nbd', ['-f', 'qcow2', '-B', 'a', '--discard=unmap', '-k', sock, img]);
    const uri = `nbd+unix:///?socket=${sock}`;
    // Wait for the socket without connecting (a connection would be its one client).
    for (let i = 0; i < 200 && !fs.existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
    if (pass === 'write') await qemuIo(uri);
    else t.same(await dirtyMap(uri, 'a'), ours, 'qemu-nbd -B a maps the same extents and flags');
    await nbd;
  }
});

t.test('live start, clear, drop and list', async (t) => {
  const f = new DirtyFilter(new MemoryImage(1 << 20), { bitmaps: [], granularity: 65536 });
  await f.write(request('write', 0, 512, { data: Buffer.alloc(512, 1) }));
  t.same(f.start('x', { granularity: 4096 }), { name: 'x', granularity: 4096, dirtyBytes: 0 }, 'a write before the start is not dirty');
  t.throws(() => f.start('x'), /already exists/);
  await f.write(request('write', 4000, 200, { data: Buffer.alloc(200, 1) }));
  await f.read(request('read', 65536, 4096));
  t.same(f.list(), [{ name: 'x', granularity: 4096, dirtyBytes: 8192 }], 'two granules dirty, the read none');
  t.same(f.bitmap('x')!.runs(0, 16384), [{ length: 8192, dirty: true }, { length: 8192, dirty: false }]);
  t.equal(f.clear('x').dirtyBytes, 0, 'clear');
  const held = f.bitmap('x')!;
  f.drop('x');
  t.ok(held.dropped, 'a holder learns it was dropped');
  t.same(f.list(), []);
  t.throws(() => f.clear('x'), /no dirty bitmap 'x'/);
});
