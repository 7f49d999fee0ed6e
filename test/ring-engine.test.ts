// RingEngine against a scripted ring, for what a real kernel rarely does
// on demand: short transfers, EAGAIN, a full submission queue, more
// operations than slots, failures inside a batch, and closing with
// operations still in flight; and which operations are tried inline,
// which go through the ring and which are handed to a worker.

import t from 'tap';
import type { IoOp } from '../src/io/engine.js';
import type { NativeRing } from '../src/io/native.js';
import { RingEngine, WORKER_SIZE } from '../src/io/ring-engine.js';

interface Prepared {
  op: number;
  fd: number;
  buffer: Buffer | null;
  position: number;
  id: number;
  worker: boolean;
}

/** A ring whose kernel is the test: it decides what completes, and how. */
class ScriptedRing implements NativeRing {
  static last: ScriptedRing;
  static probe(): null {
    return null;
  }
  prepared: Prepared[] = [];
  submitted: Prepared[] = [];
  queueRoom = Infinity;
  closed = false;
  cached: ((fd: number, buffer: Buffer, position: number) => number) | null = null;
  /** The non-blocking and plain page-cache writes asked for, and what each returns. */
  writes: { position: number; nowait: boolean }[] = [];
  writeResult: (position: number, nowait: boolean) => number = () => -95;

  constructor(
    readonly slots: number,
    private readonly completions: Int32Array,
    private readonly onComplete: (count: number) => void,
  ) {
    ScriptedRing.last = this;
  }

  prep(op: number, fd: number, buffer: Buffer | null, position: number, id: number, worker = false): boolean {
    if (this.prepared.length >= this.queueRoom) return false;
    this.prepared.push({ op, fd, buffer, position, id, worker });
    return true;
  }

  submit(): number {
    const n = this.prepared.length;
    this.submitted.push(...this.prepared);
    this.prepared = [];
    return n;
  }

  close(): void {
    this.closed = true;
  }

  get tryRead(): ((fd: number, buffer: Buffer, position: number) => number) | undefined {
    return this.cached ?? undefined;
  }

  tryWrite(_fd: number, _buffer: Buffer, position: number, nowait: boolean): number {
    this.writes.push({ position, nowait });
    return this.writeResult(position, nowait);
  }

  /** Completes submitted operations: `result` per id (a function may also fill buffers). */
  complete(results: [number, number][]): void {
    results.forEach(([id, result], i) => {
      this.completions[2 * i] = id;
      this.completions[2 * i + 1] = result;
      const k = this.submitted.findIndex((p) => p.id === id);
      this.submitted.splice(k, 1);
    });
    this.onComplete(results.length);
  }
}

function engine(slots = 4): { engine: RingEngine; ring: () => ScriptedRing } {
  const e = new RingEngine('uring', ScriptedRing as never, slots);
  return { engine: e, ring: () => ScriptedRing.last };
}

const read = (buffer: Buffer, position = 0): IoOp => ({ kind: 'read', fd: 3, buffer, position });
const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

t.test('a short read goes back into the ring for the rest', async (t) => {
  const { engine: e, ring } = engine();
  const buffer = Buffer.alloc(4096);
  let settled = false;
  const p = e.submit([read(buffer, 8192)]).then(() => (settled = true));
  const first = ring().submitted[0];
  t.same([first.op, first.position, first.buffer!.length], [0, 8192, 4096]);
  ring().complete([[first.id, 1000]]);
  await tick();
  t.notOk(settled, 'not done after 1000 of 4096 bytes');
  const rest = ring().submitted[0];
  t.same([rest.position, rest.buffer!.length], [9192, 3096], 'the remainder, at the right place');
  t.ok(rest.buffer!.buffer === buffer.buffer && rest.buffer!.byteOffset === buffer.byteOffset + 1000, 'into the same memory');
  ring().complete([[rest.id, 3096]]);
  await p;
  t.ok(settled);
});

t.test('EAGAIN and EINTR are retried; a read hitting end of file is EIO', async (t) => {
  const { engine: e, ring } = engine();
  const p = e.submit([read(Buffer.alloc(512))]);
  // Retries are submitted on the next tick, together with anything else waiting.
  ring().complete([[ring().submitted[0].id, -11]]);
  await tick();
  ring().complete([[ring().submitted[0].id, -4]]);
  await tick();
  ring().complete([[ring().submitted[0].id, 512]]);
  await p;
  t.pass('done after EAGAIN and EINTR');
  const eof = e.submit([read(Buffer.alloc(512), 1 << 20)]);
  ring().complete([[ring().submitted[0].id, 0]]);
  await t.rejects(eof, { code: 'EIO' });
});

