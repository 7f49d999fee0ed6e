// --filter power-cut (device/filters/power-cut.ts): a property test of
// the filter over a memory disk against a model (reads see every request
// in order; a cut under `all` leaves exactly the flushed state plus the
// FUA requests; `random` and `torn` leave the same state again for the
// same seed, and every byte from the durable state or from a request
// since), then with qemu-io against an in-process server: flushed data
// and FUA writes survive a cut, unflushed writes never under `all`, and a
// seeded `random` or `torn` state is reproduced by its seed and made of
// whole requests (random) or sectors (torn) of old and new data. A
// negative control: with caching turned off (configure(null)) the same
// check finds the unflushed write. And `vblk serve memory:... --filter
// power-cut` through qemu-io.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import t, { type Test } from 'tap';
import { PowerCutFilter, type PowerCutConfig } from '../src/device/filters/power-cut.js';
import { MemoryImage } from '../src/device/images/memory.js';
import { Gateway } from '../src/device/gateway.js';
import { joinSegments, request, scatterSegments, type Request } from '../src/device/types.js';
import { serveInProcess } from './helpers/in-process.js';
import { serve, tempDir } from './helpers/server.js';
import { run, TOOL_ENV } from './helpers/tools.js';

const SIZE = 20 * 1024 + 700;
const BIG: PowerCutConfig = { policy: 'all', seed: 1, maxDirty: 1 << 30 };

const step = fc.record({
  kind: fc.constantFrom('write', 'write', 'write', 'fua', 'trim', 'zero', 'flush'),
  offset: fc.nat(SIZE - 1),
  length: fc.integer({ min: 1, max: 5000 }),
  byte: fc.integer({ min: 1, max: 255 }),
});
type Step = typeof step extends fc.Arbitrary<infer S> ? S : never;

async function readAll(dev: PowerCutFilter | MemoryImage): Promise<Buffer> {
  return joinSegments(0, SIZE, await dev.read(request('read', 0, SIZE)));
}

/** Runs the steps on the filter and on two models: what reads see, and what a cut under `all` leaves. */
async function play(filter: PowerCutFilter, steps: Step[]): Promise<{ current: Buffer; durable: Buffer; written: Set<number>[] }> {
  const current = Buffer.alloc(SIZE);
  const durable = Buffer.alloc(SIZE);
  // Per byte: the values written there since the durable state (for the random and torn checks).
  const written = Array.from({ length: SIZE }, () => new Set<number>());
  for (const s of steps) {
    const length = Math.min(s.length, SIZE - s.offset);
    const end = s.offset + length;
    if (s.kind === 'flush') {
      await filter.flush();
      current.copy(durable);
      for (const w of written) w.clear();
      continue;
    }
    const value = s.kind === 'write' || s.kind === 'fua' ? s.byte : 0;
    if (s.kind === 'write' || s.kind === 'fua') await filter.write(request('write', s.offset, length, { data: Buffer.alloc(length, value), fua: s.kind === 'fua' }));
    else if (s.kind === 'trim') await filter.trim(request('trim', s.offset, length));
    else await filter.writeZeroes(request('writeZeroes', s.offset, length));
    current.fill(value, s.offset, end);
    if (s.kind === 'fua') durable.fill(value, s.offset, end);
    else for (let i = s.offset; i < end; i++) written[i].add(value);
  }
  return { current, durable, written };
}

t.test('property: reads see every request in order; a cut under all leaves the flushed state and the FUA requests', async (t) => {
  await fc.assert(
    fc.asyncProperty(fc.array(step, { maxLength: 30 }), async (steps) => {
      const disk = new MemoryImage(SIZE);
      const filter = new PowerCutFilter(disk, BIG);
      const { current, durable } = await play(filter, steps);
      if (!(await readAll(filter)).equals(current)) throw new Error('a read does not see the requests in order');
      await filter.cut({ policy: 'all' });
      if (!(await readAll(filter)).equals(durable)) throw new Error('the state after the cut is not the durable one');
      if (filter.stats().unflushed.requests !== 0) throw new Error('the layer is not empty after the cut');
    }),
    { seed: 13, numRuns: 300 },
  );
  t.pass('300 runs');
});

