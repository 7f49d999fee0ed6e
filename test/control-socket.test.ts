// vblk serve --control and vblk ctl: every command answers with a result
// or a clear error, checked against what real clients see (qemu-io,
// nbdinfo, qemu-img); unknown commands, bad arguments, malformed
// MessagePack, oversized frames, floods and clients that leave mid-frame
// get errors and the server lives; a fast-check run throws random
// requests and random bytes at it and then checks it still serves.

import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import fc from 'fast-check';
import { Packr } from 'msgpackr';
import t from 'tap';
import { controlRequest } from '../src/cli/ctl.js';
import { decodeValue, encodeFrame, FrameReader, MAX_FRAME, parseResponse, type ControlResponse } from '../src/protocol/control/codec.js';
import { serve, tempDir, vblk, type Served, type Teardown } from './helpers/server.js';
import { run } from './helpers/tools.js';

const MiB = 1 << 20;
const plain = new Packr({ useRecords: false });

async function served(t: Teardown, args: string[]): Promise<{ s: Served; ctl: string }> {
  const dir = tempDir(t, 'vblk-ctl-');
  const ctl = path.join(dir, 'ctl.sock');
  const s = await serve(t, [...args, '--control', ctl]);
  return { s, ctl };
}

async function ok(ctl: string, command: string, args: Record<string, unknown> = {}): Promise<unknown> {
  const r = await controlRequest(ctl, command, args);
  if (!r.ok) throw new Error(`${command}: ${r.error.code}: ${r.error.message}`);
  return r.result;
}

async function fails(ctl: string, command: string, args: Record<string, unknown> = {}): Promise<{ code: string; message: string }> {
  const r = await controlRequest(ctl, command, args);
  if (r.ok) throw new Error(`${command} should have failed, answered ${JSON.stringify(r.result)}`);
  return r.error;
}

/** Sends raw bytes on a fresh connection; resolves to the responses read until the server closes or `expect` have come. */
function rawExchange(ctl: string, bytes: Buffer[], expect: number): Promise<{ responses: ControlResponse[]; closedByServer: boolean }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(ctl);
    const reader = new FrameReader();
    const responses: ControlResponse[] = [];
    let done = false;
    const finish = (closedByServer: boolean): void => {
      if (done) return;
      done = true;
      socket.destroy();
      resolve({ responses, closedByServer });
    };
    socket.on('connect', () => bytes.forEach((b) => socket.write(b)));
    socket.on('data', (chunk) => {
      for (const f of reader.push(chunk)) responses.push(parseResponse(decodeValue(f)));
      if (responses.length >= expect) finish(false);
    });
    socket.on('end', () => finish(true));
    socket.on('error', (err) => (done ? undefined : reject(err)));
  });
}

async function qemuIo(uri: string, ...commands: string[]): Promise<string> {
  return qemuIoWith([], uri, ...commands);
}

async function qemuIoWith(flags: string[], uri: string, ...commands: string[]): Promise<string> {
  const r = await run('qemu-io', ['-f', 'raw', ...flags, ...commands.flatMap((c) => ['-c', c]), uri]);
  return r.stdout + r.stderr;
}

t.test('the socket is mode 0600 and is removed at shutdown, which the shutdown command starts', async (t) => {
  const { s, ctl } = await served(t, ['memory:8M']);
  t.equal(fs.statSync(ctl).mode & 0o777, 0o600);
  t.same(await ok(ctl, 'shutdown'), { shuttingDown: true });
  t.same(await s.exited, { code: 0, signal: null }, 'vblk exits 0 as on SIGTERM');
  t.notOk(fs.existsSync(ctl), 'control socket removed');
  t.notOk(fs.existsSync(s.socket), 'NBD socket removed');
});

