// libnbd (through nbdsh) against a running vblk: the exact errno of each
// refused request, zero-length reads, block status with and without
// REQ_ONE, structured reads with holes and with DF, trim and write
// zeroes, flush and FUA, and eight requests in flight at once.
//
// Each test runs one Python script that prints its findings as JSON; the
// assertions are made here. Requests libnbd would refuse on its own are
// sent with strict mode off, and every error is checked to have come from
// the server ('command failed'), not from a client-side check.
//
// Not covered here: an unknown command. libnbd 1.14 has no way to send
// one; the raw-socket tests (hostile-client.test.ts) cover it.

import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { serve, tempDir } from '../helpers/server.js';
import { run } from '../helpers/tools.js';
import { expectedLayout, makeSparse, mergeExtents, readRange, standardWrites, type Extent } from './sparse.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** Helpers every script starts with. */
const PRELUDE = `
import nbd, json, hashlib, base64, sys

def attempt(f):
    try:
        v = f()
        return {'ok': True, 'len': len(v) if isinstance(v, (bytes, bytearray)) else None}
    except nbd.Error as e:
        return {'ok': False, 'errno': e.errno, 'errnum': e.errnum, 'msg': e.string}

def connect(uri, strict=True):
    h = nbd.NBD()
    h.add_meta_context('base:allocation')
    if not strict:
        h.set_strict_mode(0)
    h.connect_uri(uri)
    return h

def sha(b):
    return hashlib.sha256(bytes(b)).hexdigest()

def b64(b):
    return base64.b64encode(bytes(b)).decode()

R = {}
`;

/** Runs SCRIPT in nbdsh with ARGS available as the dict A; returns what it put in R. */
async function py<T = Record<string, unknown>>(t: Test, script: string, args: Record<string, unknown>): Promise<T> {
  // The arguments go through a file: a command line cannot carry them all.
  const argsFile = path.join(tempDir(t, 'vblk-py-'), 'args.json');
  fs.writeFileSync(argsFile, JSON.stringify(args));
  const full = `${PRELUDE}\nA = json.load(open(${JSON.stringify(argsFile)}))\n${script}\nprint(json.dumps(R))\n`;
  const r = await run('nbdsh', ['-c', full], { timeoutMs: 40_000 });
  t.equal(r.code, 0, 'the nbdsh script runs to the end', { stdout: r.stdout.slice(-2000), stderr: r.stderr, signal: r.signal });
  const line = r.stdout.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line) as T;
  } catch {
    throw new Error(`nbdsh printed no JSON:\n${r.stdout}\n${r.stderr}`);
  }
}

interface Attempt {
  ok: boolean;
  len?: number | null;
  errno?: string;
  errnum?: number;
  msg?: string;
}

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

function emptyImage(file: string, size: number): string {
  fs.writeFileSync(file, '');
  fs.truncateSync(file, size);
  return file;
}

/** The server refused the request with ERRNO (not libnbd on its own). */
function refused(t: Test, a: Attempt | undefined, errno: string, what: string): void {
  t.ok(a, `${what}: result reported`);
  if (!a) return;
  t.equal(a.ok, false, `${what} fails`, { result: a });
  t.equal(a.errno, errno, `${what} -> ${errno}`, { result: a });
  t.match(a.msg ?? '', /command failed/, `${what}: the error came from the server`, { result: a });
}