t.test('property: with a small max-dirty the oldest are written back and reads still see everything', async (t) => {
  await fc.assert(
    fc.asyncProperty(fc.array(step, { maxLength: 30 }), async (steps) => {
      const filter = new PowerCutFilter(new MemoryImage(SIZE), { ...BIG, maxDirty: 8000 });
      const { current } = await play(filter, steps);
      if (!(await readAll(filter)).equals(current)) throw new Error('a read does not see the requests in order');
      if (filter.stats().dirty > 8000) throw new Error(`the layer holds ${filter.stats().dirty} bytes`);
      await filter.flush();
      if (!(await readAll(filter)).equals(current)) throw new Error('a flush changed what reads see');
    }),
    { seed: 14, numRuns: 200 },
  );
  t.pass('200 runs');
});

for (const policy of ['random', 'torn'] as const) {
  t.test(`property: a ${policy} cut is the same state for the same seed, and each byte is durable or written since`, async (t) => {
    let differ = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(step, { minLength: 1, maxLength: 30 }), fc.nat(1000), async (steps, seed) => {
        const states: Buffer[] = [];
        for (const s of [seed, seed, seed + 1]) {
          const filter = new PowerCutFilter(new MemoryImage(SIZE), BIG);
          const { durable, written } = await play(filter, steps);
          const report = await filter.cut({ policy, seed: s });
          if (report.seed !== s || report.policy !== policy) throw new Error('the report does not name the cut');
          const state = await readAll(filter);
          for (let i = 0; i < SIZE; i++) {
            if (state[i] !== durable[i] && !written[i].has(state[i])) throw new Error(`byte ${i} is ${state[i]}: neither durable nor written since`);
          }
          states.push(state);
        }
        if (!states[0].equals(states[1])) throw new Error('the same seed gave another state');
        if (!states[0].equals(states[2])) differ++;
      }),
      { seed: 15, numRuns: 80 },
    );
    t.ok(differ > 5, `another seed gives another state in ${differ} of 80 runs`);
  });
}

/** A memory disk that also reads into and writes from caller buffers, as the raw image does for guest memory. */
class GuestMemoryDisk extends MemoryImage {
  async readInto(req: Request, into: Buffer[]): Promise<void> {
    scatterSegments(req.offset, into, await this.read(req));
  }

  async writeFrom(req: Request, from: Buffer[]): Promise<void> {
    await this.write({ ...req, data: Buffer.concat(from) });
  }
}

t.test('guest buffers: writeFrom copies (the guest may reuse its buffer), readInto sees the layer, through the gateway', async (t) => {
  const gateway = new Gateway(new PowerCutFilter(new GuestMemoryDisk(SIZE), BIG));
  // One buffer: a filter that kept it instead of a copy would show the 9s.
  const guest = Buffer.alloc(1024, 7).fill(8, 1000);
  await gateway.execute(request('write', 100, 1024, { from: [guest] }));
  guest.fill(9);
  const into = [Buffer.alloc(600), Buffer.alloc(600)];
  await gateway.execute(request('read', 0, 1200, { into }));
  const got = Buffer.concat(into);
  const expect = Buffer.alloc(1200);
  expect.fill(7, 100, 1100).fill(8, 1100, 1124);
  t.ok(got.equals(expect), 'the read into guest buffers shows the write as it was sent');
  await gateway.execute(request('write', 0, 512, { from: [Buffer.alloc(512, 5)], fua: true }));
  await gateway.execute(request('flush', 0, 0));
  await gateway.execute(request('read', 0, 1200, { into }));
  expect.fill(5, 0, 512);
  t.ok(Buffer.concat(into).equals(expect), 'after a FUA write from guest buffers over it and a flush');
});

const K64 = 64 << 10;
const DISK = 1 << 20;

/** A power-cut filter over memory:1M served in this process (so the test can cut it between qemu-io runs). */
async function inProcess(t: Test, config: PowerCutConfig): Promise<{ filter: PowerCutFilter; uri: string; dir: string }> {
  const filter = new PowerCutFilter(new MemoryImage(DISK), config);
  const dir = tempDir(t);
  const { uri } = await serveInProcess(t, filter, dir);
  return { filter, uri, dir };
}