t.test('exports, stats, help; export add and remove', async (t) => {
  const dir = tempDir(t);
  const img = path.join(dir, 'disk.img');
  await run('qemu-img', ['create', '-f', 'raw', img, '16M']);
  const { s, ctl } = await served(t, ['memory:8M', '--export', `disk=${img}`, '--filter', 'error:op=write,error-rate=0']);
  const exports = (await ok(ctl, 'exports')) as { name: string; size: number; file: string | null; filters: unknown[] }[];
  t.same(
    exports.map((e) => [e.name, e.size, e.file, e.filters]),
    [
      ['', 8 * MiB, null, []],
      ['disk', 16 * MiB, img, [{ index: 0, name: 'error', settings: 'error:op=write,error-rate=0' }]],
    ],
  );
  t.match(await qemuIo(s.uri('disk'), 'write -P 3 0 1M', 'read -P 3 0 64k'), /wrote 1048576\/1048576[\s\S]*read 65536\/65536/);
  const [stats] = (await ok(ctl, 'stats', { export: 'disk' })) as { name: string; requests: Record<string, number>; bytesWritten: number; bytesRead: number; errors: number }[];
  t.equal(stats.name, 'disk');
  t.ok(stats.requests.write >= 1 && stats.bytesWritten === MiB && stats.bytesRead === 64 << 10 && stats.errors === 0, JSON.stringify(stats));
  const help = Object.keys((await ok(ctl, 'help')) as object);
  t.ok(['exports', 'stats', 'snapshot-create', 'shutdown'].every((c) => help.includes(c)), 'help lists the commands');

  const extra = path.join(dir, 'extra.img');
  await run('qemu-img', ['create', '-f', 'qcow2', extra, '4M']);
  t.match(await ok(ctl, 'export-add', { name: 'extra', file: extra, readOnly: true, filters: ['error:op=read,offset=1M,length=1M'] }), {
    name: 'extra',
    readOnly: true,
    size: 4 * MiB,
  });
  const info = await run('nbdinfo', ['--list', `nbd+unix:///?socket=${s.socket}`]);
  t.match(info.stdout, /export="extra"/, 'nbdinfo --list shows the new export');
  t.match(await qemuIoWith(['-r'], s.uri('extra'), 'read 0 4k', 'read 1M 4k'), /read 4096\/4096[\s\S]*read failed: Input\/output error/, 'its filter works');
  t.match((await run('nbdinfo', [s.uri('extra')])).stdout, /is_read_only: true/, 'read-only');
  t.match(await fails(ctl, 'export-add', { name: 'extra', file: extra }), { code: 'bad-argument', message: /exists already/ });
  t.match(await fails(ctl, 'export-add', { name: 'x', file: path.join(dir, 'nosuch') }), { code: 'failed', message: /nosuch/ });
  t.match(await fails(ctl, 'export-add', { name: 'x', file: extra, filters: ['bogus'] }), { code: 'failed', message: /unknown filter 'bogus'/ });

  // A connection open on the export when it is removed gets ESHUTDOWN from then on.
  const nbdsh = run('nbdsh', ['-u', s.uri('disk'), '-c', 'import time\nh.pread(512, 0)\ntime.sleep(1.5)\ntry:\n  h.pread(512, 0)\n  print("read worked")\nexcept nbd.Error as e:\n  print("error", e.errno)']);
  await new Promise((r) => setTimeout(r, 700));
  t.same(await ok(ctl, 'export-remove', { name: 'disk' }), { removed: 'disk' });
  t.match((await nbdsh).stdout, /error ESHUTDOWN/, 'an open connection gets ESHUTDOWN');
  t.match(await fails(ctl, 'export-remove', { name: 'disk' }), { code: 'not-found' });
  t.match((await run('nbdinfo', ['--list', `nbd+unix:///?socket=${s.socket}`])).stdout, /^(?![\s\S]*export="disk")/, 'gone from the list');
  const check = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', img, img]);
  t.equal(check.code, 0);
  t.match((await run('qemu-io', ['-f', 'raw', '-c', 'read -P 3 0 1M', img])).stdout, /read 1048576\/1048576/, 'the removed image was flushed and closed with its data');
});

