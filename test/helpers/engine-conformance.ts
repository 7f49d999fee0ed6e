// The engine conformance suite: random batches of reads, writes and
// syncs checked against an in-memory model, transfers from 512 bytes to
// 32 MiB, reads at and past the end of the file, unaligned requests under
// --direct, racing writes into one block, and errors with the right
// codes; for every engine this host has, each also under direct I/O
// where the caller asks. The scratch files go where the caller says:
// test/io-engines.test.ts runs it in the usual temporary directory,
// test/reliability/tmpfs.test.ts on tmpfs.

import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import type { Test } from 'tap';
import type { IoEngine, IoOp } from '../../src/io/engine.js';
import { chooseEngine, directEngine, engineReports } from '../../src/io/probe.js';
import { RingEngine } from '../../src/io/ring-engine.js';

const FILE_SIZE = 8 << 20;

export interface ConformanceOptions {
  /** A fresh directory for one subtest's files, removed when it ends. */
  dir: (t: Test) => string;
  /** Also run every engine under direct I/O. */
  direct: boolean;
  /** fast-check's seed. */
  seed: number;
}

interface Variant {
  label: string;
  engine: IoEngine;
  direct: boolean;
}

function variants(direct: boolean): Variant[] {
  const out: Variant[] = [];
  for (const r of engineReports().filter((r) => r.available)) {
    out.push({ label: r.name, engine: chooseEngine(r.name).engine, direct: false });
    if (direct) out.push({ label: `${r.name} --direct`, engine: directEngine(chooseEngine(r.name).engine), direct: true });
  }
  return out;
}

function scratch(t: Test, dir: string, direct: boolean, size = FILE_SIZE): { fd: number; file: string } {
  const file = path.join(dir, 'io.img');
  fs.writeFileSync(file, Buffer.alloc(0));
  fs.truncateSync(file, size);
  const fd = fs.openSync(file, fs.constants.O_RDWR | (direct ? fs.constants.O_DIRECT : 0));
  t.teardown(() => fs.closeSync(fd));
  return { fd, file };
}

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
    return undefined;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code;
  }
}

/** A batch of non-overlapping operations (concurrent ones may run in any order). */
const batchArb = (alignment: number) =>
  fc
    .array(
      fc.record({
        kind: fc.constantFrom('read', 'write', 'sync'),
        block: fc.integer({ min: 0, max: FILE_SIZE / 65536 - 1 }),
        skew: fc.integer({ min: 0, max: alignment === 1 ? 4095 : 7 }),
        length: fc.integer({ min: 1, max: 65536 - 4096 }),
        fill: fc.integer({ min: 1, max: 255 }),
      }),
      { minLength: 1, maxLength: 128 },
    )
    .map((ops) => {
      const seen = new Set<number>();
      return ops.filter((o) => !seen.has(o.block) && seen.add(o.block));
    });

