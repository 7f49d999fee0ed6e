// `vblk serve --threads N` (server/nbd/loops.ts): the handshake runs on
// the main event loop, and a transmission on a raw image moves to the
// least busy loop (ties stay on the main loop, and a worker thread starts
// with the first connection placed on it). What must hold: connections
// spread over the loops and each one sees what the others wrote and
// flushed; bytes a client sent right behind GO reach the loop that serves
// it, also while that loop's thread is starting; devices that cannot be
// shared (filters, memory disks) keep their connections on the main loop;
// a lone connection starts no thread; a shutdown finishes on every loop;
// and a bad --threads is refused.

import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { connect as nbdConnect, type NbdError } from '../src/client/index.js';
import { CMD, CMD_FLAG, NBD_ERR, OPT, REP } from '../src/protocol/nbd/constants.js';
import { encodeClientFlags, encodeInfoRequest, encodeOption } from '../src/protocol/nbd/handshake-codec.js';
import { encodeRequest } from '../src/protocol/nbd/transmission-codec.js';
import { RawClient } from './helpers/nbd-client.js';
import { serve, tempDir, vblk, type Served } from './helpers/server.js';
import { run } from './helpers/tools.js';

const MIB = 1 << 20;

function image(t: Test, size = 16 * MIB): string {
  const file = path.join(tempDir(t), 'disk.raw');
  fs.writeFileSync(file, '');
  fs.truncateSync(file, size);
  return file;
}

async function connect(t: Test, srv: Served, name = ''): Promise<RawClient> {
  const c = await RawClient.connect(srv.socket);
  t.teardown(() => c.close());
  await c.handshake({ name });
  return c;
}

/** The loop each connection's transmission ran on, from the log (0: the main loop). */
function loopsOf(srv: Served): Map<number, number> {
  const loops = new Map<number, number>();
  for (const l of srv.logs()) if (l.msg === 'transmission started') loops.set(l.conn as number, (l.loop as number | undefined) ?? 0);
  return loops;
}

async function waitFor(check: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 200 && !check(); i++) await new Promise((r) => setTimeout(r, 25));
  if (!check()) throw new Error(`timed out waiting for ${what}`);
}

async function write(c: RawClient, cookie: bigint, offset: number, data: Buffer, flags = 0): Promise<number> {
  c.request({ flags, type: CMD.WRITE, cookie, offset, length: data.length }, data);
  const r = await c.reply();
  return r.kind === 'simple' ? r.error : -1;
}

async function read(c: RawClient, cookie: bigint, offset: number, length: number): Promise<Buffer> {
  c.request({ flags: CMD_FLAG.DF, type: CMD.READ, cookie, offset, length });
  const chunks = await c.structuredReply();
  const data = Buffer.alloc(length);
  for (const ch of chunks) {
    const p = ch.payload as { offset?: number; data?: Buffer };
    if (p.data) p.data.copy(data, p.offset! - offset);
  }
  return data;
}