t.test('filter list, set and clear change what clients see, live', async (t) => {
  const { s, ctl } = await served(t, ['memory:4M', '--filter', 'error:error-rate=0', '--filter', 'error:op=write,error-rate=0']);
  t.same(await ok(ctl, 'filter-list'), [{ export: '', filters: [{ index: 0, name: 'error', settings: 'error:error-rate=0' }, { index: 1, name: 'error', settings: 'error:op=write,error-rate=0' }] }]);
  t.match(await fails(ctl, 'filter-set', { filter: 'error:op=read' }), { code: 'bad-argument', message: /2 error filters: give index/ });
  t.match(await fails(ctl, 'filter-set', { filter: 'error:op=nothing', index: 0 }), { code: 'bad-argument', message: /op must be/ });
  t.match(await fails(ctl, 'filter-set', { filter: 'delay:read=1ms' }), { code: 'not-found', message: /has no delay filter \(start vblk serve with --filter delay\)/ }, 'a kind the export does not have');
  t.match(await fails(ctl, 'filter-set', { filter: 'nosuch:x=1' }), { code: 'bad-argument', message: /unknown filter 'nosuch'/ });
  t.same(await ok(ctl, 'filter-set', { filter: 'error:op=read,offset=1M,length=1M,errno=ENOSPC', index: 0 }), { filter: 'error', settings: 'error:op=read,offset=1M,length=1M,errno=ENOSPC' });
  t.match(await qemuIo(s.uri(), 'read 0 4k', 'read 1M 4k', 'read 2M 4k'), /read 4096\/4096[\s\S]*read failed: No space left on device[\s\S]*read 4096\/4096/);
  t.same(await ok(ctl, 'filter-clear', { name: 'error', index: 0 }), { filter: 'error', cleared: true });
  t.match(await qemuIo(s.uri(), 'read 1M 4k'), /read 4096\/4096/, 'cleared: the range reads again');
  t.match(await fails(ctl, 'filter-clear', { name: 'error', index: 5 }), { code: 'not-found', message: /no error filter at index 5/ });
  const bad = await vblk(['ctl', ctl, 'filter', 'set', 'error:op=read', '--index', 'x']);
  t.equal(bad.code, 2, 'a bad --index is a usage error');
});

