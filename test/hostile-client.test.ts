// What a client that breaks the rules gets: the protocol's answer, or a
// closed connection where the protocol says so, and never a server that
// stops serving the others. Sent with our own raw client, because real
// clients refuse to send most of this.

import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { CHUNK, CMD, CMD_FLAG, NBD_ERR, OPT, REP } from '../src/protocol/nbd/constants.js';
import { encodeClientFlags, encodeOption } from '../src/protocol/nbd/handshake-codec.js';
import { RawClient, replyError } from './helpers/nbd-client.js';
import { serve, tempDir, type Served } from './helpers/server.js';

const SIZE = 16 << 20;

async function server(t: Test, extra: string[] = []): Promise<Served & { file: string }> {
  const file = path.join(tempDir(t), 'disk.img');
  fs.writeFileSync(file, Buffer.alloc(0));
  fs.truncateSync(file, SIZE);
  return { ...(await serve(t, [file, ...extra])), file };
}

/** A fresh connection in transmission, to show the server still serves. */
async function stillServes(t: Test, srv: Served): Promise<void> {
  const c = await RawClient.connect(srv.socket);
  const { size } = await c.handshake();
  t.equal(size, SIZE, 'a new connection completes the handshake');
  c.request({ flags: 0, type: CMD.READ, cookie: 7n, offset: 0, length: 512 });
  const chunks = await c.structuredReply();
  t.equal(chunks.length > 0 && chunks[0].cookie, 7n, 'and gets its read answered');
  c.close();
}

t.test('an unknown client flag closes the connection', async (t) => {
  const srv = await server(t);
  const c = await RawClient.connect(srv.socket);
  await c.greeting();
  c.send(encodeClientFlags(1 | 1 << 5));
  t.ok(await c.closesWithin(2000), 'closed');
  await stillServes(t, srv);
});

t.test('an unknown option gets UNSUP and the handshake goes on', async (t) => {
  const srv = await server(t);
  const c = await RawClient.connect(srv.socket);
  await c.greeting();
  c.send(encodeClientFlags(3));
  const [r] = await c.option(999, Buffer.from('some data the server must skip'));
  t.equal(r.type, REP.ERR_UNSUP);
  t.equal(r.option, 999);
  const [peek] = await c.option(OPT.PEEK_EXPORT);
  t.equal(peek.type, REP.ERR_UNSUP, 'the withdrawn PEEK_EXPORT is unknown too');
  const [tls] = await c.option(OPT.STARTTLS);
  t.equal(tls.type, REP.ERR_UNSUP, 'STARTTLS is unsupported');
  const [sr] = await c.option(OPT.STRUCTURED_REPLY);
  t.equal(sr.type, REP.ACK, 'a known option still works afterwards');
  const [ext] = await c.option(OPT.EXTENDED_HEADERS);
  t.equal(ext.type, REP.ACK, 'EXTENDED_HEADERS is supported (and may follow STRUCTURED_REPLY)');
  const [again] = await c.option(OPT.STRUCTURED_REPLY);
  t.equal(again.type, REP.ERR_EXT_HEADER_REQD, 'STRUCTURED_REPLY after it: EXT_HEADER_REQD');
  c.close();
});

t.test('a bad option magic closes the connection', async (t) => {
  const srv = await server(t);
  const c = await RawClient.connect(srv.socket);
  await c.greeting();
  const opt = encodeOption(OPT.LIST);
  opt[0] ^= 0xff;
  c.send(encodeClientFlags(3), opt);
  t.ok(await c.closesWithin(2000));
  await stillServes(t, srv);
});

t.test('oversized option data is skipped and answered TOO_BIG; absurd lengths close', async (t) => {
  const srv = await server(t);
  const c = await RawClient.connect(srv.socket);
  await c.greeting();
  c.send(encodeClientFlags(3));
  const [r] = await c.option(OPT.GO, Buffer.alloc(200 << 10));
  t.equal(r.type, REP.ERR_TOO_BIG);
  const [list] = await c.option(OPT.STRUCTURED_REPLY);
  t.equal(list.type, REP.ACK, 'the connection is still in sync after skipping');
  c.close();

  const d = await RawClient.connect(srv.socket);
  await d.greeting();
  const header = encodeOption(OPT.GO);
  header.writeUInt32BE(0x7fffffff, 12);
  d.send(encodeClientFlags(3), header);
  t.ok(await d.closesWithin(2000), 'a 2 GiB option closes without being read');
});