t.test('--threads 2: four connections spread over both loops, and each reads what the others wrote', async (t) => {
  const file = image(t);
  const srv = await serve(t, [file, '--threads', '2']);
  const clients = [];
  for (let i = 0; i < 4; i++) clients.push(await connect(t, srv));
  await waitFor(() => loopsOf(srv).size === 4, 'four transmissions');
  const loops = [...loopsOf(srv).values()].sort();
  t.same(loops, [0, 0, 1, 1], 'two connections on each loop');
  for (const [i, c] of clients.entries()) {
    t.equal(await write(c, 1n, i * MIB, Buffer.alloc(MIB, 0x10 + i)), 0, `connection ${i + 1} writes its megabyte`);
  }
  for (const [i, c] of clients.entries()) {
    const other = (i + 1) % 4;
    t.ok((await read(c, 2n, other * MIB, MIB)).equals(Buffer.alloc(MIB, 0x10 + other)), `connection ${i + 1} reads what connection ${other + 1} wrote`);
  }
  // FLUSH on one connection covers writes every loop completed (CAN_MULTI_CONN).
  clients[0]!.request({ flags: 0, type: CMD.FLUSH, cookie: 3n, offset: 0, length: 0 });
  t.match(await clients[0]!.reply(), { kind: 'simple', error: 0 }, 'FLUSH succeeds');
  for (const c of clients) c.close();
  t.equal((await srv.stop()).code, 0, 'the server exits 0');
  const closed = srv.logs().filter((l) => l.msg === 'connection closed');
  t.equal(closed.length, 4, 'every connection logs its close once, on the loop that ran it');
  t.ok(closed.every((l) => (l.requests as Record<string, number>).NBD_CMD_WRITE === 1), 'with its counts');
  const written = fs.readFileSync(file);
  for (let i = 0; i < 4; i++) t.ok(written.subarray(i * MIB, (i + 1) * MIB).equals(Buffer.alloc(MIB, 0x10 + i)), `megabyte ${i} is in the file`);
  const expected = path.join(tempDir(t), 'expected.raw');
  fs.writeFileSync(expected, Buffer.concat([0, 1, 2, 3].map((i) => Buffer.alloc(MIB, 0x10 + i))));
  fs.truncateSync(expected, 16 * MIB);
  const compare = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', file, expected]);
  t.equal(compare.code, 0, `qemu-img compare: the image holds the four writes and nothing else ${compare.stdout}${compare.stderr}`);
});

t.test('a request sent right behind GO, before its reply, is served on the loop the connection moves to', async (t) => {
  const file = image(t);
  fs.writeFileSync(file, Buffer.alloc(4096, 0x5a), { flag: 'r+' });
  const srv = await serve(t, [file, '--threads', '2']);
  // The first connection stays on the main loop; the second goes to the worker, whose thread it starts.
  await connect(t, srv);
  const c = await RawClient.connect(srv.socket);
  t.teardown(() => c.close());
  await c.greeting();
  c.send(encodeClientFlags(3));
  await c.option(OPT.STRUCTURED_REPLY);
  // GO and a READ in one write: the main loop reads both before it hands the connection over.
  const header = Buffer.alloc(28);
  encodeRequest(header, 0, { flags: CMD_FLAG.DF, type: CMD.READ, cookie: 7n, offset: 0, length: 4096 });
  c.send(encodeOption(OPT.GO, encodeInfoRequest({ name: '', requests: [] })), header);
  let last;
  do last = await c.optionReply();
  while (last.type !== REP.ACK && last.type < 0x80000000);
  t.equal(last.type, REP.ACK, 'GO is answered');
  const chunks = await c.structuredReply();
  const data = (chunks[0]!.payload as { data: Buffer }).data;
  t.equal(chunks[0]!.cookie, 7n, 'the READ sent with GO is answered');
  t.ok(data.equals(Buffer.alloc(4096, 0x5a)), 'with the data');
  await waitFor(() => loopsOf(srv).size === 2, 'both transmissions in the log');
  t.same([...loopsOf(srv).values()].sort(), [0, 1], 'on the worker loop');
});

t.test('exports that cannot be shared keep their connections on the main loop', async (t) => {
  const file = image(t);
  const srv = await serve(t, [file, '--threads', '2', '--export', 'mem=memory:16M', '--export', 'slow=' + image(t), '--filter', 'delay:read=1ms']);
  for (const name of ['', 'mem', 'mem', 'slow', 'slow', '']) await connect(t, srv, name);
  await waitFor(() => loopsOf(srv).size === 6, 'six transmissions');
  const loops = (name: string): number[] =>
    srv
      .logs()
      .filter((l) => l.msg === 'transmission started' && l.export === name)
      .map((l) => (l.loop as number | undefined) ?? 0);
  t.same(loops('mem'), [0, 0], 'a memory disk stays on the main loop');
  t.same(loops('slow'), [0, 0], 'so does an export with a filter');
  t.same(loops(''), [0, 1], 'a plain raw image spreads: its first connection here, the second on the worker');
  const ready = srv.logs().find((l) => l.msg === 'connection loops');
  t.same(ready?.exports, [''], 'the loops serve only the plain raw image');
});