t.test('errors: the exact errno for each refused request', async (t) => {
  const dir = tempDir(t);
  const size = 16 * MiB;
  const rw = emptyImage(path.join(dir, 'rw.img'), size);
  const ro = emptyImage(path.join(dir, 'ro.img'), 4 * MiB);
  const served = await serve(t, [rw, '--export', `ro=${ro}:ro`]);
  const R = await py<Record<string, Attempt | boolean | number>>(
    t,
    `
h = connect(A['rw'], strict=False)
S = h.get_size()
R['size'] = S
R['read_straddling_end'] = attempt(lambda: h.pread(4096, S - 2048))
R['read_beyond_end'] = attempt(lambda: h.pread(512, S + 4096))
R['write_straddling_end'] = attempt(lambda: h.pwrite(b'\\x11' * 4096, S - 2048))
R['write_beyond_end'] = attempt(lambda: h.pwrite(b'\\x11' * 512, S + 4096))
R['zero_beyond_end'] = attempt(lambda: h.zero(4096, S - 2048))
R['trim_beyond_end'] = attempt(lambda: h.trim(4096, S - 2048))
R['block_status_beyond_end'] = attempt(lambda: h.block_status(4096, S + 4096, lambda *a: 0))
R['still_usable'] = attempt(lambda: h.pread(512, 0))
R['fast_zero_rw_advertised'] = h.can_fast_zero()

g = connect(A['ro'], strict=False)
R['ro_read_only'] = g.is_read_only()
R['ro_fast_zero_advertised'] = g.can_fast_zero()
R['ro_write'] = attempt(lambda: g.pwrite(b'\\x22' * 512, 0))
R['ro_zero'] = attempt(lambda: g.zero(512, 0))
R['ro_trim'] = attempt(lambda: g.trim(512, 0))
R['ro_fast_zero'] = attempt(lambda: g.zero(512, 0, nbd.CMD_FLAG_FAST_ZERO))
R['ro_write_fua'] = attempt(lambda: g.pwrite(b'\\x22' * 512, 0, nbd.CMD_FLAG_FUA))
R['ro_still_usable'] = attempt(lambda: g.pread(512, 0))
`,
    { rw: served.uri(), ro: served.uri('ro') },
  );
  t.equal(R.size, size, 'the export has its size');
  refused(t, R.read_straddling_end as Attempt, 'EINVAL', 'read straddling the end');
  refused(t, R.read_beyond_end as Attempt, 'EINVAL', 'read past the end');
  refused(t, R.write_straddling_end as Attempt, 'ENOSPC', 'write straddling the end');
  refused(t, R.write_beyond_end as Attempt, 'ENOSPC', 'write past the end');
  refused(t, R.zero_beyond_end as Attempt, 'ENOSPC', 'write zeroes past the end');
  refused(t, R.trim_beyond_end as Attempt, 'EINVAL', 'trim past the end');
  refused(t, R.block_status_beyond_end as Attempt, 'EINVAL', 'block status past the end');
  t.same(R.still_usable, { ok: true, len: 512 }, 'the connection still works after the errors');
  t.equal(R.fast_zero_rw_advertised, true, 'the writable export advertises fast zero');

  t.equal(R.ro_read_only, true, "'ro' is read-only");
  t.equal(R.ro_fast_zero_advertised, false, "'ro' does not advertise fast zero");
  refused(t, R.ro_write as Attempt, 'EPERM', 'write to a read-only export');
  refused(t, R.ro_write_fua as Attempt, 'EPERM', 'FUA write to a read-only export');
  refused(t, R.ro_zero as Attempt, 'EPERM', 'write zeroes on a read-only export');
  refused(t, R.ro_trim as Attempt, 'EPERM', 'trim on a read-only export');
  refused(t, R.ro_fast_zero as Attempt, 'EINVAL', 'FAST_ZERO where fast zero is not advertised');
  t.same(R.ro_still_usable, { ok: true, len: 512 }, "the 'ro' connection still works");

  // Nothing reached either file.
  t.equal(readRange(ro, 0, 4096).findIndex((b) => b !== 0), -1, 'the read-only file is untouched');
  t.equal(readRange(rw, size - 4096, 4096).findIndex((b) => b !== 0), -1, 'no part of a refused write reached the file');
  t.equal(fs.statSync(rw).size, size, 'the file did not grow');
});