t.test('NBD_OPT_EXPORT_NAME: padding without NO_ZEROES, close for an unknown name', async (t) => {
  const srv = await server(t);
  const c = await RawClient.connect(srv.socket);
  await c.greeting();
  c.send(encodeClientFlags(1), encodeOption(OPT.EXPORT_NAME));
  const reply = await c.read(10 + 124);
  t.equal(Number(reply.readBigUInt64BE(0)), SIZE);
  t.ok(reply.subarray(10).every((b) => b === 0), '124 zero bytes follow');
  c.request({ flags: 0, type: CMD.READ, cookie: 1n, offset: 0, length: 16 });
  const r = await c.reply(16);
  t.same([r.kind, replyError(r)], ['simple', 0], 'simple replies without structured negotiation');
  c.close();

  const d = await RawClient.connect(srv.socket);
  await d.greeting();
  d.send(encodeClientFlags(3), encodeOption(OPT.EXPORT_NAME, Buffer.from('nope')));
  t.ok(await d.closesWithin(2000), 'an unknown export name can only be answered by closing');
});

t.test('a bad request magic closes the connection', async (t) => {
  const srv = await server(t);
  const c = await RawClient.connect(srv.socket);
  await c.handshake();
  c.request({ magic: 0x12560953, flags: 0, type: CMD.READ, cookie: 1n, offset: 0, length: 512 });
  t.ok(await c.closesWithin(2000));
  await stillServes(t, srv);
});

t.test('unknown commands and flags get EINVAL with a message', async (t) => {
  const srv = await server(t);
  const c = await RawClient.connect(srv.socket);
  await c.handshake({ meta: true });
  const cases: [string, number, number, number][] = [
    ['unknown command 99', 99, 0, 0],
    ['NBD_CMD_RESIZE, never advertised', CMD.RESIZE, 0, 512],
    ['an undefined flag bit', CMD.READ, 1 << 9, 512],
    ['NO_HOLE on a read', CMD.READ, CMD_FLAG.NO_HOLE, 512],
    ['REQ_ONE on a read', CMD.READ, CMD_FLAG.REQ_ONE, 512],
    ['PAYLOAD_LEN without extended headers', CMD.READ, CMD_FLAG.PAYLOAD_LEN, 512],
    ['FLUSH with a length', CMD.FLUSH, 0, 512],
    ['BLOCK_STATUS of zero bytes', CMD.BLOCK_STATUS, 0, 0],
  ];
  let cookie = 100n;
  for (const [what, type, flags, length] of cases) {
    c.request({ flags, type, cookie: ++cookie, offset: 0, length });
    const [chunk] = await c.structuredReply();
    t.equal(chunk.cookie, cookie, `${what}: reply to the right cookie`);
    t.equal(chunk.payload.type, CHUNK.ERROR, `${what}: an ERROR chunk`);
    t.equal(replyError(chunk), NBD_ERR.EINVAL, `${what}: EINVAL`);
    t.match((chunk.payload as { message: string }).message, /\w+/, `${what}: with a message`);
  }
  await stillServes(t, srv);
  c.close();
});