export function engineConformance(t: Test, { dir, direct, seed }: ConformanceOptions): void {
  for (const v of variants(direct)) {
    t.test(v.label, async (t) => {
      t.teardown(() => v.engine.close());

      t.test('random batches at depth 1 to 128 agree with a model of the file', async (t) => {
        const { fd, file } = scratch(t, dir(t), v.direct);
        const model = Buffer.alloc(FILE_SIZE);
        await fc.assert(
          fc.asyncProperty(batchArb(1), async (batch) => {
            const ops: IoOp[] = [];
            const reads: { buffer: Buffer; position: number }[] = [];
            for (const o of batch) {
              const position = o.block * 65536 + o.skew;
              if (o.kind === 'sync') ops.push({ kind: 'sync', fd, dataOnly: o.fill % 2 === 0 });
              else if (o.kind === 'write') {
                const buffer = Buffer.alloc(o.length, o.fill);
                buffer.copy(model, position);
                ops.push({ kind: 'write', fd, buffer, position });
              } else {
                const buffer = Buffer.alloc(o.length);
                reads.push({ buffer, position });
                ops.push({ kind: 'read', fd, buffer, position });
              }
            }
            const before = Buffer.from(model);
            await v.engine.submit(ops);
            for (const r of reads) {
              // A read in the same batch as a write to other blocks sees the model before or after; blocks differ, so both agree.
              if (!r.buffer.equals(before.subarray(r.position, r.position + r.buffer.length))) return false;
            }
            return true;
          }),
          { seed, numRuns: 40 },
        );
        t.ok(fs.readFileSync(file).equals(model), 'the file equals the model at the end');
      });

      t.test('transfers from 512 bytes to 32 MiB', async (t) => {
        const { fd } = scratch(t, dir(t), v.direct, 64 << 20);
        for (const size of [512, 4096, 65536 + 512, 1 << 20, 32 << 20]) {
          const data = Buffer.alloc(size);
          for (let i = 0; i < size; i += 4096) data.writeUInt32LE(i ^ size, i);
          await v.engine.submit([{ kind: 'write', fd, buffer: data, position: 4096 }]);
          const back = Buffer.alloc(size);
          await v.engine.submit([{ kind: 'read', fd, buffer: back, position: 4096 }]);
          t.ok(back.equals(data), `${size} bytes round-trip`);
        }
      });

      t.test('reads at and past the end of the file', async (t) => {
        const { fd } = scratch(t, dir(t), v.direct, 1 << 20);
        const last = Buffer.alloc(4096, 9);
        await v.engine.submit([{ kind: 'read', fd, buffer: last, position: (1 << 20) - 4096 }]);
        t.ok(last.every((b) => b === 0), 'the last block reads');
        t.equal(await codeOf(v.engine.submit([{ kind: 'read', fd, buffer: Buffer.alloc(8192), position: (1 << 20) - 4096 }])), 'EIO', 'a read running past the end: EIO');
        t.equal(await codeOf(v.engine.submit([{ kind: 'read', fd, buffer: Buffer.alloc(4096), position: 1 << 20 }])), 'EIO', 'a read at the end: EIO');
      });

      t.test('errors come back with their codes', async (t) => {
        const { fd } = scratch(t, dir(t), v.direct);
        const closed = fs.openSync(path.join(dir(t), 'gone'), 'w');
        fs.closeSync(closed);
        t.equal(await codeOf(v.engine.submit([{ kind: 'read', fd: closed, buffer: Buffer.alloc(4096), position: 0 }])), 'EBADF', 'read on a closed descriptor: EBADF');
        t.equal(await codeOf(v.engine.submit([{ kind: 'sync', fd: closed, dataOnly: true }])), 'EBADF', 'sync on a closed descriptor: EBADF');
        const roFile = path.join(dir(t), 'ro');
        fs.writeFileSync(roFile, Buffer.alloc(8192));
        const rofd = fs.openSync(roFile, 'r');
        t.equal(await codeOf(v.engine.submit([{ kind: 'write', fd: rofd, buffer: Buffer.alloc(512), position: 0 }])), 'EBADF', 'write on a read-only descriptor: EBADF');
        fs.closeSync(rofd);
        const good = Buffer.alloc(4096, 1);
        t.equal(await codeOf(v.engine.submit([{ kind: 'write', fd, buffer: good, position: 0 }, { kind: 'read', fd: closed, buffer: Buffer.alloc(512), position: 0 }])), 'EBADF', 'one failure fails the batch');
        t.equal(await codeOf(v.engine.submit([{ kind: 'read', fd, buffer: Buffer.alloc(4096), position: 0 }])), undefined, 'and the engine carries on');
      });

      if (v.direct) {
        t.test('unaligned requests work under direct I/O', async (t) => {
          const { fd, file } = scratch(t, dir(t), true);
          const model = Buffer.alloc(FILE_SIZE);
          await fc.assert(
            fc.asyncProperty(batchArb(1), async (batch) => {
              const ops: IoOp[] = batch
                .filter((o) => o.kind === 'write')
                .map((o) => {
                  const position = o.block * 65536 + o.skew;
                  const buffer = Buffer.alloc(o.length, o.fill).subarray(1);
                  buffer.copy(model, position);
                  return { kind: 'write' as const, fd, buffer, position };
                });
              await v.engine.submit(ops);
              const probe = Buffer.alloc(777);
              await v.engine.submit([{ kind: 'read', fd, buffer: probe, position: 12345 }]);
              return probe.equals(model.subarray(12345, 12345 + 777));
            }),
            { seed, numRuns: 25 },
          );
          t.ok(fs.readFileSync(file).equals(model), 'the file equals the model');
        });

        t.test('racing unaligned writes into one block both land', async (t) => {
          const { fd, file } = scratch(t, dir(t), true);
          const ops: IoOp[] = [];
          for (let i = 0; i < 64; i++) ops.push({ kind: 'write', fd, buffer: Buffer.alloc(64, i + 1), position: i * 64 });
          await v.engine.submit(ops);
          const block = fs.readFileSync(file).subarray(0, 4096);
          t.ok(ops.every((_, i) => block.subarray(i * 64, i * 64 + 64).every((b) => b === i + 1)), 'every 64-byte piece is there');
        });

        t.test('the bare engine rejects unaligned I/O on an O_DIRECT descriptor with EINVAL', async (t) => {
          // Allocated blocks: ext4 serves unaligned direct reads of holes without complaint.
          const file = path.join(dir(t), 'full.img');
          fs.writeFileSync(file, Buffer.alloc(1 << 20, 1));
          const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_DIRECT);
          t.teardown(() => fs.closeSync(fd));
          const bare = chooseEngine(v.label.split(' ')[0]).engine;
          t.teardown(() => bare.close());
          t.equal(await codeOf(bare.submit([{ kind: 'read', fd, buffer: Buffer.alloc(100), position: 3 }])), 'EINVAL');
        });
      }

      if (v.engine instanceof RingEngine) {
        t.test('nothing is left in flight afterwards', async (t) => {
          t.equal((v.engine as RingEngine).pending, 0);
        });
      }
    });
  }
}