t.test('shutdown with requests in flight on both loops: they finish, the server exits 0', async (t) => {
  const file = image(t, 64 * MIB);
  const srv = await serve(t, [file, '--threads', '2']);
  const disks = [await nbdConnect(srv.uri()), await nbdConnect(srv.uri())];
  await waitFor(() => loopsOf(srv).size === 2, 'two transmissions');
  t.same([...loopsOf(srv).values()].sort(), [0, 1], 'one connection on each loop');
  const data = (i: number): Buffer => Buffer.alloc(4 * MIB, 0x30 + i);
  const writes = disks.flatMap((disk, d) => [0, 1, 2, 3].map((k) => disk.write((d * 4 + k) * 4 * MIB, data(d * 4 + k), { fua: true })));
  // The signal comes once a write on each loop has been done, while the others are on their way.
  await Promise.all([writes[0], writes[4]]);
  srv.proc.kill('SIGTERM');
  // A write done before the signal succeeds, a refused one fails with ESHUTDOWN.
  const errors = (await Promise.allSettled(writes)).map((r) => (r.status === 'fulfilled' ? 0 : (r.reason as NbdError).errno));
  t.ok(errors.every((e) => e === 0 || e === NBD_ERR.ESHUTDOWN), `each write done or refused with ESHUTDOWN (${errors.join(' ')})`);
  t.ok(errors[0] === 0 && errors[4] === 0, 'the writes done before the signal succeeded on both loops');
  t.same(await srv.exited, { code: 0, signal: null }, 'exit 0');
  t.ok(srv.logs().some((l) => l.msg === 'shutdown complete'), 'the shutdown completes');
  const content = fs.readFileSync(file);
  errors.forEach((e, i) => {
    if (e === 0) t.ok(content.subarray(i * 4 * MIB, (i + 1) * 4 * MIB).equals(data(i)), `write ${i} is in the file`);
  });
});

t.test('a single connection never starts a worker thread', async (t) => {
  const srv = await serve(t, [image(t), '--threads', '4']);
  for (let i = 0; i < 3; i++) (await connect(t, srv)).close();
  await waitFor(() => srv.logs().filter((l) => l.msg === 'connection closed').length === 3, 'three closes');
  t.same([...loopsOf(srv).values()], [0, 0, 0], 'one after another, each runs on the main loop');
  t.notOk(srv.logs().some((l) => l.msg === 'connection loop started'), 'no loop was started');
});

t.test('a worker loop idle for a second ends, and the next connection placed on it starts another', async (t) => {
  const srv = await serve(t, [image(t), '--threads', '2']);
  const started = (): number => srv.logs().filter((l) => l.msg === 'connection loop started').length;
  for (const round of [1, 2]) {
    const a = await connect(t, srv);
    const b = await connect(t, srv);
    await waitFor(() => started() === round, `the worker's start number ${round}`);
    t.equal(await write(b, 1n, round * MIB, Buffer.alloc(4096, round)), 0, `round ${round}: the connection on the worker writes`);
    t.ok((await read(a, 2n, round * MIB, 4096)).equals(Buffer.alloc(4096, round)), 'and the one on the main loop reads it');
    a.close();
    b.close();
    // Idle for a second, the thread ends; the second round finds none.
    await new Promise((r) => setTimeout(r, 2000));
  }
  t.equal(started(), 2, 'two threads were started, one after the other');
  t.equal((await srv.stop()).code, 0, 'the server exits 0');
});

t.test('--threads must be a number of loops from 1 to 16, or auto', async (t) => {
  for (const bad of ['0', '17', '1.5', 'many']) {
    const r = await vblk(['serve', 'memory:1M', '--socket', path.join(tempDir(t), 's'), '--threads', bad]);
    t.equal(r.code, 2, `--threads ${bad}: a usage error`);
    t.match(r.stderr, /--threads must be auto or a whole number from 1 to 16/);
  }
});