t.test('hostile offsets and lengths get EINVAL or ENOSPC and the connection lives on', async (t) => {
  const srv = await server(t);
  const c = await RawClient.connect(srv.socket);
  await c.handshake({ meta: true });
  const cases: [string, number, number | bigint, number, number][] = [
    ['READ over the 32 MiB maximum', CMD.READ, 0, (32 << 20) + 1, NBD_ERR.EINVAL],
    ['READ at offset 2^64-1', CMD.READ, 2n ** 64n - 1n, 1, NBD_ERR.EINVAL],
    ['READ at offset 2^63', CMD.READ, 2n ** 63n, 4096, NBD_ERR.EINVAL],
    ['READ ending one byte past the end', CMD.READ, SIZE - 4095, 4096, NBD_ERR.EINVAL],
    ['TRIM of 4 GiB - 1', CMD.TRIM, 0, 0xffffffff, NBD_ERR.EINVAL],
    ['WRITE_ZEROES past the end', CMD.WRITE_ZEROES, SIZE, 1, NBD_ERR.ENOSPC],
    ['BLOCK_STATUS at offset 2^63', CMD.BLOCK_STATUS, 2n ** 63n, 512, NBD_ERR.EINVAL],
    ['CACHE past the end', CMD.CACHE, SIZE, 1, NBD_ERR.EINVAL],
  ];
  let cookie = 0n;
  for (const [what, type, offset, length, errno] of cases) {
    c.request({ flags: 0, type, cookie: ++cookie, offset, length });
    const [chunk] = await c.structuredReply();
    t.equal(replyError(chunk), errno, what);
  }
  c.request({ flags: 0, type: CMD.BLOCK_STATUS, cookie: ++cookie, offset: 0, length: 0xffffffff });
  const [status] = await c.structuredReply();
  t.equal(replyError(status), NBD_ERR.EINVAL, 'BLOCK_STATUS longer than the export: EINVAL');
  c.request({ flags: 0, type: CMD.BLOCK_STATUS, cookie: ++cookie, offset: 0, length: SIZE });
  const [whole] = await c.structuredReply();
  t.same(whole.payload, { type: CHUNK.BLOCK_STATUS, contextId: 1, extents: [{ length: SIZE, flags: 3 }] }, 'the whole export is one hole');
  c.close();
});

t.test('malformed option payloads get INVALID and the handshake goes on', async (t) => {
  const srv = await server(t);
  const c = await RawClient.connect(srv.socket);
  await c.greeting();
  c.send(encodeClientFlags(3));
  const lying = Buffer.alloc(10);
  lying.writeUInt32BE(1000, 0);
  const [go] = await c.option(OPT.GO, lying);
  t.equal(go.type, REP.ERR_INVALID, 'GO whose name length runs past the data');
  const [list] = await c.option(OPT.LIST, Buffer.from('x'));
  t.equal(list.type, REP.ERR_INVALID, 'LIST with data');
  const [meta] = await c.option(OPT.SET_META_CONTEXT, Buffer.alloc(8));
  t.equal(meta.type, REP.ERR_INVALID, 'SET_META_CONTEXT before structured replies');
  const [unknown] = await c.option(OPT.INFO, Buffer.from([0, 0, 0, 3, 0x61, 0x62, 0x63, 0, 0]));
  t.equal(unknown.type, REP.ERR_UNKNOWN, 'INFO for an export that does not exist');
  const replies = await c.option(OPT.GO, Buffer.from([0, 0, 0, 0, 0, 0]));
  t.equal(replies.at(-1)!.type, REP.ACK, 'GO for the default export still succeeds afterwards');
  c.close();
});

t.test('WRITE over the maximum payload: EINVAL after the payload; absurd ones close', async (t) => {
  const srv = await server(t);
  const c = await RawClient.connect(srv.socket);
  await c.handshake();
  const big = (32 << 20) + 4096;
  c.request({ flags: 0, type: CMD.WRITE, cookie: 1n, offset: 0, length: big }, Buffer.alloc(big, 0xee));
  const [chunk] = await c.structuredReply();
  t.equal(replyError(chunk), NBD_ERR.EINVAL, 'EINVAL');
  c.request({ flags: 0, type: CMD.READ, cookie: 2n, offset: 0, length: 4096 });
  const read = await c.structuredReply();
  t.equal(read[0].cookie, 2n, 'the stream is still in sync: the payload was consumed');
  t.same(read[0].payload.type === CHUNK.OFFSET_HOLE || read[0].payload.type === CHUNK.OFFSET_DATA, true);
  const onDisk = fs.readFileSync(srv.file).subarray(0, 4096);
  t.ok(onDisk.every((b) => b === 0), 'nothing of the oversized write reached the image');
  c.close();

  const d = await RawClient.connect(srv.socket);
  await d.handshake();
  d.request({ flags: 0, type: CMD.WRITE, cookie: 3n, offset: 0, length: 0xffffffff });
  t.ok(await d.closesWithin(2000), 'a 4 GiB write closes the connection without reading it');
  await stillServes(t, srv);
});

