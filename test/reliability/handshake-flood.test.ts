// A client that floods the handshake with options and never reads the
// replies must not grow the server. The server stops reading options
// while the replies it has queued for a client reach a bound, and hangs
// up on a client that sends more options than any real client needs.
// The figures are the server's RSS (VmRSS in /proc) before and after each
// flood; they are printed, and their growth must stay far below what the
// flood would cost if it were answered in memory (hundreds of MB).

import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import t, { type Test } from 'tap';
import { CMD, OPT, REP } from '../../src/protocol/nbd/constants.js';
import { encodeClientFlags, encodeInfoRequest, encodeOption } from '../../src/protocol/nbd/handshake-codec.js';
import { RawClient } from '../helpers/nbd-client.js';
import { serve, tempDir, type Served } from '../helpers/server.js';
import { run } from '../helpers/tools.js';

const MB = 1 << 20;
const SIZE = 8 * MB;
/** Growth that would show the flood being answered in memory; a bounded server stays far below it. */
const MAX_GROWTH = 64 * MB;

function image(t: Test): string {
  const file = path.join(tempDir(t), 'disk.img');
  fs.writeFileSync(file, '');
  fs.truncateSync(file, SIZE);
  return file;
}

function rss(srv: Served): number {
  const status = fs.readFileSync(`/proc/${srv.proc.pid}/status`, 'utf8');
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)![1]) * 1024;
}

function mb(bytes: number): string {
  return `${(bytes / MB).toFixed(1)} MB`;
}

/** A fresh connection completes the handshake and reads a block. */
async function stillServes(t: Test, srv: Served): Promise<void> {
  const c = await RawClient.connect(srv.socket);
  c.timeoutMs = 60_000; // a server answering a flood in memory takes its time; let that show in the figures
  const { size } = await c.handshake();
  t.equal(size, SIZE, 'another client completes the handshake');
  c.request({ flags: 0, type: CMD.READ, cookie: 1n, offset: 0, length: 4096 });
  const [chunk] = await c.structuredReply();
  t.equal(chunk.cookie, 1n, 'and gets its read answered');
  c.close();
}

/**
 * Sends the client flags and then `flood` on a socket that never reads.
 * Resolves 'closed' if the server hangs up, 'consumed' if it took the
 * whole flood instead.
 */
function flood(socketPath: string, options: Buffer): Promise<'closed' | 'consumed'> {
  return new Promise((resolve) => {
    const socket = net.connect(socketPath);
    socket.pause();
    socket.on('error', () => undefined);
    socket.on('close', () => resolve('closed'));
    socket.write(encodeClientFlags(3));
    socket.write(options, (err) => {
      if (err) return;
      resolve('consumed');
      socket.destroy();
    });
  });
}

t.test('floods of NBD_OPT_LIST and NBD_OPT_INFO from a client that never reads: cut off, RSS bounded', async (t) => {
  // Only the option limit may end these connections, not the handshake timeout.
  const srv = await serve(t, [image(t), '--handshake-timeout', '600']);
  const floods = [
    { name: 'NBD_OPT_LIST', option: encodeOption(OPT.LIST) },
    { name: 'NBD_OPT_INFO', option: encodeOption(OPT.INFO, encodeInfoRequest({ name: '', requests: [] })) },
  ];
  for (const { name, option } of floods) {
    const bytes = Buffer.concat(Array<Buffer>(Math.ceil((8 * MB) / option.length)).fill(option));
    const before = rss(srv);
    const outcome = await flood(srv.socket, bytes);
    await stillServes(t, srv);
    const after = rss(srv);
    t.comment(`${name}: ${mb(bytes.length)} of options; server RSS ${mb(before)} before, ${mb(after)} after (+${mb(after - before)})`);
    t.equal(outcome, 'closed', `${name}: the server hangs up before taking the whole flood`);
    t.ok(after - before < MAX_GROWTH, `${name}: RSS grew by ${mb(after - before)}, less than ${mb(MAX_GROWTH)}`);
  }
  const cut = srv.logs().filter((l) => l.msg === 'closing connection: too many options');
  t.equal(cut.length, floods.length, 'each cut is logged');
  t.match(cut[0], { level: 40, reason: /more than \d+ options/ }, 'as a warning that says why');
});

t.test('a client that sends many options before reading any reply gets them all, and RSS stays bounded', async (t) => {
  // LIST replies are large when there are many exports with long names:
  // 128 names of 4000 bytes make each reply half a megabyte, so the
  // options below would queue about 250 MB if nothing held them back.
  const file = image(t);
  const names = Array.from({ length: 128 }, (_, i) => `${String(i).padStart(4, '0')}${'n'.repeat(3996)}`);
  const srv = await serve(t, [file, ...names.flatMap((n) => ['--export', `${n}=${file}`]), '--read-only', '--handshake-timeout', '600']);
  const lists = 500;
  const before = rss(srv);
  const c = await RawClient.connect(srv.socket);
  await c.greeting();
  c.socket.pause();
  c.send(encodeClientFlags(3), ...Array<Buffer>(lists).fill(encodeOption(OPT.LIST)));
  // Once another client is served, the server has worked through what it read.
  await stillServes(t, srv);
  const after = rss(srv);
  t.comment(`${lists} x NBD_OPT_LIST over ${names.length + 1} exports unread: server RSS ${mb(before)} before, ${mb(after)} after (+${mb(after - before)})`);
  t.ok(after - before < MAX_GROWTH, `RSS grew by ${mb(after - before)}, less than ${mb(MAX_GROWTH)}`);

  c.socket.resume();
  let servers = 0;
  let acks = 0;
  while (acks < lists) {
    const r = await c.optionReply();
    if (r.type === REP.SERVER) servers++;
    else if (r.type === REP.ACK) acks++;
    else t.fail(`unexpected reply type 0x${r.type.toString(16)}`);
  }
  t.equal(servers, lists * (names.length + 1), 'every reply arrives once the client reads');
  const go = await c.option(OPT.GO, encodeInfoRequest({ name: names[7], requests: [] }));
  t.equal(go[go.length - 1].type, REP.ACK, 'and the connection goes on to transmission');
  c.close();
});

t.test('the option limit leaves room for real clients: nbdinfo --list over 100 exports', async (t) => {
  // nbdinfo asks for INFO and LIST_META_CONTEXT of every export on one
  // connection: about 200 options here.
  const file = image(t);
  const names = Array.from({ length: 100 }, (_, i) => `export-${i}`);
  const srv = await serve(t, [file, ...names.flatMap((n) => ['--export', `${n}=${file}`]), '--read-only']);
  const r = await run('nbdinfo', ['--list', '--json', srv.uri()]);
  t.equal(r.code, 0, `nbdinfo --list succeeds ${r.stderr}`);
  const listed = (JSON.parse(r.stdout) as { exports: { 'export-name': string; 'export-size': number }[] }).exports;
  t.equal(listed.length, names.length + 1, 'every export is listed');
  t.ok(listed.every((e) => e['export-size'] === SIZE), 'each with its size');
  t.notOk(srv.logs().some((l) => l.msg === 'closing connection: too many options'), 'and no connection is cut');
});
