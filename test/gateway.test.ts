// The Gateway in front of a small in-memory device: the checks it makes
// once for every front end (read-only, range, payload size), what it fills
// in for a device (zeroing by writing, contiguous reads, one extent),
// error translation, drain() and the order of overlapping writes.

import t from 'tap';
import { DeviceError } from '../src/device/errors.js';
import { Gateway } from '../src/device/gateway.js';
import { request, type BlockDevice, type Capabilities, type Extent, type ReadSegment, type Request } from '../src/device/types.js';

const SIZE = 1 << 20;
const MAX = 64 << 10;

interface Options {
  size?: number;
  caps?: Partial<Capabilities>;
  /** What read() returns instead of one data segment. */
  segments?: (req: Request) => ReadSegment[];
  extents?: (req: Request) => Extent[];
}

/** A device backed by a Buffer that logs every call and can be told to fail or stall. */
class MemDevice implements BlockDevice {
  readonly size: number;
  readonly capabilities: Capabilities;
  readonly description = 'memory';
  readonly data: Buffer;
  readonly log: string[] = [];
  /** Makes the next call of that name throw this. */
  failures = new Map<string, unknown>();
  /** Makes calls of that name wait for the returned promise first. */
  stalls = new Map<string, () => Promise<void>>();

  constructor(private readonly options: Options = {}) {
    this.size = options.size ?? SIZE;
    this.data = Buffer.alloc(this.size);
    this.capabilities = {
      readOnly: false,
      flush: true,
      trim: true,
      zero: true,
      fastZero: true,
      cache: true,
      extents: true,
      multiConn: true,
      blockSizes: { minimum: 1, preferred: 4096, maximum: MAX },
      ...options.caps,
    };
  }

  private async enter(name: string, detail: string): Promise<void> {
    this.log.push(`${name} ${detail}`.trim());
    const stall = this.stalls.get(name);
    if (stall) await stall();
    const failure = this.failures.get(name);
    if (failure !== undefined) {
      this.failures.delete(name);
      throw failure;
    }
  }

  async read(req: Request): Promise<ReadSegment[]> {
    await this.enter('read', `${req.offset}+${req.length}`);
    if (this.options.segments) return this.options.segments(req);
    return [{ offset: req.offset, length: req.length, data: Buffer.from(this.data.subarray(req.offset, req.offset + req.length)) }];
  }

  async write(req: Request): Promise<void> {
    await this.enter('write', `${req.offset}+${req.length}${req.fua ? ' fua' : ''}`);
    req.data!.copy(this.data, req.offset);
    this.log.push(`wrote ${req.offset}+${req.length}`);
  }

  async flush(): Promise<void> {
    await this.enter('flush', '');
  }

  async trim(req: Request): Promise<void> {
    await this.enter('trim', `${req.offset}+${req.length}`);
    this.data.fill(0, req.offset, req.offset + req.length);
  }

  async writeZeroes(req: Request): Promise<void> {
    await this.enter('writeZeroes', `${req.offset}+${req.length}`);
    this.data.fill(0, req.offset, req.offset + req.length);
  }

  async cache(req: Request): Promise<void> {
    await this.enter('cache', `${req.offset}+${req.length}`);
  }

  async blockStatus(req: Request): Promise<Extent[]> {
    await this.enter('blockStatus', `${req.offset}+${req.length}`);
    return this.options.extents ? this.options.extents(req) : [{ length: req.length, hole: false, zero: false }];
  }

  async close(): Promise<void> {}

