// Qcow2Image at the device level, judged by qemu-img check and qemu-io:
// refcount blocks and the refcount table growing with 512-byte clusters,
// L2 tables falling out of the cache and coming back, many concurrent
// writes racing for one unallocated cluster, copy-on-write from the
// backing file, zero and trim on an overlay, and a model of the disk.

import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import t, { type Test } from 'tap';
import { openImage } from '../src/device/images/open.js';
import { createQcow2 } from '../src/device/images/qcow2/create.js';
import { RawImage } from '../src/device/images/raw.js';
import { joinSegments, request, type BlockDevice } from '../src/device/types.js';
import { chooseEngine } from '../src/io/probe.js';
import { tempDir } from './helpers/server.js';
import { run } from './helpers/tools.js';

const engine = chooseEngine('auto').engine;
t.teardown(() => engine.close());
const seed = Number(process.env.VBLK_SEED ?? Date.now() % 1_000_000);
t.comment(`fast-check seed ${seed} (replay with VBLK_SEED=${seed})`);

async function check(t: Test, file: string): Promise<void> {
  const r = await run('qemu-img', ['check', file]);
  t.equal(r.code, 0, `qemu-img check: ${r.stdout.trim()} ${r.stderr.trim()}`);
}

async function read(img: BlockDevice, offset: number, length: number): Promise<Buffer> {
  return joinSegments(offset, length, await img.read(request('read', offset, length)));
}

t.test('512-byte clusters: refcount blocks and the refcount table grow; L2 tables cycle through the cache', async (t) => {
  const file = path.join(tempDir(t), 'small.qcow2');
  createQcow2(file, { size: 24 << 20, clusterBits: 9 });
  const img = await openImage(file, { readOnly: false, engine });
  const writes: Promise<void>[] = [];
  // 40000 clusters: about 20 MiB, past what one refcount table cluster (64 blocks of 256) covers.
  for (let i = 0; i < 40000; i++) {
    const data = Buffer.alloc(512, (i % 251) + 1);
    writes.push(img.write(request('write', ((i * 7919) % 49152) * 512, 512, { data })));
    if (writes.length === 256) await Promise.all(writes.splice(0));
  }
  await Promise.all(writes);
  await img.flush();
  const tableClusters = fs.readFileSync(file).readUInt32BE(56);
  t.ok(tableClusters > 1, `the refcount table grew to ${tableClusters} clusters`);
  const sample = await read(img, ((39999 * 7919) % 49152) * 512, 512);
  t.ok(sample.every((b) => b === (39999 % 251) + 1), 'the last write reads back');
  await img.close();
  await check(t, file);
  const r = await run('qemu-io', ['-r', '-f', 'qcow2', '-c', `read -P ${(39999 % 251) + 1} ${((39999 * 7919) % 49152) * 512} 512`, file]);
  t.notMatch(r.stdout, /fail/i, 'and QEMU reads it too');
});

t.test('concurrent writes into one unallocated cluster allocate it once', async (t) => {
  const dir = tempDir(t);
  const base = path.join(dir, 'base.img');
  RawImage.create(base, 1 << 20);
  fs.writeFileSync(base, Buffer.alloc(1 << 20, 0x11));
  const top = path.join(dir, 'top.qcow2');
  createQcow2(top, { size: 1 << 20, backingFile: 'base.img', backingFormat: 'raw' });
  const img = await openImage(top, { readOnly: false, engine });
  // 16 writes of 4 KiB into the same 64 KiB cluster, all in flight at once.
  await Promise.all(Array.from({ length: 16 }, (_, i) => img.write(request('write', 65536 + i * 4096, 4096, { data: Buffer.alloc(4096, i + 1) }))));
  const cluster = await read(img, 65536, 65536);
  t.ok(Array.from({ length: 16 }, (_, i) => cluster.subarray(i * 4096, (i + 1) * 4096).every((b) => b === i + 1)).every(Boolean), 'every write is there');
  // A partial write copies the rest of the cluster from the backing file.
  await img.write(request('write', 200000, 10, { data: Buffer.alloc(10, 0xee) }));
  const cow = await read(img, 196608, 65536);
  t.ok(cow.subarray(0, 200000 - 196608).every((b) => b === 0x11), 'copy-on-write kept the backing data before');
  t.ok(cow.subarray(200010 - 196608).every((b) => b === 0x11), 'and after');
  await img.close();
  await check(t, top);
  const info = JSON.parse((await run('qemu-img', ['info', '--output=json', top])).stdout);
  t.equal(info['actual-size'] <= 6 * 65536 + 65536 * 3, true, 'two data clusters, not seventeen');
});