t.test('a full submission queue is flushed, then the rest waits for room', async (t) => {
  const { engine: e, ring } = engine(8);
  ring().queueRoom = 2;
  const ops = Array.from({ length: 5 }, (_, i) => read(Buffer.alloc(512), i * 512));
  const p = e.submit(ops);
  t.equal(ring().submitted.length + ring().prepared.length, 5, 'every operation reached the ring, flushing when it was full');
  ring().complete(ring().submitted.map((s) => [s.id, 512] as [number, number]));
  await p;
  t.equal(e.pending, 0);
});

t.test('more operations than slots wait in a backlog, in order', async (t) => {
  const { engine: e, ring } = engine(2);
  const ops = Array.from({ length: 5 }, (_, i) => read(Buffer.alloc(512), i * 512));
  let done = false;
  const p = e.submit(ops).then(() => (done = true));
  t.equal(ring().submitted.length, 2, 'two in the ring');
  t.equal(e.pending, 5, 'five pending');
  const seen: number[] = [];
  while (ring().submitted.length > 0) {
    const batch = [...ring().submitted];
    seen.push(...batch.map((s) => s.position));
    ring().complete(batch.map((s) => [s.id, 512] as [number, number]));
    await tick();
  }
  await p;
  t.ok(done);
  t.same(seen, [0, 512, 1024, 1536, 2048], 'all five, in submission order');
  t.equal(e.pending, 0, 'nothing left');
});

t.test('a failure rejects the batch only after every operation has finished', async (t) => {
  const { engine: e, ring } = engine();
  let settled = false;
  const p = e.submit([read(Buffer.alloc(512)), read(Buffer.alloc(512), 512)]);
  void p.catch(() => (settled = true));
  const [a, b] = ring().submitted;
  ring().complete([[a.id, -9]]);
  await tick();
  t.notOk(settled, 'still waiting for the other operation, whose buffer the kernel holds');
  ring().complete([[b.id, 512]]);
  await t.rejects(p, { code: 'EBADF' });
});

t.test('close waits for operations in flight before closing the ring', async (t) => {
  const { engine: e, ring } = engine();
  const p = e.submit([{ kind: 'sync', fd: 3, dataOnly: true }]);
  t.equal(ring().submitted[0].op, 2, 'fdatasync');
  e.close();
  t.notOk(ring().closed, 'not closed while the sync is in flight');
  await t.rejects(e.submit([read(Buffer.alloc(1))]), { code: 'EBADF' }, 'new work is refused');
  ring().complete([[ring().submitted[0].id, 0]]);
  await p;
  t.ok(ring().closed, 'closed once it finished');
});

t.test('page-cache hits never reach the ring; partial hits and misses do', async (t) => {
  const { engine: e, ring } = engine();
  const hits = new Map([[0, 4096], [4096, 1000], [8192, -11], [12288, -9]]);
  ring().cached = (_fd, _buffer, position) => hits.get(position)!;
  await e.submit([read(Buffer.alloc(4096), 0)]);
  t.equal(ring().submitted.length, 0, 'a full hit is done at once');
  const partial = e.submit([read(Buffer.alloc(4096), 4096), read(Buffer.alloc(4096), 8192)]);
  t.same(
    ring().submitted.map((s) => [s.position, s.buffer!.length]),
    [[5096, 3096], [8192, 4096]],
    'the part not cached, and the miss',
  );
  ring().complete(ring().submitted.map((s) => [s.id, s.buffer!.length] as [number, number]));
  await partial;
  await t.rejects(e.submit([read(Buffer.alloc(4096), 12288)]), { code: 'EBADF' }, 'an error from the non-blocking read');
  t.same(await e.submit([]), undefined, 'an empty batch resolves');
});