t.test('zero-length read succeeds and keeps the connection', async (t) => {
  const dir = tempDir(t);
  const size = 4 * MiB;
  const served = await serve(t, [emptyImage(path.join(dir, 'd.img'), size)]);
  const R = await py<Record<string, Attempt>>(
    t,
    `
h = connect(A['uri'], strict=False)
S = h.get_size()
R['at_start'] = attempt(lambda: h.pread(0, 0))
R['in_middle'] = attempt(lambda: h.pread(0, 12345))
R['at_end'] = attempt(lambda: h.pread(0, S))
R['after'] = attempt(lambda: h.pread(4096, 0))
`,
    { uri: served.uri() },
  );
  t.same(R.at_start, { ok: true, len: 0 }, 'zero-length read at 0 returns nothing, successfully');
  t.same(R.in_middle, { ok: true, len: 0 }, 'zero-length read at an unaligned offset succeeds');
  t.same(R.at_end, { ok: true, len: 0 }, 'zero-length read at the end of the export succeeds');
  t.same(R.after, { ok: true, len: 4096 }, 'a normal read afterwards works');
});

/** The expected extent that holds OFFSET. */
function extentAt(layout: Extent[], offset: number): Extent | undefined {
  return layout.find((e) => offset >= e.offset && offset < e.offset + e.length);
}

t.test('block status', async (t) => {
  const dir = tempDir(t);
  const size = 64 * MiB;
  const writes = standardWrites(size);
  const file = path.join(dir, 'sparse.img');
  makeSparse(file, size, writes);
  const layout = expectedLayout(size, writes);
  const served = await serve(t, [file]);

  // [offset, count] for REQ_ONE: inside long data and hole extents (the
  // reply must be cut to the request), across a data/hole boundary, an
  // unaligned start, and the very end.
  const queries: [number, number][] = [
    [0, size],
    [5 * MiB, 4096],
    [2 * MiB, 100],
    [1 * MiB + 4096 - 10, 4096],
    [5 * MiB + 123, 1 * MiB],
    [size - 8192, 8192],
    [size - 1, 1],
    [7 * MiB, 3 * MiB],
  ];
  const R = await py<{
    contexts: string[];
    req_one: { offset: number; count: number; calls: { ctx: string; offset: number; entries: number[] }[]; err?: Attempt }[];
    full: { offset: number; entries: number[] }[];
  }>(
    t,
    `
h = connect(A['uri'])
R['contexts'] = [c for c in ['base:allocation'] if h.can_meta_context(c)]
S = h.get_size()
R['req_one'] = []
for off, cnt in A['queries']:
    calls = []
    def cb(ctx, offset, entries, err):
        calls.append({'ctx': ctx, 'offset': offset, 'entries': list(entries)})
        return 0
    res = attempt(lambda: h.block_status(cnt, off, cb, nbd.CMD_FLAG_REQ_ONE))
    R['req_one'].append({'offset': off, 'count': cnt, 'calls': calls, 'err': res})
R['full'] = []
off = 0
while off < S:
    got = []
    def cb2(ctx, offset, entries, err):
        got.append(list(entries))
        return 0
    h.block_status(S - off, off, cb2)
    if len(got) != 1 or len(got[0]) == 0:
        R['full'].append({'offset': off, 'entries': [], 'bad': got})
        break
    R['full'].append({'offset': off, 'entries': got[0]})
    off += sum(got[0][0::2])
`,
    { uri: served.uri(), queries },
  );
  t.same(R.contexts, ['base:allocation'], 'base:allocation was negotiated');

  t.test('with REQ_ONE: exactly one extent, no longer than asked, and right', async (t) => {
    for (const q of R.req_one) {
      const what = `REQ_ONE at ${q.offset} for ${q.count}`;
      t.equal(q.err?.ok, true, `${what} succeeds`, { result: q.err });
      t.equal(q.calls.length, 1, `${what}: one context in the reply`);
      const call = q.calls[0];
      if (!call) continue;
      t.equal(call.ctx, 'base:allocation', `${what}: for base:allocation`);
      t.equal(call.entries.length, 2, `${what}: exactly one extent`, { entries: call.entries });
      const [length, flags] = call.entries;
      t.ok(length > 0 && length <= q.count, `${what}: length ${length} is in (0, ${q.count}]`);
      const truth = extentAt(layout, q.offset)!;
      t.equal(flags, truth.data ? 0 : 3, `${what}: flags ${flags} are ${truth.data ? 'data (0)' : 'hole|zero (3)'}`);
      t.ok(q.offset + length <= truth.offset + truth.length, `${what}: the extent does not run past the real one`);
    }
  });

  t.test('without REQ_ONE: the extents are the layout of the file', async (t) => {
    const extents: Extent[] = [];
    let pos = 0;
    for (const reply of R.full) {
      t.equal(reply.offset, pos, `reply for ${reply.offset} continues where the last one ended`);
      t.ok(reply.entries.length >= 2, `reply for ${reply.offset} has at least one extent`, { reply });
      for (let i = 0; i < reply.entries.length; i += 2) {
        const [length, flags] = [reply.entries[i], reply.entries[i + 1]];
        t.ok(length > 0, `no zero-length extent (at ${pos})`);
        t.ok(flags === 0 || flags === 3, `flags ${flags} at ${pos} are data (0) or hole|zero (3)`);
        extents.push({ offset: pos, length, data: flags === 0 });
        pos += length;
      }
    }
    t.equal(pos, size, 'the extents cover the export exactly');
    t.same(mergeExtents(extents), layout, 'and match the layout written');
  });
});