/** qemu-io commands in one run; it flushes the disk when it closes it. */
async function qemuIo(uri: string, commands: string[]): Promise<void> {
  const r = await run('qemu-io', ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), uri]);
  const out = r.stdout + r.stderr;
  const done = [...out.matchAll(/^(?:read|wrote) \d+\/\d+ bytes at offset \d+$/gm)].length + commands.filter((c) => c === 'flush').length;
  if (r.code !== 0 || done !== commands.length) throw new Error(`qemu-io: ${out}`);
}

/**
 * qemu-io writes left unflushed: cache=writeback (qemu-io's default,
 * writethrough, sends every write with FUA), and qemu flushes a disk when
 * it closes it (even with cache=unsafe), so this qemu-io sleeps after its writes and is
 * killed once the filter reads the last write's bytes: the client dies
 * with the power. `last` is that write: offset, length, pattern byte.
 */
async function unflushedWrites(t: Test, filter: PowerCutFilter, uri: string, commands: string[], last: [number, number, number]): Promise<void> {
  const child = spawn('qemu-io', ['-f', 'raw', '-t', 'writeback', ...[...commands, 'sleep 600000'].flatMap((c) => ['-c', c]), uri], { env: TOOL_ENV, stdio: 'ignore' });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  let gone = false;
  void exited.then(() => (gone = true));
  t.teardown(() => void child.kill('SIGKILL'));
  const [offset, length, byte] = last;
  for (;;) {
    if (gone) throw new Error('qemu-io exited before its last write');
    const data = joinSegments(offset, length, await filter.read(request('read', offset, length)));
    if (data.every((b) => b === byte)) break;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  child.kill('SIGKILL');
  await exited;
}

/** The whole disk as a client reads it (qemu-img convert into a file). */
async function dump(uri: string, dir: string): Promise<Buffer> {
  const out = path.join(dir, `state-${Math.random().toString(36).slice(2)}.raw`);
  const r = await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, out]);
  if (r.code !== 0) throw new Error(`qemu-img convert: ${r.stderr}`);
  return fs.readFileSync(out);
}

/** Flushed: 1 everywhere. Then unflushed 2 over [0, 64K), FUA 3 over [0, 4K), unflushed 4 at 128K, FUA 5 at 256K, unflushed 6 at 512K. */
async function fuaWorkload(t: Test, filter: PowerCutFilter, uri: string): Promise<void> {
  await qemuIo(uri, ['write -P 1 0 1M', 'flush']);
  const writes = ['write -P 2 0 64k', 'write -f -P 3 0 4k', `write -P 4 ${2 * K64} 64k`, `write -f -P 5 ${4 * K64} 64k`, `write -P 6 ${8 * K64} 4k`];
  await unflushedWrites(t, filter, uri, writes, [8 * K64, 4096, 6]);
}

/** What must hold after a cut under `all`: the problems found, none when it holds. */
function allProblems(state: Buffer): string[] {
  const expect = Buffer.alloc(DISK, 1);
  expect.fill(3, 0, 4096);
  expect.fill(5, 4 * K64, 5 * K64);
  const problems: string[] = [];
  for (let s = 0; s < DISK; s += 512) {
    if (!state.subarray(s, s + 512).equals(expect.subarray(s, s + 512))) problems.push(`sector ${s / 512} holds ${state[s]}, not ${expect[s]}`);
  }
  return problems;
}

t.test('qemu-io: after a cut under all, the flushed data and the FUA writes are there, no unflushed write', async (t) => {
  const { filter, uri, dir } = await inProcess(t, BIG);
  await fuaWorkload(t, filter, uri);
  t.same(filter.stats().unflushed, { requests: 3, bytes: 60 * 1024 + K64 + 4096 }, 'three writes wait unflushed (the first less what the FUA write covers)');
  const report = await filter.cut();
  t.match(report, { policy: 'all', unflushed: { requests: 3 }, kept: { requests: 0, bytes: 0 }, dropped: { requests: 3, bytes: 60 * 1024 + K64 + 4096 } }, 'the cut reports what it dropped');
  t.same(allProblems(await dump(uri, dir)), [], 'the disk holds exactly the flushed data and the FUA writes');
  await qemuIo(uri, ['write -P 7 0 4k']);
  t.equal(filter.stats().unflushed.requests, 0, 'serving goes on: the next write and flush (qemu-io closing) work');
  await qemuIo(uri, ['read -P 7 0 4k', 'read -P 1 4k 4k']);
});