t.test('a client that vanishes mid-request leaves the server serving others', async (t) => {
  const srv = await server(t);
  const other = await RawClient.connect(srv.socket);
  await other.handshake();
  const c = await RawClient.connect(srv.socket);
  await c.handshake();
  c.request({ flags: 0, type: CMD.WRITE, cookie: 1n, offset: 0, length: 1 << 20 }, Buffer.alloc(300 << 10, 1));
  await new Promise((r) => setTimeout(r, 100));
  c.close();
  const d = await RawClient.connect(srv.socket);
  d.send(Buffer.from('garbage that is not a handshake at all'));
  d.close();
  other.request({ flags: 0, type: CMD.READ, cookie: 5n, offset: 0, length: 4096 });
  t.equal((await other.structuredReply())[0].cookie, 5n, 'an open connection carries on');
  await stillServes(t, srv);
  other.close();
});

t.test('many requests pipelined at once are all answered', async (t) => {
  const srv = await server(t, ['--max-inflight', '8']);
  const c = await RawClient.connect(srv.socket);
  await c.handshake({ structured: false });
  const n = 500;
  const payload = Buffer.alloc(4096, 0x42);
  for (let i = 0; i < n; i++) {
    const type = i % 2 ? CMD.READ : CMD.WRITE;
    c.request({ flags: 0, type, cookie: BigInt(i), offset: (i >> 1) * 4096, length: 4096 }, type === CMD.WRITE ? payload : undefined);
  }
  const seen = new Set<bigint>();
  for (let i = 0; i < n; i++) {
    // Writes and reads are told apart by the cookie's parity.
    const r = await c.reply(0);
    if (r.kind === 'simple' && r.cookie % 2n === 1n) await c.read(4096);
    t.equal(replyError(r), 0);
    seen.add(r.cookie);
  }
  t.equal(seen.size, n, 'one reply per request');
  c.close();
});

t.test('large writes pipelined past the in-flight bound keep their bytes in order', async (t) => {
  // The threads engine completes writes later than the loop turns, so the
  // socket is paused at the bound with bytes in its buffer while payloads
  // are still being read (straight from the socket where that is safe).
  const srv = await server(t, ['--max-inflight', '4', '--engine', 'threads']);
  const c = await RawClient.connect(srv.socket);
  await c.handshake({ structured: false });
  const n = 64;
  const size = 200_000;
  const fill = (i: number): Buffer => Buffer.alloc(size, (i * 37) % 251);
  for (let i = 0; i < n; i++) c.request({ flags: 0, type: CMD.WRITE, cookie: BigInt(i), offset: i * size, length: size }, fill(i));
  for (let i = 0; i < n; i++) t.equal(replyError(await c.reply(0)), 0, `write reply ${i}`);
  c.close();
  const content = fs.readFileSync(srv.file);
  for (let i = 0; i < n; i++) t.ok(content.subarray(i * size, (i + 1) * size).equals(fill(i)), `write ${i} landed whole and in place`);
});

t.test('DISC answers what is in flight, then closes', async (t) => {
  const srv = await server(t);
  const c = await RawClient.connect(srv.socket);
  await c.handshake();
  for (let i = 0; i < 4; i++) c.request({ flags: 0, type: CMD.READ, cookie: BigInt(i), offset: i << 20, length: 1 << 20 });
  c.request({ flags: 0, type: CMD.DISC, cookie: 99n, offset: 0, length: 0 });
  const cookies = [];
  for (let i = 0; i < 4; i++) cookies.push((await c.structuredReply())[0].cookie);
  t.same(cookies.sort(), [0n, 1n, 2n, 3n], 'every read before DISC is answered');
  t.ok(await c.closesWithin(2000), 'then the server closes');
});

t.test('a client that never finishes the handshake is cut off', async (t) => {
  const srv = await server(t, ['--handshake-timeout', '0.3']);
  const c = await RawClient.connect(srv.socket);
  await c.greeting();
  t.ok(await c.closesWithin(3000), 'closed after the handshake timeout');
  await stillServes(t, srv);
});