t.test('structured reads: holes as OFFSET_HOLE, data as OFFSET_DATA, DF gives one chunk', async (t) => {
  const dir = tempDir(t);
  const size = 16 * MiB;
  // Data at [0, 4K) and [1M, 1M+4K); holes at [4K, 1M) and [1M+4K, 2M).
  const writes = [
    { offset: 0, length: 4096 },
    { offset: 1 * MiB, length: 4096 },
  ];
  const file = path.join(dir, 'sparse.img');
  const content = makeSparse(file, size, writes);
  const layout = expectedLayout(size, writes);
  const served = await serve(t, [file]);
  const count = 2 * MiB;
  type Chunk = { offset: number; len: number; status: number; sha: string; zero: boolean };
  const R = await py<{ read_data: number; read_hole: number; plain: { chunks: Chunk[]; sha: string }; df: { chunks: Chunk[]; sha: string }; hole_only: { chunks: Chunk[]; sha: string } }>(
    t,
    `
h = connect(A['uri'])
R['read_data'] = nbd.READ_DATA
R['read_hole'] = nbd.READ_HOLE
def structured(count, offset, flags=0):
    chunks = []
    def cb(subbuf, off, status, err):
        b = bytes(subbuf)
        chunks.append({'offset': off, 'len': len(b), 'status': status, 'sha': sha(b), 'zero': b.count(0) == len(b)})
        return 0
    buf = h.pread_structured(count, offset, cb, flags)
    return {'chunks': chunks, 'sha': sha(buf)}
R['plain'] = structured(A['count'], 0)
R['df'] = structured(A['count'], 0, nbd.CMD_FLAG_DF)
R['hole_only'] = structured(64 * 1024, 512 * 1024)
`,
    { uri: served.uri(), count },
  );
  const DATA = R.read_data;
  const HOLE = R.read_hole;
  t.equal(DATA, 1, 'READ_DATA is 1');
  t.equal(HOLE, 2, 'READ_HOLE is 2');
  const want = content.subarray(0, count);

  // Without DF: chunks tile the request, data is right, holes are holes.
  const chunks = [...R.plain.chunks].sort((a, b) => a.offset - b.offset);
  let pos = 0;
  for (const c of chunks) {
    t.equal(c.offset, pos, `chunk at ${c.offset} starts where the last ended (no gap, no overlap)`);
    t.ok(c.status === DATA || c.status === HOLE, `chunk at ${c.offset} is data or hole`);
    if (c.status === HOLE) {
      const truth = extentAt(layout, c.offset)!;
      t.notOk(truth.data, `hole chunk at ${c.offset} lies in a hole`);
      t.ok(c.offset + c.len <= truth.offset + truth.length, `hole chunk at ${c.offset}+${c.len} stays inside the hole`);
    } else {
      t.equal(c.sha, sha256(content.subarray(c.offset, c.offset + c.len)), `data chunk at ${c.offset}+${c.len} holds the file's bytes`);
    }
    pos += c.len;
  }
  t.equal(pos, count, 'the chunks cover the request');
  t.equal(R.plain.sha, sha256(want), 'the assembled buffer is the file content');
  for (const e of layout.filter((x) => x.offset < count)) {
    const inRange = (c: Chunk): boolean => c.offset >= e.offset && c.offset < e.offset + e.length;
    if (e.data) {
      t.ok(chunks.filter(inRange).every((c) => c.status === DATA) && chunks.some(inRange), `data at ${e.offset} comes as READ_DATA`);
    } else {
      t.ok(chunks.some((c) => inRange(c) && c.status === HOLE), `the hole at ${e.offset} (length ${e.length}) gets a READ_HOLE chunk`, { chunks });
    }
  }

  // A read entirely inside a hole.
  t.ok(R.hole_only.chunks.some((c) => c.status === HOLE), 'a read inside a hole gets a READ_HOLE chunk', { chunks: R.hole_only.chunks });
  t.ok(R.hole_only.chunks.every((c) => c.zero), 'and reads as zeroes');

  // With DF: exactly one READ_DATA chunk for the whole range.
  t.equal(R.df.chunks.length, 1, 'with DF, exactly one chunk', { chunks: R.df.chunks });
  t.same(
    R.df.chunks.map((c) => [c.offset, c.len, c.status]),
    [[0, count, DATA]],
    'with DF, the chunk is READ_DATA covering the whole request',
  );
  t.equal(R.df.sha, sha256(want), 'with DF, the content is the file content');
});