  calls(name: string): string[] {
    return this.log.filter((l) => l === name || l.startsWith(`${name} `));
  }
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

const write = (offset: number, data: Buffer, extra: Partial<Request> = {}): Request =>
  request('write', offset, data.length, { data, ...extra });

t.test('writes on a read-only export are EPERM and never reach the device', async (t) => {
  const dev = new MemDevice({ caps: { readOnly: true } });
  const gw = new Gateway(dev);
  await t.rejects(gw.execute(write(0, Buffer.alloc(512))), { name: 'DeviceError', code: 'EPERM' }, 'write');
  await t.rejects(gw.execute(request('trim', 0, 512)), { code: 'EPERM' }, 'trim');
  await t.rejects(gw.execute(request('writeZeroes', 0, 512)), { code: 'EPERM' }, 'writeZeroes');
  await t.rejects(gw.execute(request('writeZeroes', 0, 0)), { code: 'EPERM' }, 'even of zero bytes');
  t.same(dev.log, [], 'device untouched');
  t.same(await gw.execute(request('read', 0, 16)), { op: 'read', segments: [{ offset: 0, length: 16, data: Buffer.alloc(16) }] }, 'reads work');
});

t.test('write and writeZeroes past the end are ENOSPC', async (t) => {
  const dev = new MemDevice();
  const gw = new Gateway(dev);
  await t.rejects(gw.execute(write(SIZE - 10, Buffer.alloc(20))), { code: 'ENOSPC' }, 'write straddling the end');
  await t.rejects(gw.execute(write(SIZE, Buffer.alloc(1))), { code: 'ENOSPC' }, 'write at the end');
  await t.rejects(gw.execute(write(SIZE + 4096, Buffer.alloc(0))), { code: 'ENOSPC' }, 'zero-length write beyond the end');
  await t.rejects(gw.execute(write(2 ** 64, Buffer.alloc(1))), { code: 'ENOSPC' }, 'write at 2^64');
  await t.rejects(gw.execute(request('writeZeroes', SIZE - 1, 2)), { code: 'ENOSPC' }, 'writeZeroes straddling the end');
  await t.rejects(gw.execute(request('writeZeroes', 2 ** 63, 1)), { code: 'ENOSPC' }, 'writeZeroes at 2^63');
  t.same(dev.log, []);
  t.same(await gw.execute(write(SIZE - 10, Buffer.alloc(10, 1))), { op: 'write' }, 'the last bytes are writable');
});

t.test('read, trim, cache and blockStatus past the end are EINVAL', async (t) => {
  const dev = new MemDevice();
  const gw = new Gateway(dev);
  for (const op of ['read', 'trim', 'cache', 'blockStatus'] as const) {
    await t.rejects(gw.execute(request(op, SIZE - 1, 2)), { code: 'EINVAL' }, `${op} straddling the end`);
    await t.rejects(gw.execute(request(op, SIZE + 1, 0)), { code: 'EINVAL' }, `${op} starting past the end`);
    await t.rejects(gw.execute(request(op, 2 ** 64, 1)), { code: 'EINVAL' }, `${op} at 2^64`);
    await t.rejects(gw.execute(request(op, 1, Number.MAX_SAFE_INTEGER)), { code: 'EINVAL' }, `${op} of 2^53-1 bytes`);
  }
  t.same(dev.log, []);
});

t.test('reads and writes over the maximum payload are EINVAL; trim and writeZeroes are not limited', async (t) => {
  const dev = new MemDevice();
  const gw = new Gateway(dev);
  await t.rejects(gw.execute(request('read', 0, MAX + 1)), { code: 'EINVAL' }, 'read');
  await t.rejects(gw.execute(write(0, Buffer.alloc(MAX + 1))), { code: 'EINVAL' }, 'write');
  t.same(dev.log, []);
  t.equal((await gw.execute(request('read', 0, MAX))).op, 'read', 'exactly the maximum is fine');
  t.same(await gw.execute(request('trim', 0, SIZE)), { op: 'trim' });
  t.same(await gw.execute(request('writeZeroes', 0, SIZE)), { op: 'writeZeroes' });
});

t.test('a write whose payload does not match its length is EINVAL', async (t) => {
  const gw = new Gateway(new MemDevice());
  await t.rejects(gw.execute(request('write', 0, 10, { data: Buffer.alloc(9) })), { code: 'EINVAL' });
  await t.rejects(gw.execute(request('write', 0, 10)), { code: 'EINVAL' }, 'no payload at all');
});

t.test('zero-length requests succeed without the device; block status of zero bytes is EINVAL', async (t) => {
  const dev = new MemDevice();
  const gw = new Gateway(dev);
  for (const offset of [0, 4096, SIZE]) {
    t.same(await gw.execute(request('read', offset, 0)), { op: 'read', segments: [] }, `read at ${offset}`);
    t.same(await gw.execute(write(offset, Buffer.alloc(0))), { op: 'write' }, `write at ${offset}`);
    t.same(await gw.execute(request('trim', offset, 0)), { op: 'trim' }, `trim at ${offset}`);
    t.same(await gw.execute(request('writeZeroes', offset, 0)), { op: 'writeZeroes' }, `writeZeroes at ${offset}`);
    t.same(await gw.execute(request('cache', offset, 0)), { op: 'cache' }, `cache at ${offset}`);
  }
  t.same(dev.log, [], 'nothing reached the device');
  // The protocol leaves this unspecified; an error (not a disconnect) is a fine answer.
  await t.rejects(gw.execute(request('blockStatus', 0, 0)), { code: 'EINVAL' });
});

t.test('flush reaches the device, except on a read-only export where it is a no-op', async (t) => {
  const rw = new MemDevice();
  t.same(await new Gateway(rw).execute(request('flush', 0, 0)), { op: 'flush' });
  t.same(rw.calls('flush'), ['flush']);
  const ro = new MemDevice({ caps: { readOnly: true } });
  ro.failures.set('flush', new Error('must not be called'));
  t.same(await new Gateway(ro).execute(request('flush', 0, 0)), { op: 'flush' });
  t.same(ro.log, [], 'device not called');
});

t.test('trim and cache the device cannot do succeed without it', async (t) => {
  const dev = new MemDevice({ caps: { trim: false, cache: false } });
  const gw = new Gateway(dev);
  t.same(await gw.execute(request('trim', 0, 4096)), { op: 'trim' });
  t.same(await gw.execute(request('cache', 0, 4096)), { op: 'cache' });
  t.same(dev.log, []);
});

t.test('writeZeroes falls back to writing zero buffers when the device cannot zero', async (t) => {
  const dev = new MemDevice({ caps: { zero: false, fastZero: false } });
  dev.data.fill(0xab);
  const gw = new Gateway(dev);
  const length = (2 << 20) + 4096 + 7; // more than two 1 MiB chunks
  const big = new MemDevice({ size: 4 << 20, caps: { zero: false, fastZero: false } });
  big.data.fill(0xab);
  t.same(await new Gateway(big).execute(request('writeZeroes', 1, length)), { op: 'writeZeroes' });
  t.ok(big.data.subarray(1, 1 + length).every((b) => b === 0), 'the range reads back as zeroes');
  t.equal(big.data[0], 0xab, 'the byte before is untouched');
  t.equal(big.data[1 + length], 0xab, 'the byte after is untouched');
  const writes = big.calls('write');
  t.ok(writes.length >= 3, `written in pieces (${writes.length})`);
  t.equal(big.calls('writeZeroes').length, 0, 'device writeZeroes never called');

  t.same(await gw.execute(request('writeZeroes', 100, 50, { fua: true })), { op: 'writeZeroes' });
  t.ok(dev.data.subarray(100, 150).every((b) => b === 0));
  t.equal(dev.data[99], 0xab);
  t.equal(dev.data[150], 0xab);
  t.same(dev.log.filter((l) => !l.startsWith('wrote')), ['write 100+50', 'flush'], 'one plain write then a flush for FUA');
});

t.test('writeZeroes falls back when the device says ENOTSUP', async (t) => {
  for (const failure of [new DeviceError('ENOTSUP', 'cannot'), Object.assign(new Error('nope'), { code: 'EOPNOTSUPP' })]) {
    const dev = new MemDevice();
    dev.data.fill(0xcd);
    dev.failures.set('writeZeroes', failure);
    const gw = new Gateway(dev);
    t.same(await gw.execute(request('writeZeroes', 10, 20)), { op: 'writeZeroes' });
    t.ok(dev.data.subarray(10, 30).every((b) => b === 0), 'zeroed by writing');
    t.same(dev.log.filter((l) => !l.startsWith('wrote')), ['writeZeroes 10+20', 'write 10+20']);
  }
  const other = new MemDevice();
  other.failures.set('writeZeroes', Object.assign(new Error('disk on fire'), { code: 'EIO' }));
  await t.rejects(new Gateway(other).execute(request('writeZeroes', 0, 10)), { code: 'EIO' }, 'other errors are not hidden by a fallback');
  t.equal(other.calls('write').length, 0);
});

t.test('fastZero gives ENOTSUP where zeroing would mean writing', async (t) => {
  const cannot = new MemDevice({ caps: { zero: false, fastZero: false } });
  await t.rejects(new Gateway(cannot).execute(request('writeZeroes', 0, 10, { fastZero: true })), { name: 'DeviceError', code: 'ENOTSUP' }, 'device without zero');
  t.same(cannot.log, [], 'nothing written');
  const says = new MemDevice();
  says.failures.set('writeZeroes', new DeviceError('ENOTSUP', 'not fast'));
  await t.rejects(new Gateway(says).execute(request('writeZeroes', 0, 10, { fastZero: true })), { name: 'DeviceError', code: 'ENOTSUP' }, 'device that says ENOTSUP');
  t.equal(says.calls('write').length, 0, 'no fallback');
  const fast = new MemDevice();
  t.same(await new Gateway(fast).execute(request('writeZeroes', 0, 10, { fastZero: true })), { op: 'writeZeroes' }, 'a device that can zero does it');
  t.same(fast.log, ['writeZeroes 0+10']);
});

t.test('df read of a device that returns holes comes back as one zero-filled buffer', async (t) => {
  const segments = (req: Request): ReadSegment[] => [
    { offset: req.offset, length: 4, data: Buffer.from([1, 2, 3, 4]) },
    { offset: req.offset + 4, length: 8, data: null },
    { offset: req.offset + 12, length: 4, data: Buffer.from([5, 6, 7, 8]) },
    { offset: req.offset + 16, length: 4, data: null },
  ];
  const gw = new Gateway(new MemDevice({ segments }));
  const df = await gw.execute(request('read', 1000, 20, { df: true }));
  t.same(df, {
    op: 'read',
    segments: [{ offset: 1000, length: 20, data: Buffer.from([1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 5, 6, 7, 8, 0, 0, 0, 0]) }],
  });
  const plain = await gw.execute(request('read', 1000, 20));
  t.same(plain, { op: 'read', segments: segments(request('read', 1000, 20)) }, 'without df the holes stay');
  const allHole = new Gateway(new MemDevice({ segments: (req) => [{ offset: req.offset, length: req.length, data: null }] }));
  t.same(await allHole.execute(request('read', 0, 8, { df: true })), { op: 'read', segments: [{ offset: 0, length: 8, data: Buffer.alloc(8) }] }, 'a single hole');
});

t.test('blockStatus: reqOne gives exactly one extent no longer than asked, and never none', async (t) => {
  const extents = (): Extent[] => [
    { length: 8192, hole: true, zero: true },
    { length: 4096, hole: false, zero: false },
  ];
  const gw = new Gateway(new MemDevice({ extents }));
  t.same(await gw.execute(request('blockStatus', 0, 4096, { reqOne: true })), { op: 'blockStatus', extents: [{ length: 4096, hole: true, zero: true }] }, 'clipped to the request');
  t.same(await gw.execute(request('blockStatus', 0, 65536, { reqOne: true })), { op: 'blockStatus', extents: [{ length: 8192, hole: true, zero: true }] }, 'only the first');
  t.same(await gw.execute(request('blockStatus', 0, 65536)), { op: 'blockStatus', extents: extents() }, 'all without reqOne');
  const none = new Gateway(new MemDevice({ extents: () => [] }));
  t.same(await none.execute(request('blockStatus', 512, 1024)), { op: 'blockStatus', extents: [{ length: 1024, hole: false, zero: false }] }, 'data when the device says nothing');
  t.same(await none.execute(request('blockStatus', 512, 1024, { reqOne: true })), { op: 'blockStatus', extents: [{ length: 1024, hole: false, zero: false }] });
});

t.test('errors from the device become DeviceErrors', async (t) => {
  const cases: [unknown, string][] = [
    [Object.assign(new Error('file too big'), { code: 'EFBIG' }), 'ENOSPC'],
    [Object.assign(new Error('quota'), { code: 'EDQUOT' }), 'ENOSPC'],
    [Object.assign(new Error('ro fs'), { code: 'EROFS' }), 'EPERM'],
    [Object.assign(new Error('odd'), { code: 'ESTRANGE' }), 'EIO'],
    [new Error('no code'), 'EIO'],
    ['a string', 'EIO'],
    [new DeviceError('EOVERFLOW', 'kept'), 'EOVERFLOW'],
  ];
  for (const [failure, code] of cases) {
    for (const op of ['read', 'write', 'flush', 'trim', 'cache', 'blockStatus'] as const) {
      const dev = new MemDevice();
      dev.failures.set(op, failure);
      const gw = new Gateway(dev);
      const req = op === 'write' ? write(0, Buffer.alloc(8)) : op === 'flush' ? request('flush', 0, 0) : request(op, 0, 8);
      const err = await gw.execute(req).then(
        () => null,
        (e: unknown) => e,
      );
      t.ok(err instanceof DeviceError, `${op}: ${String((failure as Error).message ?? failure)} is a DeviceError`);
      t.equal((err as DeviceError).code, code, `${op}: code ${code}`);
    }
  }
  const dev = new MemDevice({ caps: { zero: false } });
  dev.failures.set('write', Object.assign(new Error('big'), { code: 'EFBIG' }));
  await t.rejects(new Gateway(dev).execute(request('writeZeroes', 0, 10)), { name: 'DeviceError', code: 'ENOSPC' }, 'the writeZeroes fallback too');
});

t.test('drain() waits for running requests', async (t) => {
  const idle = new Gateway(new MemDevice());
  let drained = false;
  await idle.drain().then(() => (drained = true));
  t.ok(drained, 'resolves at once when idle');

  const dev = new MemDevice();
  const gate = deferred();
  dev.stalls.set('write', () => gate.promise);
  const gw = new Gateway(dev);
  const running = gw.execute(write(0, Buffer.alloc(8, 1)));
  const reading = gw.execute(request('read', 4096, 8));
  let done = false;
  const draining = gw.drain().then(() => (done = true));
  await settle();
  t.notOk(done, 'not while a write is stalled');
  gate.resolve();
  await running;
  await reading;
  await draining;
  t.ok(done, 'once it finishes');

  const failing = new MemDevice();
  failing.failures.set('read', new Error('boom'));
  const gw2 = new Gateway(failing);
  const failed = gw2.execute(request('read', 0, 8)).catch(() => 'failed');
  let done2 = false;
  const d2 = gw2.drain().then(() => (done2 = true));
  t.equal(await failed, 'failed');
  await d2;
  t.ok(done2, 'a failed request counts as finished');
  await gw2.execute(request('read', 100, 8));
  let again = false;
  await gw2.drain().then(() => (again = true));
  t.ok(again, 'drain works again afterwards');
});

t.test('overlapping writes reach the device in order even when the first is slow', async (t) => {
  const dev = new MemDevice();
  const gate = deferred();
  let first = true;
  dev.stalls.set('write', () => {
    if (!first) return Promise.resolve();
    first = false;
    return gate.promise;
  });
  const gw = new Gateway(dev);
  const a = gw.execute(write(0, Buffer.alloc(4096, 0xaa)));
  const b = gw.execute(write(2048, Buffer.alloc(4096, 0xbb)));
  const c = gw.execute(write(1 << 16, Buffer.alloc(16, 0xcc)));
  await settle();
  t.same(dev.log, ['write 0+4096', 'write 65536+16', 'wrote 65536+16'], 'the overlapping write waits, the other one runs');
  setTimeout(gate.resolve, 20);
  await Promise.all([a, b, c]);
  t.same(dev.log.slice(3), ['wrote 0+4096', 'write 2048+4096', 'wrote 2048+4096'], 'the second starts only after the first finished');
  t.equal(dev.data[0], 0xaa);
  t.equal(dev.data[2047], 0xaa);
  t.equal(dev.data[2048], 0xbb, 'the later write wins where they overlap');
  t.equal(dev.data[6143], 0xbb);

  // A read overlapping a slow write sees the write's data.
  const dev2 = new MemDevice();
  const gate2 = deferred();
  dev2.stalls.set('write', () => gate2.promise);
  const gw2 = new Gateway(dev2);
  const w = gw2.execute(write(0, Buffer.alloc(8, 7)));
  const r = gw2.execute(request('read', 4, 8));
  await settle();
  t.equal(dev2.calls('read').length, 0, 'the read waits');
  gate2.resolve();
  await w;
  const result = await r;
  t.same(result, { op: 'read', segments: [{ offset: 4, length: 8, data: Buffer.from([7, 7, 7, 7, 0, 0, 0, 0]) }] });
});

t.test('size and capabilities come from the device', async (t) => {
  const dev = new MemDevice({ size: 12345 });
  const gw = new Gateway(dev);
  t.equal(gw.size, 12345);
  t.equal(gw.capabilities, dev.capabilities);
  t.equal(gw.device, dev);
});

t.test('a read into buffers (guest memory): holes as zeroes, spread over the buffers in order', async (t) => {
  const dev = new MemDevice({
    segments: (req) => [
      { offset: req.offset, length: 3, data: Buffer.from([1, 2, 3]) },
      { offset: req.offset + 3, length: 4, data: null },
      { offset: req.offset + 7, length: 3, data: Buffer.from([8, 9, 10]) },
    ],
  });
  const gw = new Gateway(dev);
  const into = [Buffer.alloc(2, 0xff), Buffer.alloc(6, 0xff), Buffer.alloc(2, 0xff)];
  const result = await gw.execute(request('read', 100, 10, { into }));
  t.same(result, { op: 'read', segments: [] }, 'the data went into the buffers, not the result');
  t.same(Buffer.concat(into), Buffer.from([1, 2, 3, 0, 0, 0, 0, 8, 9, 10]));
  await t.rejects(gw.execute(request('read', 0, 10, { into: [Buffer.alloc(9)] })), { code: 'EINVAL' }, 'buffers must add up to the length');
});

t.test('a write from buffers is joined for a device that takes one, and checked for length', async (t) => {
  const dev = new MemDevice();
  const gw = new Gateway(dev);
  await gw.execute(request('write', 10, 5, { from: [Buffer.from([1, 2]), Buffer.from([3, 4, 5])] }));
  t.same(dev.data.subarray(10, 15), Buffer.from([1, 2, 3, 4, 5]));
  await t.rejects(gw.execute(request('write', 0, 5, { from: [Buffer.alloc(4)] })), { code: 'EINVAL' });
});

t.test('getId answers with the gateway id and touches no device', async (t) => {
  const dev = new MemDevice();
  const gw = new Gateway(dev, 'disk-7');
  t.same(await gw.execute(request('getId', 0, 0)), { op: 'getId', id: 'disk-7' });
  t.same(dev.log, []);
});

/** A MemDevice that can also answer reads at once (tryRead), as a raw image over the page cache does. */
class NowDevice extends MemDevice {
  /** What tryRead does: answer, say it would wait, or throw. */
  mode: 'answer' | 'wait' | 'throw' = 'answer';
  /** Answer with the data left in a file (as file segments), as large page-cache reads are. */
  inFile = false;