t.test('zero and trim on an overlay hide the backing file; trim without one deallocates', async (t) => {
  const dir = tempDir(t);
  const base = path.join(dir, 'base.img');
  fs.writeFileSync(base, Buffer.alloc(1 << 20, 0x22));
  const top = path.join(dir, 'top.qcow2');
  createQcow2(top, { size: 1 << 20, backingFile: 'base.img', backingFormat: 'raw' });
  const img = await openImage(top, { readOnly: false, engine });
  await img.writeZeroes(request('writeZeroes', 0, 131072));
  await img.trim(request('trim', 131072, 65536));
  await img.writeZeroes(request('writeZeroes', 300000, 10));
  t.ok((await read(img, 0, 196608)).every((b) => b === 0), 'zeroed and trimmed clusters read as zeroes, not the backing data');
  t.ok((await read(img, 196608, 65536)).every((b) => b === 0x22), 'the next cluster still reads the backing file');
  const edge = await read(img, 299990, 30);
  t.same([...edge], [...Buffer.alloc(10, 0x22), ...Buffer.alloc(10, 0), ...Buffer.alloc(10, 0x22)], 'a partial zero writes zeroes');
  await t.rejects(img.writeZeroes(request('writeZeroes', 300000, 10, { fastZero: true })), { code: 'ENOTSUP' }, 'a partial fast zero is refused');
  const status = await img.blockStatus(request('blockStatus', 0, 1 << 20));
  t.same(status[0], { length: 196608, hole: true, zero: true, depth: 1 }, 'block status: zero clusters of the top layer');
  await img.close();
  await check(t, top);

  const alone = path.join(dir, 'alone.qcow2');
  createQcow2(alone, { size: 1 << 20 });
  const a = await openImage(alone, { readOnly: false, engine });
  await a.write(request('write', 0, 1 << 20, { data: Buffer.alloc(1 << 20, 7) }));
  await a.trim(request('trim', 0, 1 << 19));
  const st = await a.blockStatus(request('blockStatus', 0, 1 << 20));
  t.same(st[0], { length: 1 << 19, hole: true, zero: true, depth: 0 }, 'trimmed clusters are unallocated again');
  await a.close();
  await check(t, alone);
  const map = JSON.parse((await run('qemu-img', ['map', '--output=json', alone])).stdout) as { present: boolean; length: number }[];
  t.equal(map[0].present, false, 'QEMU agrees they are unallocated');
});

t.test('random writes, zeroes and trims agree with a model of the disk', async (t) => {
  const dir = tempDir(t);
  const size = 4 << 20;
  const baseContent = Buffer.alloc(size);
  for (let i = 0; i < size; i += 4096) baseContent.fill((i / 4096) % 200, i, i + 2048);
  const base = path.join(dir, 'base.img');
  fs.writeFileSync(base, baseContent);
  let run_ = 0;
  await fc.assert(
    fc.asyncProperty(
      fc.array(
        fc.record({
          op: fc.constantFrom('write', 'write', 'zero', 'trim'),
          offset: fc.integer({ min: 0, max: size - 1 }),
          length: fc.integer({ min: 1, max: 300000 }),
          fill: fc.integer({ min: 1, max: 255 }),
        }),
        { minLength: 1, maxLength: 40 },
      ),
      async (ops) => {
        const top = path.join(dir, `top${run_++}.qcow2`);
        createQcow2(top, { size, clusterBits: run_ % 2 ? 16 : 12, backingFile: 'base.img', backingFormat: 'raw' });
        const img = await openImage(top, { readOnly: false, engine });
        const model = Buffer.from(baseContent);
        const cs = run_ % 2 ? 65536 : 4096;
        for (const o of ops) {
          const length = Math.min(o.length, size - o.offset);
          if (o.op === 'write') {
            await img.write(request('write', o.offset, length, { data: Buffer.alloc(length, o.fill) }));
            model.fill(o.fill, o.offset, o.offset + length);
          } else if (o.op === 'zero') {
            await img.writeZeroes(request('writeZeroes', o.offset, length));
            model.fill(0, o.offset, o.offset + length);
          } else {
            // vblk trims whole clusters only, to zeroes; partial ones are left as they were.
            await img.trim(request('trim', o.offset, length));
            const first = Math.ceil(o.offset / cs) * cs;
            const end = o.offset + length === size ? size : Math.floor((o.offset + length) / cs) * cs;
            if (first < end) model.fill(0, first, end);
          }
        }
        const back = await read(img, 0, size);
        await img.close();
        const r = await run('qemu-img', ['check', top]);
        return back.equals(model) && r.code === 0;
      },
    ),
    { seed, numRuns: 12 },
  );
  t.pass('every sequence read back as the model and passed qemu-img check');
});