t.test('trim and write zeroes read back as zeroes; flush and FUA writes succeed', async (t) => {
  const dir = tempDir(t);
  const size = 16 * MiB;
  const file = emptyImage(path.join(dir, 'd.img'), size);
  const served = await serve(t, [file]);
  const base = 1 * MiB;
  const len = 256 * KiB;
  const R = await py<Record<string, Attempt | string>>(
    t,
    `
h = connect(A['uri'])
base, n = A['base'], A['len']
R['write'] = attempt(lambda: h.pwrite(b'\\xa5' * n, base))
R['trim'] = attempt(lambda: h.trim(64 * 1024, base + 64 * 1024))
R['zero'] = attempt(lambda: h.zero(32 * 1024, base + 160 * 1024))
R['zero_unaligned'] = attempt(lambda: h.zero(1000, base + 200 * 1024 + 5))
R['zero_no_hole'] = attempt(lambda: h.zero(4096, base + 220 * 1024, nbd.CMD_FLAG_NO_HOLE))
R['zero_fua'] = attempt(lambda: h.zero(4096, base + 240 * 1024, nbd.CMD_FLAG_FUA))
R['readback'] = b64(h.pread(n, base))
R['fast_zero'] = attempt(lambda: h.zero(8192, base + 8192, nbd.CMD_FLAG_FAST_ZERO))
R['after_fast_zero'] = b64(h.pread(8192, base + 8192))
R['fua_write'] = attempt(lambda: h.pwrite(b'\\x3c' * 65536, 4 * 1024 * 1024, nbd.CMD_FLAG_FUA))
R['fua_write_unaligned'] = attempt(lambda: h.pwrite(b'\\x3d' * 777, 5 * 1024 * 1024 + 3, nbd.CMD_FLAG_FUA))
R['plain_write'] = attempt(lambda: h.pwrite(b'\\x3e' * 4096, 6 * 1024 * 1024))
R['flush'] = attempt(lambda: h.flush())
R['trim_fua'] = attempt(lambda: h.trim(4096, 7 * 1024 * 1024, nbd.CMD_FLAG_FUA))
# FUA is advertised, so the server must accept it on every command; libnbd
# only sends it on flush and read with strict mode off.
g = connect(A['uri'], strict=False)
R['flush_fua'] = attempt(lambda: g.flush(nbd.CMD_FLAG_FUA))
R['read_fua'] = attempt(lambda: g.pread(4096, 6 * 1024 * 1024, nbd.CMD_FLAG_FUA))
R['can_fua'] = h.can_fua()
R['can_flush'] = h.can_flush()
`,
    { uri: served.uri(), base, len },
  );
  const ok = { ok: true, len: null };
  t.same(R.write, ok, 'pattern write');
  t.same(R.trim, ok, 'trim succeeds');
  t.same(R.zero, ok, 'write zeroes succeeds');
  t.same(R.zero_unaligned, ok, 'unaligned write zeroes succeeds');
  t.same(R.zero_no_hole, ok, 'write zeroes with NO_HOLE succeeds');
  t.same(R.zero_fua, ok, 'write zeroes with FUA succeeds');
  const expected = Buffer.alloc(len, 0xa5);
  expected.fill(0, 64 * KiB, 128 * KiB);
  expected.fill(0, 160 * KiB, 192 * KiB);
  expected.fill(0, 200 * KiB + 5, 200 * KiB + 1005);
  expected.fill(0, 220 * KiB, 224 * KiB);
  expected.fill(0, 240 * KiB, 244 * KiB);
  const readback = Buffer.from(R.readback as string, 'base64');
  const firstBad = (a: Buffer, b: Buffer): number => a.findIndex((x, i) => x !== b[i]);
  t.equal(firstBad(readback, expected), -1, 'trimmed and zeroed ranges read back as zeroes through the server, the rest as written');
  t.equal(readback.length, len, 'whole range read');

  // FAST_ZERO is advertised; the server may still say it cannot be fast (ENOTSUP).
  const fz = R.fast_zero as Attempt;
  t.ok(fz.ok || fz.errno === 'ENOTSUP', 'FAST_ZERO on a writable export succeeds or fails with ENOTSUP', { result: fz });
  if (fz.ok) t.equal(Buffer.from(R.after_fast_zero as string, 'base64').findIndex((b) => b !== 0), -1, 'and the range reads as zeroes');
  else t.equal(Buffer.from(R.after_fast_zero as string, 'base64').findIndex((b) => b !== 0xa5), -1, 'a refused fast zero changed nothing');
  if (fz.ok) expected.fill(0, 8192, 16384);

  t.equal(R.can_fua, true, 'FUA is advertised');
  t.equal(R.can_flush, true, 'flush is advertised');
  t.same(R.fua_write, ok, 'FUA write succeeds');
  t.same(R.fua_write_unaligned, ok, 'unaligned FUA write succeeds');
  t.same(R.plain_write, ok, 'plain write succeeds');
  t.same(R.flush, ok, 'flush succeeds');
  t.same(R.trim_fua, ok, 'trim with FUA succeeds');
  t.same(R.flush_fua, ok, 'flush with FUA succeeds (FUA is advertised, so every command accepts it)');
  t.same(R.read_fua, { ok: true, len: 4096 }, 'read with FUA succeeds');

  // The backing file agrees.
  t.equal(firstBad(readRange(file, base, len), expected), -1, 'the backing file holds the zeroed ranges and the data');
  t.equal(readRange(file, 4 * MiB, 65536).findIndex((b) => b !== 0x3c), -1, 'FUA write is in the file');
  t.equal(readRange(file, 5 * MiB + 3, 777).findIndex((b) => b !== 0x3d), -1, 'unaligned FUA write is in the file');
  t.equal(readRange(file, 5 * MiB + 2, 1)[0], 0, 'byte before the unaligned FUA write untouched');
  t.equal(readRange(file, 5 * MiB + 780, 1)[0], 0, 'byte after the unaligned FUA write untouched');
  t.equal(readRange(file, 6 * MiB, 4096).findIndex((b) => b !== 0x3e), -1, 'flushed write is in the file');
});