  tryRead(req: Request): ReadSegment[] | null {
    this.log.push(`tryRead ${req.offset}+${req.length}`);
    if (this.mode === 'throw') throw Object.assign(new Error('EIO now'), { code: 'EIO' });
    if (this.mode === 'wait') return null;
    if (this.inFile) return [{ offset: req.offset, length: req.length, data: null, file: { fd: 99, position: req.offset } }];
    return [{ offset: req.offset, length: req.length, data: Buffer.from(this.data.subarray(req.offset, req.offset + req.length)) }];
  }
}

t.test('tryExecute answers a read at once when nothing is in its way, and counts it', async (t) => {
  const dev = new NowDevice();
  dev.data.fill(5, 0, 16);
  const gw = new Gateway(dev);
  const result = gw.tryExecute(request('read', 8, 16));
  t.same(result, { op: 'read', segments: [{ offset: 8, length: 16, data: Buffer.from([5, 5, 5, 5, 5, 5, 5, 5, 0, 0, 0, 0, 0, 0, 0, 0]) }] });
  t.same(dev.log, ['tryRead 8+16'], 'without read()');
  const stats = gw.stats();
  t.equal(stats.requests.read, 1);
  t.equal(stats.bytesRead, 16);
  t.equal(stats.inFlight, 0, 'and it is over');
  t.same(gw.tryExecute(request('read', 8, 16, { df: true })), result, 'df: one data segment');
});

t.test('tryExecute leaves to execute what would wait or fail, and holds nothing when it does', async (t) => {
  t.equal(new Gateway(new MemDevice()).tryExecute(request('read', 0, 8)), null, 'a device without tryRead');
  const dev = new NowDevice();
  const gw = new Gateway(dev);
  t.equal(gw.tryExecute(write(0, Buffer.alloc(8))), null, 'a write');
  t.equal(gw.tryExecute(request('read', 0, 8, { into: [Buffer.alloc(8)] })), null, 'a read into buffers');
  t.equal(gw.tryExecute(request('read', SIZE - 4, 8)), null, 'a read past the end…');
  await t.rejects(gw.execute(request('read', SIZE - 4, 8)), { code: 'EINVAL' }, '…which execute() refuses');
  t.equal(gw.tryExecute(request('read', 0, MAX + 1)), null, 'a read over the maximum');
  t.equal(gw.tryExecute(request('read', 0, 0, { df: true })), null, 'a read of nothing…');
  t.same(await gw.execute(request('read', 0, 0, { df: true })), { op: 'read', segments: [] }, '…which execute() answers with no segment, df or not');
  dev.mode = 'wait';
  t.equal(gw.tryExecute(request('read', 0, 8)), null, 'a read the device cannot answer now');
  dev.mode = 'throw';
  t.equal(gw.tryExecute(request('read', 0, 8)), null, 'a read that failed now…');
  dev.failures.set('read', Object.assign(new Error('EIO later'), { code: 'EIO' }));
  await t.rejects(gw.execute(request('read', 0, 8)), { code: 'EIO', message: 'EIO later' }, '…is done (and failed) again by execute()');
  dev.mode = 'answer';
  await gw.execute(write(0, Buffer.alloc(8, 3)));
  t.same(dev.calls('wrote'), ['wrote 0+8'], 'the refused reads left no ticket behind to hold a write up');

  const paused = gw.pause();
  t.equal(gw.tryExecute(request('read', 0, 8)), null, 'a paused gateway');
  await paused;
  gw.resume();
  t.ok(gw.tryExecute(request('read', 0, 8)), 'resumed');
  await gw.retire();
  t.equal(gw.tryExecute(request('read', 0, 8)), null, 'a retired gateway…');
  await t.rejects(gw.execute(request('read', 0, 8)), { code: 'ESHUTDOWN' }, '…whose execute() says why');
});

t.test('tryExecute does not pass a running write it overlaps', async (t) => {
  const dev = new NowDevice();
  const gate = deferred();
  dev.stalls.set('write', () => gate.promise);
  const gw = new Gateway(dev);
  const w = gw.execute(write(0, Buffer.alloc(8, 7)));
  await settle();
  t.equal(gw.tryExecute(request('read', 4, 8)), null, 'an overlapping read is left to execute()');
  const r = gw.execute(request('read', 4, 8));
  t.ok(gw.tryExecute(request('read', 8, 8)), 'a read next to the write is answered');
  gate.resolve();
  await w;
  t.same(await r, { op: 'read', segments: [{ offset: 4, length: 8, data: Buffer.from([7, 7, 7, 7, 0, 0, 0, 0]) }] }, 'and the other sees the write');
});

t.test('a read answered from its file by tryExecute holds its range, and counts as running, until released', async (t) => {
  const dev = new NowDevice();
  dev.inFile = true;
  const gw = new Gateway(dev);
  const result = gw.tryExecute(request('read', 0, 4096, { sendFile: true }));
  if (result?.op !== 'read' || !result.release) {
    t.fail('expected a held read');
    return;
  }
  t.equal(gw.stats().inFlight, 1, 'running');
  let drained = false;
  const draining = gw.drain().then(() => (drained = true));
  const w = gw.execute(write(0, Buffer.alloc(8, 1)));
  await settle();
  t.notOk(drained, 'drain waits for it');
  t.same(dev.calls('write'), [], 'an overlapping write waits for it');
  result.release();
  result.release();
  await w;
  await draining;
  t.same(dev.calls('wrote'), ['wrote 0+8'], 'until it is released (twice is harmless)');
  t.equal(gw.stats().inFlight, 0);
});