t.test('negative control: with caching off (configure(null)) the same check finds the unflushed writes', async (t) => {
  const { filter, uri, dir } = await inProcess(t, BIG);
  filter.configure(null);
  await fuaWorkload(t, filter, uri);
  t.equal(filter.stats().unflushed.requests, 0, 'nothing waits');
  await filter.cut();
  const problems = allProblems(await dump(uri, dir));
  t.ok(problems.length > 0, `the check fails: ${problems.slice(0, 2).join('; ')}`);
});

/** Flushed 1 everywhere, then eight unflushed 64 KiB writes of 10 to 17; a cut; the disk as read. */
async function cutState(t: Test, policy: 'random' | 'torn', seed: number): Promise<Buffer> {
  const { filter, uri, dir } = await inProcess(t, { ...BIG, policy });
  await qemuIo(uri, ['write -P 1 0 1M', 'flush']);
  await unflushedWrites(t, filter, uri, Array.from({ length: 8 }, (_, k) => `write -P ${10 + k} ${k * K64} 64k`), [7 * K64, K64, 17]);
  const report = await filter.cut({ seed });
  if (report.unflushed.requests !== 8) throw new Error(`${report.unflushed.requests} requests were unflushed, not 8`);
  return dump(uri, dir);
}

for (const [policy, unit] of [
  ['random', K64],
  ['torn', 512],
] as const) {
  t.test(`qemu-io: a ${policy} cut is reproduced by its seed and keeps whole ${unit === K64 ? 'requests' : 'sectors'}`, async (t) => {
    const first = await cutState(t, policy, 42);
    t.ok(first.equals(await cutState(t, policy, 42)), 'the same seed, the same state');
    const others = [];
    for (const seed of [43, 44, 45]) others.push(await cutState(t, policy, seed));
    t.ok(others.some((s) => !s.equals(first)), 'another seed, another state (one of three at least)');
    let kept = 0;
    let units = 0;
    let mixed = 0;
    for (const state of [first, ...others]) {
      for (let k = 0; k < 8; k++) {
        const seen = new Set<number>();
        for (let at = k * K64; at < (k + 1) * K64; at += unit) {
          const piece = state.subarray(at, at + unit);
          const ok = piece.every((b) => b === 1) || piece.every((b) => b === 10 + k);
          if (!ok) t.fail(`${policy}: unit at ${at} is neither old nor new whole`);
          seen.add(piece[0]);
          units++;
          if (piece[0] === 10 + k) kept++;
        }
        if (seen.size > 1) mixed++;
      }
      t.ok(state.subarray(8 * K64).every((b) => b === 1), 'the rest of the disk holds the flushed data');
    }
    t.ok(kept > 0 && kept < units, `some ${unit === K64 ? 'requests' : 'sectors'} survive, some not (${kept} of ${units})`);
    if (policy === 'torn') t.ok(mixed > 0, `requests are torn (${mixed} of 32)`);
    else t.equal(mixed, 0, 'no request is torn');
  });
}

t.test('vblk serve memory:4M --filter power-cut: writes (one larger than max-dirty) read back before and after a flush, and flush and FUA are advertised', async (t) => {
  const served = await serve(t, ['memory:4M', '--filter', 'power-cut:policy=torn,seed=3,max-dirty=1M']);
  await qemuIo(served.uri(), ['write -P 9 0 2M', 'read -P 9 0 2M', 'flush', 'write -f -P 8 1M 4k', 'read -P 8 1M 4k', 'read -P 9 0 1M']);
  await qemuIo(served.uri(), ['read -P 9 0 1M', 'read -P 8 1M 4k']);
  const ready = served.logs().find((l) => l.msg === 'export ready');
  t.same(ready?.filters, ['power-cut'], 'the export has the filter');
  const info = await run('nbdinfo', ['--json', served.uri()]);
  t.match(JSON.parse(info.stdout), { exports: [{ can_flush: true, can_fua: true }] }, 'flush and FUA are advertised over a memory disk');
});
