// With --send-file, large reads from a raw image in the page cache leave
// from the file itself (sendfile): the bytes reach the client as the
// file's pages, by reference. What that must not change: a read answers
// with the data as it was when the read ran, even when a write to the
// same range comes after it while the client has not read the reply yet
// (from another connection on the same event loop, which then waits, or
// from the same one); holes still come as OFFSET_HOLE chunks; simple
// replies carry the same bytes. Without the option the reply is a copy,
// and a write need not wait for it.

import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t, { type Test } from 'tap';
import { CHUNK, CMD } from '../src/protocol/nbd/constants.js';
import { RawClient, type Reply } from './helpers/nbd-client.js';
import { serve, tempDir, type Served } from './helpers/server.js';

const MIB = 1 << 20;
/**
 * Where in a 1 MiB read the writes go: its last page. A paused Node socket
 * still reads up to its high-water mark from the kernel, so the start of
 * a reply may already be in the client's memory.
 */
const LAST_PAGE = MIB - 4096;
type Chunk = Extract<Reply, { kind: 'chunk' }>;

/** A 4 MiB raw image: 0xAA everywhere but a hole at [1.25 MiB, 1.75 MiB), served with --send-file unless `args` say otherwise. */
async function server(t: Test, args: string[] = ['--send-file']): Promise<Served> {
  const file = path.join(tempDir(t), 'disk.raw');
  fs.writeFileSync(file, Buffer.alloc(4 * MIB, 0xaa));
  const fd = fs.openSync(file, 'r+');
  // Re-create the middle as a hole: truncate and write back around it.
  fs.ftruncateSync(fd, 0);
  fs.writeSync(fd, Buffer.alloc(1.25 * MIB, 0xaa), 0, 1.25 * MIB, 0);
  fs.writeSync(fd, Buffer.alloc(2.25 * MIB, 0xaa), 0, 2.25 * MIB, 1.75 * MIB);
  fs.closeSync(fd);
  return serve(t, [file, ...args]);
}

async function connect(t: Test, srv: Served, structured = true): Promise<RawClient> {
  const c = await RawClient.connect(srv.socket);
  t.teardown(() => c.close());
  await c.handshake({ structured });
  return c;
}

/** The bytes of a structured read reply, holes as zeroes, and the chunk types in order. */
function assemble(chunks: Chunk[], offset: number, length: number): { data: Buffer; types: number[] } {
  const data = Buffer.alloc(length, 0x55);
  for (const c of chunks) {
    const p = c.payload as { type: number; offset?: number; data?: Buffer; size?: number };
    if (p.type === CHUNK.OFFSET_DATA) p.data!.copy(data, p.offset! - offset);
    else if (p.type === CHUNK.OFFSET_HOLE) data.fill(0, p.offset! - offset, p.offset! - offset + p.size!);
  }
  return { data, types: chunks.map((c) => (c.payload as { type: number }).type) };
}

function uniform(buffer: Buffer, byte: number): boolean {
  return buffer.every((b) => b === byte);
}

t.test('a read over data and a hole: OFFSET_DATA, OFFSET_HOLE, OFFSET_DATA with the file\'s bytes', async (t) => {
  const srv = await server(t);
  const c = await connect(t, srv);
  c.request({ flags: 0, type: CMD.READ, cookie: 1n, offset: MIB, length: 2 * MIB });
  const { data, types } = assemble(await c.structuredReply(), MIB, 2 * MIB);
  t.same(types, [CHUNK.OFFSET_DATA, CHUNK.OFFSET_HOLE, CHUNK.OFFSET_DATA]);
  t.ok(uniform(data.subarray(0, MIB / 4), 0xaa), 'data before the hole');
  t.ok(uniform(data.subarray(MIB / 4, (3 * MIB) / 4), 0), 'the hole reads as zeroes');
  t.ok(uniform(data.subarray((3 * MIB) / 4), 0xaa), 'data after the hole');
});

t.test('a simple reply carries the same bytes, the hole as zeroes', async (t) => {
  const srv = await server(t);
  const c = await connect(t, srv, false);
  c.request({ flags: 0, type: CMD.READ, cookie: 1n, offset: MIB, length: 2 * MIB });
  const r = await c.reply(2 * MIB);
  if (r.kind !== 'simple') throw new Error('a structured reply where none was agreed');
  t.equal(r.error, 0);
  t.ok(uniform(r.data.subarray(0, MIB / 4), 0xaa) && uniform(r.data.subarray(MIB / 4, (3 * MIB) / 4), 0) && uniform(r.data.subarray((3 * MIB) / 4), 0xaa));
});