t.test('8 requests in flight at once complete with the right data', async (t) => {
  const dir = tempDir(t);
  const size = 16 * MiB;
  const file = emptyImage(path.join(dir, 'd.img'), size);
  const served = await serve(t, [file]);
  const n = 64 * KiB;
  // Random contents chosen here, so the check does not trust the script.
  const writes = Array.from({ length: 8 }, (_, i) => ({ offset: 1 * MiB + i * 192 * KiB + (i % 3) * 513, data: randomBytes(n) }));
  const mixed = Array.from({ length: 4 }, (_, i) => ({ offset: 8 * MiB + i * 100 * KiB + 7, data: randomBytes(n) }));
  const R = await py<{
    writes_in_flight: number;
    writes_done: boolean[];
    reads_in_flight: number;
    reads: string[];
    mixed_in_flight: number;
    mixed_done: boolean[];
    mixed_reads: string[];
  }>(
    t,
    `
h = connect(A['uri'])
def wait_all(cookies):
    while h.aio_in_flight() > 0:
        h.poll(-1)
    return [bool(h.aio_command_completed(c)) for c in cookies]

W = [(w['offset'], base64.b64decode(w['data'])) for w in A['writes']]
cookies = [h.aio_pwrite(data, off) for off, data in W]
R['writes_in_flight'] = h.aio_in_flight()
R['writes_done'] = wait_all(cookies)

bufs = [nbd.Buffer(len(data)) for off, data in W]
cookies = [h.aio_pread(b, off) for b, (off, data) in zip(bufs, W)]
R['reads_in_flight'] = h.aio_in_flight()
wait_all(cookies)
R['reads'] = [b64(b.to_bytearray()) for b in bufs]

# Four new writes and four reads of the first batch, all at once.
M = [(w['offset'], base64.b64decode(w['data'])) for w in A['mixed']]
rbufs = [nbd.Buffer(len(data)) for off, data in W[:4]]
cookies = []
for i in range(4):
    cookies.append(h.aio_pwrite(M[i][1], M[i][0]))
    cookies.append(h.aio_pread(rbufs[i], W[i][0]))
R['mixed_in_flight'] = h.aio_in_flight()
R['mixed_done'] = wait_all(cookies)
R['mixed_reads'] = [b64(b.to_bytearray()) for b in rbufs]
`,
    {
      uri: served.uri(),
      writes: writes.map((w) => ({ offset: w.offset, data: w.data.toString('base64') })),
      mixed: mixed.map((w) => ({ offset: w.offset, data: w.data.toString('base64') })),
    },
  );
  t.equal(R.writes_in_flight, 8, '8 writes in flight at once');
  t.same(R.writes_done, Array(8).fill(true), 'all 8 writes complete');
  t.equal(R.reads_in_flight, 8, '8 reads in flight at once');
  R.reads.forEach((b64, i) => t.ok(Buffer.from(b64, 'base64').equals(writes[i].data), `read ${i} returns write ${i}'s data`));
  t.equal(R.mixed_in_flight, 8, '4 writes and 4 reads in flight at once');
  t.same(R.mixed_done, Array(8).fill(true), 'all 8 complete');
  R.mixed_reads.forEach((b64, i) => t.ok(Buffer.from(b64, 'base64').equals(writes[i].data), `mixed read ${i} returns the data`));
  for (const [i, w] of [...writes, ...mixed].entries()) {
    t.ok(readRange(file, w.offset, n).equals(w.data), `write ${i} at ${w.offset} is in the file`);
  }
});