t.test('a file system without non-blocking reads (tmpfs, FUSE): EOPNOTSUPP sends reads on that descriptor through the ring', async (t) => {
  const { engine: e, ring } = engine();
  const tried: number[] = [];
  ring().cached = (fd) => {
    tried.push(fd);
    return fd === 3 ? -95 : 4096;
  };
  const first = e.submit([read(Buffer.alloc(4096), 0)]);
  t.same(ring().submitted.map((s) => [s.op, s.fd, s.position, s.buffer!.length]), [[0, 3, 0, 4096]], 'the read went through the ring');
  ring().complete([[ring().submitted[0].id, 4096]]);
  await first;
  const second = e.submit([read(Buffer.alloc(4096), 4096)]);
  ring().complete([[ring().submitted[0].id, 4096]]);
  await second;
  await e.submit([{ kind: 'read', fd: 4, buffer: Buffer.alloc(4096), position: 0 }]);
  t.same(tried, [3, 4], 'descriptor 3 is not tried again; another descriptor still is');
  t.equal(e.pending, 0);
});

t.test('buffered writes go to the page cache at once; FUA and direct writes go through the ring', async (t) => {
  const { engine: e, ring } = engine();
  const write = (position: number, buffered: boolean): IoOp => ({ kind: 'write', fd: 3, buffer: Buffer.alloc(4096), position, buffered });
  // A file system without non-blocking buffered writes (ext4): EOPNOTSUPP once, then plain writes.
  ring().writeResult = (_position, nowait) => (nowait ? -95 : 4096);
  await e.submit([write(0, true)]);
  await e.submit([write(4096, true)]);
  t.same(ring().writes, [{ position: 0, nowait: true }, { position: 0, nowait: false }, { position: 4096, nowait: false }], 'RWF_NOWAIT is tried until the file system says EOPNOTSUPP');
  t.equal(ring().submitted.length, 0, 'nothing went through the ring');

  const fua = e.submit([write(8192, false)]);
  t.same(ring().submitted.map((s) => [s.op, s.position]), [[1, 8192]], 'a write that waits for the device goes through the ring');
  t.equal(ring().writes.length, 3, 'and is never tried inline');
  ring().complete([[ring().submitted[0].id, 4096]]);
  await fua;

  // Where RWF_NOWAIT works, a write that would block (EAGAIN) goes through the ring; a short one finishes there.
  const { engine: e2, ring: ring2 } = engine();
  ring2().writeResult = (position) => (position === 0 ? -11 : 1000);
  const both = e2.submit([write(0, true), write(4096, true)]);
  t.same(ring2().submitted.map((s) => [s.position, s.buffer!.length]), [[0, 4096], [5096, 3096]], 'EAGAIN and the rest of a short write');
  ring2().complete(ring2().submitted.map((s) => [s.id, s.buffer!.length] as [number, number]));
  await both;
  ring2().writeResult = () => -28;
  await t.rejects(e2.submit([write(0, true)]), { code: 'ENOSPC' }, 'an error from the inline write');
});

t.test('large page-cache transfers go to a worker; large direct ones and small ones do not', async (t) => {
  const { engine: e, ring } = engine(8);
  ring().cached = (_fd, buffer) => buffer.length;
  ring().writeResult = () => 4096;
  const big = (): Buffer => Buffer.alloc(WORKER_SIZE);
  const ops: IoOp[] = [
    { kind: 'read', fd: 3, buffer: big(), position: 0 },
    { kind: 'write', fd: 3, buffer: big(), position: 0, buffered: true },
    { kind: 'read', fd: 3, buffer: big(), position: 0, uncached: true },
    { kind: 'write', fd: 3, buffer: big(), position: 0 },
    { kind: 'read', fd: 3, buffer: Buffer.alloc(WORKER_SIZE - 4096), position: 0 },
    { kind: 'write', fd: 3, buffer: Buffer.alloc(4096), position: 0, buffered: true },
  ];
  const done = e.submit(ops);
  t.same(
    ring().submitted.map((s) => [s.op, s.buffer!.length, s.worker]),
    [[0, WORKER_SIZE, true], [1, WORKER_SIZE, true], [0, WORKER_SIZE, false], [1, WORKER_SIZE, false]],
    'the two large page-cache transfers go to a worker, the direct ones through the ring as usual',
  );
  t.same(ring().writes.length, 1, 'the small write was done inline, the small read was a page-cache hit');
  ring().complete(ring().submitted.map((s) => [s.id, s.buffer!.length] as [number, number]));
  await done;
});