t.test('commands for filters the export lacks, unknown commands and bad arguments', async (t) => {
  const { ctl } = await served(t, ['memory:4M']);
  for (const [command, args] of [
    ['power-cut', {}],
    ['mark', { name: 'm' }],
    ['bitmap-start', { name: 'b' }],
    ['bitmap-clear', { name: 'b' }],
    ['bitmap-drop', { name: 'b' }],
    ['bitmap-list', {}],
  ] as const) {
    t.match(await fails(ctl, command, args), { code: 'not-found', message: /has no .* filter \(start vblk serve with --filter/ }, command);
  }
  t.match(await fails(ctl, 'snapshot-create', { name: 's' }), { code: 'bad-argument', message: /no image file/ }, 'memory images have no file to snapshot');
  t.match(await fails(ctl, 'nosuch'), { code: 'unknown-command', message: /unknown command 'nosuch' \(commands: help, exports/ });
  t.match(await fails(ctl, 'toString'), { code: 'unknown-command' }, 'not an inherited property either');
  t.match(await fails(ctl, 'exports', { extra: 1 }), { code: 'bad-argument', message: /unknown argument 'extra' \(takes none\)/ });
  t.match(await fails(ctl, 'mark', {}), { code: 'bad-argument', message: /name is required/ });
  t.match(await fails(ctl, 'mark', { name: 5 }), { code: 'bad-argument', message: /name must be a string/ });
  t.match(await fails(ctl, 'power-cut', { seed: -1 }), { code: 'bad-argument', message: /seed must be a whole number/ });
  t.match(await fails(ctl, 'stats', { export: 'nope' }), { code: 'not-found', message: /no export 'nope'/ });
  const r = await vblk(['ctl', ctl, 'frobnicate']);
  t.equal(r.code, 2);
  t.match(r.stderr, /unknown command 'frobnicate'/);
  const e = await vblk(['ctl', ctl, 'call', 'stats', '{"export": "nope"}']);
  t.equal(e.code, 1, 'a server error is exit 1');
  t.match(e.stderr, /no export 'nope' .*\(not-found\)/);
  const j = await vblk(['ctl', ctl, 'exports']);
  t.equal(j.code, 0);
  t.same((JSON.parse(j.stdout) as { size: number }[]).map((x) => x.size), [4 * MiB], 'vblk ctl prints JSON');
});

t.test('malformed MessagePack, oversized frames, floods, clients that leave mid-frame: errors, and the server lives', async (t) => {
  const { s, ctl } = await served(t, ['memory:4M']);
  const frame = (body: Buffer): Buffer => {
    const h = Buffer.alloc(4);
    h.writeUInt32BE(body.length);
    return Buffer.concat([h, body]);
  };
  const bad = await rawExchange(ctl, [frame(Buffer.from('c1', 'hex')), frame(Buffer.from('dc00', 'hex')), encodeFrame({ id: 9, command: 'exports' })], 3);
  t.match(bad.responses, [{ id: null, ok: false, error: { code: 'malformed' } }, { id: null, ok: false, error: { code: 'malformed' } }, { id: 9, ok: true }], 'errors for the bad frames, and the connection goes on');

  const big = Buffer.alloc(4);
  big.writeUInt32BE(MAX_FRAME + 1);
  const over = await rawExchange(ctl, [big, Buffer.alloc(1000)], 2);
  t.match(over, { responses: [{ id: null, ok: false, error: { code: 'too-large' } }], closedByServer: true }, 'an oversized frame: an error, then the server closes');

  const flood = await rawExchange(ctl, [Buffer.concat(Array.from({ length: 200 }, (_, i) => encodeFrame({ id: i, command: 'help' })))], 200);
  t.ok(flood.closedByServer || flood.responses.length === 200, 'a flood is answered or cut off');
  t.match(flood.responses.at(-1), { ok: false, error: { code: 'too-large' } }, 'with an error saying why');

  for (const cut of [2, 4, 10]) {
    const socket = net.connect(ctl);
    await new Promise((r) => socket.on('connect', r));
    socket.end(encodeFrame({ id: 1, command: 'exports' }).subarray(0, cut));
    await new Promise((r) => socket.on('close', r));
  }
  const gone = net.connect(ctl);
  await new Promise((r) => gone.on('connect', r));
  gone.write(encodeFrame({ id: 1, command: 'exports' }));
  gone.destroy();

  t.match(await ok(ctl, 'exports'), [{ name: '' }], 'the control socket still answers');
  t.match(await qemuIo(s.uri(), 'write -P 1 0 4k', 'read -P 1 0 4k'), /read 4096\/4096/, 'and the NBD export still serves');
  t.ok(s.proc.exitCode === null, 'vblk is running');
});

t.test('fast-check: random requests and random frames, each answered with its id; the server lives', async (t) => {
  const { s, ctl } = await served(t, ['memory:4M', '--filter', 'error:error-rate=0']);
  const commands = ['help', 'exports', 'stats', 'filter-list', 'filter-set', 'filter-clear', 'power-cut', 'mark', 'bitmap-start', 'bitmap-list', 'snapshot-list', 'export-remove', 'nosuch', ''];
  const value = fc.oneof(fc.integer(), fc.string({ maxLength: 20 }), fc.boolean(), fc.constant(null), fc.array(fc.string({ maxLength: 5 }), { maxLength: 3 }), fc.double());
  const args = fc.dictionary(fc.constantFrom('export', 'name', 'index', 'filter', 'policy', 'seed', 'granularity', 'x'), value, { maxKeys: 4 });
  const message = fc.oneof(
    fc.record({ id: fc.nat(), command: fc.constantFrom(...commands), args }).map((m) => ({ kind: 'request' as const, id: m.id, bytes: frame(m) })),
    fc.uint8Array({ maxLength: 40 }).map((b) => ({ kind: 'bytes' as const, id: null, bytes: lengthPrefixed(Buffer.from(b)) })),
    value.map((v) => ({ kind: 'value' as const, id: null, bytes: lengthPrefixed(plain.pack(v)) })),
  );
  function frame(m: { id: number; command: string; args: Record<string, unknown> }): Buffer {
    // export-remove of the only export would end the test's NBD check; it gets a name that is not there.
    const a = m.command === 'export-remove' ? { name: 'not-there' } : m.args;
    return encodeFrame({ id: m.id, command: m.command, args: a });
  }
  function lengthPrefixed(body: Buffer): Buffer {
    const h = Buffer.alloc(4);
    h.writeUInt32BE(body.length);
    return Buffer.concat([h, body]);
  }
  await fc.assert(
    fc.asyncProperty(fc.array(message, { minLength: 1, maxLength: 12 }), async (messages) => {
      const { responses, closedByServer } = await rawExchange(ctl, messages.map((m) => m.bytes), messages.length);
      if (closedByServer) return false;
      return responses.every((r, i) => (messages[i].kind === 'request' ? r.id === messages[i].id : true) && (r.ok || typeof r.error.message === 'string'));
    }),
    { numRuns: 150 },
  );
  await ok(ctl, 'filter-clear', { name: 'error' });
  t.match(await qemuIo(s.uri(), 'write -P 2 0 64k', 'read -P 2 0 64k'), /read 65536\/65536/, 'the export serves after the run');
  t.match(await ok(ctl, 'exports'), [{ name: '' }]);
});

t.test('vblk ctl words for each command: snapshots, exports, filters, stats, call', async (t) => {
  const dir = tempDir(t);
  const img = path.join(dir, 'disk.qcow2');
  await run('qemu-img', ['create', '-f', 'qcow2', img, '8M']);
  const { s, ctl } = await served(t, [img, '--filter', 'error:error-rate=0']);
  const v = async (...words: string[]): Promise<unknown> => {
    const r = await vblk(['ctl', ctl, ...words]);
    if (r.code !== 0) throw new Error(`vblk ctl ${words.join(' ')}: ${r.code} ${r.stderr}`);
    return JSON.parse(r.stdout);
  };
  t.match(await qemuIo(s.uri(), 'write -P 4 0 1M'), /wrote/);
  t.match(await v('snapshot', 'create', 'a'), { name: 'a', file: path.join(dir, 'disk@a.qcow2') });
  t.match(await qemuIo(s.uri(), 'write -P 5 0 64k'), /wrote/);
  t.match(await v('snapshot', 'list'), [{ name: 'a', file: path.join(dir, 'disk@a.qcow2') }]);
  const fork = path.join(dir, 'fork.qcow2');
  t.same(await v('snapshot', 'fork', 'a', fork), { forked: 'a', file: fork });
  t.match((await run('qemu-io', ['-f', 'qcow2', '-r', '-c', 'read -P 4 0 1M', fork])).stdout, /read 1048576\/1048576/, 'the fork reads the snapshot');
  t.equal((await run('qemu-img', ['check', fork])).code, 0);
  t.match(await qemuIo(s.uri(), 'read -P 5 0 64k', 'read -P 4 64k 64k'), /read 65536\/65536[\s\S]*read 65536\/65536/, 'the export is unchanged by the fork');
  t.match(await v('snapshot', 'revert', 'a'), { reverted: 'a' });
  t.match(await qemuIo(s.uri(), 'read -P 4 0 64k'), /read 65536\/65536/, 'reverted live');
  t.match(await v('filter', 'set', 'error:op=write,errno=EPERM'), { filter: 'error' });
  t.match(await v('filter', 'list'), [{ export: '', filters: [{ settings: 'error:op=write,errno=EPERM' }] }]);
  t.match(await qemuIo(s.uri(), 'write 0 4k'), /write failed: Operation not permitted/);
  t.match(await v('filter', 'clear', 'error'), { cleared: true });
  t.match(await v('filter', 'list'), [{ export: '', filters: [{ settings: 'error (cleared)' }] }]);
  t.match(await v('export', 'add', `m=memory:1M`, '--filter', 'error:op=read'), { name: 'm', size: MiB, filters: [{ name: 'error' }] });
  t.match(await v('stats', '--export', 'm'), [{ name: 'm' }]);
  t.match(await v('call', 'exports'), [{ name: '' }, { name: 'm' }]);
  t.same(await v('export', 'remove', 'm'), { removed: 'm' });
  t.match(await v('help'), { 'snapshot-fork': /overlay/ });
  t.match(await v('shutdown'), { shuttingDown: true });
  t.same(await s.exited, { code: 0, signal: null });
  t.equal((await run('qemu-img', ['check', img])).code, 0, 'the image checks after all that');
});

t.test('mark reaches the journal filter; its stats show in stats', async (t) => {
  const dir = tempDir(t);
  const log = path.join(dir, 'j.log');
  const { s, ctl } = await served(t, ['memory:4M', '--filter', `journal:file=${log}`]);
  t.match(await qemuIo(s.uri(), 'write -P 1 0 64k'), /wrote/);
  const mark = (await ok(ctl, 'mark', { name: 'after-first' })) as { seq: number };
  t.ok(Number.isInteger(mark.seq), `mark at seq ${mark.seq}`);
  t.match(await qemuIo(s.uri(), 'write -P 2 0 64k'), /wrote/);
  const [stats] = (await ok(ctl, 'stats')) as { filters: { name: string; stats: { marks: number; writes: number } }[] }[];
  t.match(stats.filters, [{ name: 'journal', stats: { marks: 1, writes: 2 } }]);
  await s.stop();
  const list = await vblk(['journal', 'list', log, '--json']);
  t.equal(list.code, 0, list.stderr);
  t.match(list.stdout, /after-first/, 'vblk journal list shows the mark');
  const out = path.join(dir, 'at-mark.img');
  const base = path.join(dir, 'base.img');
  await run('qemu-img', ['create', '-f', 'raw', base, '4M']);
  const replay = await vblk(['journal', 'replay', log, '--base', base, '--to', 'after-first', '--out', out]);
  t.equal(replay.code, 0, replay.stderr);
  t.match((await run('qemu-io', ['-f', 'raw', '-r', '-c', 'read -P 1 0 64k', out])).stdout, /read 65536\/65536/, 'replay to the mark has the first write, not the second');
});

t.test('power-cut reaches the power-cut filter: unflushed writes are gone, flushed ones stay', async (t) => {
  const { s, ctl } = await served(t, ['memory:4M', '--filter', 'power-cut']);
  // libnbd sends no flush when it closes, so the second write stays in the volatile layer.
  const w = await run('nbdsh', ['-u', s.uri(), '-c', 'h.pwrite(b"\\x01" * 65536, 0)\nh.flush()\nh.pwrite(b"\\x02" * 65536, 65536)']);
  t.equal(w.code, 0, w.stderr);
  const [before] = (await ok(ctl, 'stats')) as { filters: { stats: { unflushed: { requests: number } } }[] }[];
  t.equal(before.filters[0].stats.unflushed.requests, 1, 'one write is held unflushed');
  t.match(await fails(ctl, 'power-cut', { policy: 'some' }), { code: 'bad-argument', message: /policy must be all, random or torn/ });
  t.match(await ok(ctl, 'power-cut', { policy: 'all', seed: 3 }), { policy: 'all', seed: 3, dropped: { requests: 1 } });
  t.match(await qemuIo(s.uri(), 'read -P 1 0 64k', 'read -P 0 64k 64k'), /read 65536\/65536[\s\S]*read 65536\/65536/, 'the flushed write survived, the unflushed one did not');
  const r = await vblk(['ctl', path.join(path.dirname(ctl), 'ctl.sock'), 'power-cut', '--policy', 'torn', '--seed', '9']);
  t.equal(r.code, 0, r.stderr);
  t.match(JSON.parse(r.stdout), { policy: 'torn', seed: 9 }, 'vblk ctl power-cut --policy --seed');
});

t.test('bitmap start, clear, list and drop reach the dirty filter, live, as nbdinfo sees them', async (t) => {
  const { s, ctl } = await served(t, ['memory:4M', '--filter', 'dirty']);
  const map = async (): Promise<{ offset: number; length: number; type: number }[]> => {
    const r = await run('nbdinfo', ['--map=qemu:dirty-bitmap:b', '--json', s.uri()]);
    if (r.code !== 0) throw new Error(r.stderr);
    return (JSON.parse(r.stdout) as { offset: number; length: number; type: number }[]).map(({ offset, length, type }) => ({ offset, length, type }));
  };
  t.match(await qemuIo(s.uri(), 'write 0 64k'), /wrote/, 'a write before the bitmap starts');
  t.match(await ok(ctl, 'bitmap-start', { name: 'b', granularity: 65536 }), { name: 'b', granularity: 65536 });
  t.match(await fails(ctl, 'bitmap-start', { name: 'b' }), { code: 'failed', message: /already exists/ });
  t.match(await fails(ctl, 'bitmap-start', { name: 'c', granularity: 256 }), { code: 'bad-argument' }, 'granularity below 512 is refused before the filter');
  t.match(await fails(ctl, 'bitmap-start', { name: 'c', granularity: 3000 }), { code: 'failed', message: /power of two/ });
  t.match(await qemuIo(s.uri(), 'write 1M 64k', 'write 2M 4k'), /wrote[\s\S]*wrote/);
  t.same(await map(), [
    { offset: 0, length: MiB, type: 0 },
    { offset: MiB, length: 64 << 10, type: 1 },
    { offset: MiB + (64 << 10), length: MiB - (64 << 10), type: 0 },
    { offset: 2 * MiB, length: 64 << 10, type: 1 },
    { offset: 2 * MiB + (64 << 10), length: 2 * MiB - (64 << 10), type: 0 },
  ], 'exactly the writes since start are dirty, at 64 KiB granules');
  t.match(await ok(ctl, 'bitmap-list'), [{ name: 'b', dirtyBytes: 128 << 10 }]);
  t.match(await ok(ctl, 'bitmap-clear', { name: 'b' }), { name: 'b', dirtyBytes: 0 });
  t.same(await map(), [{ offset: 0, length: 4 * MiB, type: 0 }], 'clean after clear');
  // A client that selected the context before the drop gets an error after it; new clients do not see it.
  const held = run('/usr/bin/python3', [
    '-c',
    [
      'import nbd, time',
      'h = nbd.NBD()',
      'h.add_meta_context("qemu:dirty-bitmap:b")',
      `h.connect_uri("${s.uri()}")`,
      'print("selected", h.can_meta_context("qemu:dirty-bitmap:b"), flush=True)',
      'time.sleep(2)',
      'try:',
      '    h.block_status(65536, 0, lambda *a: 0)',
      '    print("block status worked")',
      'except nbd.Error as e:',
      '    print("error", e.errno)',
    ].join('\n'),
  ]);
  await new Promise((r) => setTimeout(r, 800));
  t.match(await ok(ctl, 'bitmap-drop', { name: 'b' }), { name: 'b' });
  t.match(await fails(ctl, 'bitmap-clear', { name: 'b' }), { code: 'failed', message: /no dirty bitmap 'b'/ });
  t.same(await ok(ctl, 'bitmap-list'), []);
  const list = await run('nbdinfo', ['--list', '--content', s.uri()]);
  t.notMatch(list.stdout, /qemu:dirty-bitmap:b/, 'new clients no longer see the context');
  const after = await held;
  t.match(after.stdout, /selected True[\s\S]*error EINVAL/, `the client that had it selected gets EINVAL: ${after.stdout}${after.stderr}`);
});

t.test("the issue's whole command line: six filters under one export, listed by the control socket, serving", async (t) => {
  const dir = tempDir(t);
  const img = path.join(dir, 'disk.img');
  await run('qemu-img', ['create', '-f', 'raw', img, '8M']);
  const log = path.join(dir, 'j.log');
  const { s, ctl } = await served(t, [
    img,
    '--filter', 'error:op=read,offset=1M,length=1M,errno=EIO',
    '--filter', 'delay:read=5ms',
    '--filter', 'rate:bytes=50M',
    '--filter', 'power-cut',
    '--filter', `journal:file=${log}`,
    '--filter', 'dirty',
  ]);
  const [e] = (await ok(ctl, 'exports')) as { filters: { index: number; name: string }[] }[];
  t.same(e.filters.map((f) => f.name), ['error', 'delay', 'rate', 'power-cut', 'journal', 'dirty'], 'nearest the client first');
  t.match(await qemuIo(s.uri(), 'write -P 7 0 64k', 'read -P 7 0 64k', 'read 1M 4k'), /wrote 65536\/65536[\s\S]*read 65536\/65536[\s\S]*read failed: Input\/output error/);
  t.match(await ok(ctl, 'mark', { name: 'm' }), { seq: Number });
  t.match(await ok(ctl, 'power-cut'), { policy: 'all' });
  t.match(await ok(ctl, 'snapshot-create', { name: 's1' }), { name: 's1' }, 'a raw image snapshots too (it becomes a qcow2 overlay on the frozen raw file)');
  t.match(await qemuIo(s.uri(), 'read -P 7 0 64k'), /read 65536\/65536/, 'still serving, data in place');
  t.same(await ok(ctl, 'shutdown'), { shuttingDown: true });
  t.same(await s.exited, { code: 0, signal: null });
});