// Overlapping requests are ordered among the connections of one event
// loop (server/nbd/loops.ts): with --threads 1 both connections share it.
t.test('a write from another connection waits until the client has read the reply, which keeps the old data', async (t) => {
  const srv = await server(t, ['--send-file', '--threads', '1']);
  const reader = await connect(t, srv);
  const writer = await connect(t, srv);
  reader.socket.pause(); // the reply stays in the socket, unread
  reader.request({ flags: 0, type: CMD.READ, cookie: 1n, offset: 2 * MIB, length: MIB });
  await sleep(200);
  writer.request({ flags: 0, type: CMD.WRITE, cookie: 2n, offset: LAST_PAGE + 2 * MIB, length: 4096 }, Buffer.alloc(4096, 0xbb));
  const written = writer.reply();
  let done = false;
  void written.then(() => (done = true));
  await sleep(500);
  t.notOk(done, 'the overlapping write has not run while the read reply is unread');
  reader.socket.resume();
  const { data } = assemble(await reader.structuredReply(), 2 * MIB, MIB);
  t.ok(uniform(data, 0xaa), 'the read answers with the data from before the write');
  t.same(await written, { kind: 'simple', error: 0, cookie: 2n, data: Buffer.alloc(0) }, 'then the write completes');
  writer.request({ flags: 0, type: CMD.READ, cookie: 3n, offset: 2 * MIB, length: MIB });
  const after = assemble(await writer.structuredReply(), 2 * MIB, MIB).data;
  t.ok(uniform(after.subarray(0, LAST_PAGE), 0xaa) && uniform(after.subarray(LAST_PAGE), 0xbb), 'and a later read sees it');
});

t.test('without --send-file the reply is a copy: a write from another connection does not wait for the client to read it', async (t) => {
  const srv = await server(t, ['--threads', '1']);
  const reader = await connect(t, srv);
  const writer = await connect(t, srv);
  reader.socket.pause();
  reader.request({ flags: 0, type: CMD.READ, cookie: 1n, offset: 2 * MIB, length: MIB });
  await sleep(200);
  writer.request({ flags: 0, type: CMD.WRITE, cookie: 2n, offset: LAST_PAGE + 2 * MIB, length: 4096 }, Buffer.alloc(4096, 0xbb));
  t.same(await writer.reply(), { kind: 'simple', error: 0, cookie: 2n, data: Buffer.alloc(0) }, 'the write completes while the read reply is unread');
  reader.socket.resume();
  const { data } = assemble(await reader.structuredReply(), 2 * MIB, MIB);
  t.ok(uniform(data, 0xaa), 'the read answers with the data from before the write');
});

t.test('a write sent on the same connection right after the read does not show in the read', async (t) => {
  const srv = await server(t);
  const c = await connect(t, srv);
  c.socket.pause();
  c.request({ flags: 0, type: CMD.READ, cookie: 1n, offset: 0, length: MIB });
  c.request({ flags: 0, type: CMD.WRITE, cookie: 2n, offset: LAST_PAGE, length: 4096 }, Buffer.alloc(4096, 0xbb));
  await sleep(500);
  c.socket.resume();
  const { data } = assemble(await c.structuredReply(), 0, MIB);
  t.ok(uniform(data, 0xaa), 'the read has the data from before the write');
  t.same(await c.reply(), { kind: 'simple', error: 0, cookie: 2n, data: Buffer.alloc(0) }, 'the write completes after it');
});

t.test('a client that goes away with replies unread releases the range', async (t) => {
  const srv = await server(t);
  const gone = await connect(t, srv);
  gone.socket.pause();
  gone.request({ flags: 0, type: CMD.READ, cookie: 1n, offset: 3 * MIB, length: MIB });
  await sleep(200);
  gone.close();
  const c = await connect(t, srv);
  c.request({ flags: 0, type: CMD.WRITE, cookie: 2n, offset: 3 * MIB, length: 4096 }, Buffer.alloc(4096, 0xbb));
  t.same(await c.reply(), { kind: 'simple', error: 0, cookie: 2n, data: Buffer.alloc(0) }, 'a write to the range goes through');
});
