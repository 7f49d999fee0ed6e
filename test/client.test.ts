// vblk/client against vblk and against qemu-nbd: every command and flag,
// many requests in flight, errors, listing and info, TLS (X.509 and PSK,
// against vblk and against qemu-nbd, whose TLS nobody here wrote; the fuzz
// suite over TLS), several connections.
// What the client writes is checked with qemu-img and nbdinfo, and what
// it reads is compared with the image file itself.

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { connect, connectMany, exportInfo, listExports, STATE_HOLE, STATE_ZERO, type BlockExtent, type NbdClient, type NbdError } from '../src/client/index.js';
import { serve, tempDir, vblk } from './helpers/server.js';
import { makeTlsCreds, type TlsCreds } from './helpers/tls-creds.js';
import { requireTool, run } from './helpers/tools.js';

const SIZE = 16 << 20;

function image(t: Test, size = SIZE): string {
  const file = path.join(tempDir(t), 'disk.img');
  fs.writeFileSync(file, '');
  fs.truncateSync(file, size);
  return file;
}

async function waitFor(file: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fs.existsSync(file)) {
    if (Date.now() > deadline) throw new Error(`${file} did not appear`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** qemu-nbd in the foreground on a UNIX socket, killed when the test ends. */
async function qemuNbd(t: Test, args: string[], file: string): Promise<string> {
  requireTool('qemu-nbd');
  const sock = path.join(tempDir(t, 'vblk-qn-'), 'q.sock');
  const proc = spawn('qemu-nbd', ['-f', 'raw', '-k', sock, '-t', '-e', '4', '--discard=unmap', ...args, file], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr!.on('data', (d) => (stderr += d));
  t.teardown(() => {
    if (proc.exitCode === null) proc.kill('SIGKILL');
  });
  await waitFor(sock).catch((err: Error) => {
    throw new Error(`${err.message}: ${stderr}`);
  });
  return sock;
}

/** Every command through the client, checked against the file and qemu-img. */
async function exercise(t: Test, disk: NbdClient, file: string, uri: string): Promise<void> {
  t.equal(disk.size, SIZE, 'size');
  const a = crypto.randomBytes(64 << 10);
  await disk.write(0, a);
  await disk.write(1 << 20, a, { fua: true });
  t.same(await disk.read(0, a.length), a, 'read back what was written');
  t.same(await disk.read(1 << 20, 4096, { df: true }), a.subarray(0, 4096), 'a DF read');

  // 128 requests at once, reads and writes mixed: each answer is its own.
  const blocks = Array.from({ length: 64 }, (_, i) => crypto.randomBytes(4096).fill(i, 0, 1));
  await Promise.all(blocks.map((b, i) => disk.write(4 << 20 | (i * 4096), b)));
  const back = await Promise.all(blocks.map((_, i) => disk.read(4 << 20 | (i * 4096), 4096)));
  t.ok(back.every((b, i) => b.equals(blocks[i])), '64 reads in flight each got their own block');

  await disk.zero(0, 32 << 10);
  await disk.zero(32 << 10, 32 << 10, { noHole: true, fua: true });
  await disk.trim(1 << 20, 64 << 10);
  await disk.cache(0, 1 << 20);
  await disk.flush();
  t.same(await disk.read(0, 64 << 10), Buffer.alloc(64 << 10), 'zeroed');
  if (disk.canFastZero) {
    await disk.zero(8 << 20, 1 << 20, { fastZero: true }).catch((err: NbdError) => t.equal(err.code, 'ENOTSUP', 'FAST_ZERO fails only with ENOTSUP'));
  }

  const status = await disk.blockStatus(0, SIZE);
  const extents = status.get('base:allocation')!;
  t.equal(extents.reduce((n, e) => n + e.length, 0), SIZE, 'base:allocation covers the disk');
  const one = await disk.blockStatus(0, SIZE, { reqOne: true });
  t.equal(one.get('base:allocation')!.length, 1, 'REQ_ONE: one extent');
  t.ok(extents.some((e) => e.flags & STATE_HOLE) && extents.some((e) => (e.flags & STATE_ZERO) === 0), 'holes and data');

  const theirs = JSON.parse((await run('nbdinfo', ['--map', '--json', uri])).stdout) as { length: number; type: number }[];
  t.same(runs(extents), runs(theirs.map((e) => ({ length: e.length, flags: e.type }))), 'the same map as nbdinfo --map');

  await t.rejects(disk.read(SIZE - 512, 4096), { name: 'NbdError', code: 'EINVAL' }, 'a read past the end: EINVAL');
  const still = await disk.read(4 << 20, 4096);
  t.same(still, blocks[0], 'the connection serves on after an error');

  await disk.disconnect();
  const onDisk = fs.readFileSync(file);
  t.same(onDisk.subarray(4 << 20, (4 << 20) + 4096), blocks[0], 'the file holds the writes');
  t.same(onDisk.subarray(64 << 10, 128 << 10), Buffer.alloc(64 << 10), 'and the trim');
}

/** Extents with neighbours of the same status joined. */
function runs(extents: BlockExtent[]): BlockExtent[] {
  const out: BlockExtent[] = [];
  for (const e of extents) {
    const last = out.at(-1);
    if (last && last.flags === e.flags) last.length += e.length;
    else out.push({ ...e });
  }
  return out;
}

t.test('against vblk: every command, flags, errors, data checked on disk', async (t) => {
  const file = image(t);
  const srv = await serve(t, [file]);
  const disk = await connect(srv.uri());
  t.ok(disk.info.extendedHeaders, 'extended headers negotiated');
  await exercise(t, disk, file, srv.uri());
});

t.test('against vblk with compact headers (extendedHeaders: false): structured replies, the same results', async (t) => {
  const file = image(t);
  const srv = await serve(t, [file]);
  const disk = await connect(srv.uri(), { extendedHeaders: false });
  t.ok(disk.info.structuredReplies && !disk.info.extendedHeaders, 'structured replies, compact headers');
  await exercise(t, disk, file, srv.uri());
});

t.test('extended headers: 64-bit lengths and BLOCK_STATUS filtered to one context on an 8 GiB sparse export', async (t) => {
  const GiB = 2 ** 30;
  const srv = await serve(t, ['memory:8G']);
  const disk = await connect(srv.uri(), { metaContexts: ['base:allocation', 'qemu:allocation-depth'] });
  t.ok(disk.info.extendedHeaders);
  await disk.write(5 * GiB, Buffer.alloc(65536, 1));
  await disk.zero(0, 5 * GiB, { noHole: false });
  const status = await disk.blockStatus(0, 6 * GiB);
  const base = status.get('base:allocation')!;
  t.ok(base[0].length >= 5 * GiB && base[0].flags & STATE_ZERO, `one zero extent of ${base[0].length} bytes, past 2^32`);
  t.same([...status.keys()].sort(), ['base:allocation', 'qemu:allocation-depth'], 'both contexts');
  const filtered = await disk.blockStatus(0, 6 * GiB, { contexts: ['qemu:allocation-depth'] });
  t.same([...filtered.keys()], ['qemu:allocation-depth'], 'PAYLOAD_LEN: only the context asked for');
  await t.rejects(disk.read(0, 2 ** 32 + 512), { name: 'NbdError' }, 'a read beyond any payload is refused by the server');
  t.same(await disk.read(5 * GiB, 512), Buffer.alloc(512, 1), 'and the connection goes on');
  await disk.disconnect();
  const compact = await connect(srv.uri(), { extendedHeaders: false });
  await t.rejects(compact.zero(0, 5 * GiB), /needs extended headers/, 'a compact client cannot even ask');
  await compact.disconnect();
});

t.test('against qemu-nbd: the same', async (t) => {
  const file = image(t);
  const sock = await qemuNbd(t, [], file);
  const uri = `nbd+unix:///?socket=${sock}`;
  const disk = await connect(uri);
  t.notOk(disk.info.extendedHeaders, 'qemu 7.2 has no extended headers: structured replies instead');
  await exercise(t, disk, file, uri);
});

t.test('without structured replies: simple replies, no block status', async (t) => {
  const srv = await serve(t, [image(t)]);
  const disk = await connect(srv.uri(), { structuredReplies: false });
  t.notOk(disk.info.structuredReplies);
  await disk.write(4096, Buffer.alloc(4096, 7));
  t.same(await disk.read(4096, 4096), Buffer.alloc(4096, 7));
  await t.rejects(disk.read(SIZE, 512), { code: 'EINVAL' });
  await t.rejects(disk.blockStatus(0, 4096), /no meta context/);
  await disk.disconnect();
});

t.test('disconnect() with requests in flight: every one is answered and in the file, then DISC', async (t) => {
  const file = image(t);
  const srv = await serve(t, [file]);
  const disk = await connect(srv.uri());
  const writes = Array.from({ length: 32 }, (_, i) => disk.write(i * 65536, Buffer.alloc(65536, i + 1)));
  await disk.disconnect();
  const settled = await Promise.allSettled(writes);
  t.ok(settled.every((r) => r.status === 'fulfilled'), 'all 32 writes succeeded');
  await t.rejects(disk.read(0, 512), /disconnecting|closed/, 'nothing is sent after');
  const sawDisc = (): boolean => srv.logs().some((l) => l.msg === 'connection closed' && l.reason === 'client sent NBD_CMD_DISC');
  for (let i = 0; i < 100 && !sawDisc(); i++) await new Promise((r) => setTimeout(r, 20));
  t.ok(sawDisc(), 'the server saw DISC');
  const data = fs.readFileSync(file);
  t.ok(Array.from({ length: 32 }, (_, i) => data[i * 65536] === i + 1).every(Boolean), 'every write is in the file');
});

t.test('read-only export: EPERM on writes', async (t) => {
  const srv = await serve(t, [image(t), '--read-only']);
  const disk = await connect(srv.uri());
  t.ok(disk.readOnly);
  await t.rejects(disk.write(0, Buffer.alloc(512)), { name: 'NbdError', code: 'EPERM' });
  await disk.disconnect();
});

t.test('listExports and exportInfo agree with nbdinfo', async (t) => {
  const srv = await serve(t, [image(t), '--export', `two=${image(t, 4 << 20)}`, '--description', 'two=the second']);
  const listed = await listExports(srv.uri());
  const theirs = JSON.parse((await run('nbdinfo', ['--list', '--json', srv.uri()])).stdout) as { exports: { 'export-name': string; description?: string; 'export-size': number }[] };
  t.same(listed.map((e) => e.name).sort(), theirs.exports.map((e) => e['export-name']).sort(), 'the same names');
  const info = await exportInfo(srv.uri('two'));
  t.equal(info.size, 4 << 20);
  t.equal(info.description, 'the second');
  t.ok(info.metaContexts.includes('base:allocation'), `contexts: ${info.metaContexts.join(', ')}`);
  await t.rejects(exportInfo(srv.uri('missing')), { name: 'OptionError', code: 'NBD_REP_ERR_UNKNOWN' });
  await t.rejects(connect(srv.uri('missing')), /NBD_REP_ERR_UNKNOWN/);
});

t.test('connectMany: several connections when the export allows it', async (t) => {
  const file = image(t);
  const srv = await serve(t, [file]);
  const conns = await connectMany(srv.uri(), 4);
  t.equal(conns.length, conns[0].canMultiConn ? 4 : 1, 'as many as CAN_MULTI_CONN allows');
  await Promise.all(conns.map((c, i) => c.write(i * 65536, Buffer.alloc(65536, i + 1))));
  await conns[0].flush();
  const data = await conns[conns.length - 1].read(0, conns.length * 65536);
  t.ok(conns.every((_, i) => data[i * 65536] === i + 1), 'each connection sees the others’ writes');
  await Promise.all(conns.map((c) => c.disconnect()));
});

interface TlsServer {
  name: string;
  /** Starts it on a fresh image; returns the socket and the image. */
  start(t: Test): Promise<{ sock: string; file: string }>;
  /** The query that authenticates a good client, and one that must be refused. */
  good: string;
  bad: string;
}

function tlsServers(creds: TlsCreds): TlsServer[] {
  const pskDir = path.dirname(creds.pskFile);
  const vblkServer = (args: string[]) => async (t: Test) => {
    const file = image(t);
    const srv = await serve(t, [file, '--tls', 'require', ...args]);
    return { sock: srv.socket, file };
  };
  const qemuServer = (object: string) => async (t: Test) => {
    const file = image(t);
    return { sock: await qemuNbd(t, ['--object', object, '--tls-creds', 'tls0'], file), file };
  };
  const x509 = { good: `tls-certificates=${creds.client}`, bad: `tls-certificates=${creds.stranger}` };
  const psk = { good: `tls-psk-file=${creds.pskFile}&tls-username=${creds.pskUser}`, bad: `tls-psk-file=${creds.wrongPskFile}&tls-username=${creds.pskUser}` };
  return [
    { name: 'vblk --tls-certs --tls-verify-peer', start: vblkServer(['--tls-certs', creds.server, '--tls-verify-peer']), ...x509 },
    { name: 'vblk --tls-psk', start: vblkServer(['--tls-psk', creds.pskFile]), ...psk },
    { name: 'qemu-nbd tls-creds-x509 verify-peer', start: qemuServer(`tls-creds-x509,id=tls0,endpoint=server,verify-peer=on,dir=${creds.server}`), ...x509 },
    { name: 'qemu-nbd tls-creds-psk', start: qemuServer(`tls-creds-psk,id=tls0,endpoint=server,dir=${pskDir}`), ...psk },
  ];
}

t.test('TLS: X.509 and PSK against vblk and qemu-nbd; refusals', async (t) => {
  const creds = await makeTlsCreds(tempDir(t));
  for (const server of tlsServers(creds)) {
    await t.test(server.name, async (t) => {
      const { sock, file } = await server.start(t);
      const uri = `nbds+unix:///?socket=${sock}&${server.good}`;
      const disk = await connect(uri);
      t.ok(disk.info.tls?.protocol, `TLS: ${JSON.stringify(disk.info.tls)}`);
      const data = crypto.randomBytes(1 << 20);
      await disk.write(0, data, { fua: true });
      t.same(await disk.read(0, data.length), data, 'a 1 MiB write reads back');
      await disk.disconnect();
      t.same(fs.readFileSync(file).subarray(0, data.length), data, 'and is in the file');
      t.same((await listExports(uri)).map((e) => e.name), [''], 'listing over TLS');
      await t.rejects(connect(`nbd+unix:///?socket=${sock}`), { name: 'OptionError', code: 'NBD_REP_ERR_TLS_REQD' }, 'plain text: TLS required');
      await t.rejects(connect(`nbds+unix:///?socket=${sock}&${server.bad}`), /TLS|closed/, 'the wrong credentials are refused');
    });
  }
});

t.test("tls: 'allow' upgrades where the server offers TLS and goes on in plain text where it does not", async (t) => {
  const creds = await makeTlsCreds(tempDir(t));
  const plain = await serve(t, [image(t)]);
  const offered = await serve(t, [image(t), '--tls', 'on', '--tls-certs', creds.server]);
  const tlsOptions = { certificates: creds.client };
  const a = await connect(plain.uri(), { tls: 'allow', tlsOptions });
  t.equal(a.info.tls, null, 'STARTTLS refused (UNSUP): plain text');
  await a.disconnect();
  const b = await connect(offered.uri(), { tls: 'allow', tlsOptions });
  t.ok(b.info.tls, 'STARTTLS offered: TLS');
  await b.disconnect();
  await t.rejects(connect(plain.uri(), { tls: 'require', tlsOptions }), { name: 'OptionError', code: 'NBD_REP_ERR_UNSUP' }, "'require' does not fall back");
});

t.test('the PSK username as the URI user, as libnbd writes it', async (t) => {
  const creds = await makeTlsCreds(tempDir(t));
  const srv = await serve(t, [image(t), '--tls', 'require', '--tls-psk', creds.pskFile]);
  const disk = await connect(`nbds+unix://${creds.pskUser}@/?socket=${srv.socket}&tls-psk-file=${creds.pskFile}`);
  t.ok(disk.info.tls);
  await disk.disconnect();
});

t.test('vblk fuzz over TLS: the model suite through STARTTLS on every connection finds nothing in vblk', async (t) => {
  const creds = await makeTlsCreds(tempDir(t));
  const srv = await serve(t, [image(t), '--tls', 'require', '--tls-certs', creds.server, '--tls-verify-peer']);
  const r = await vblk(['fuzz', `nbds+unix:///?socket=${srv.socket}&tls-certificates=${creds.client}`, '--destructive', '--seconds', '8', '--seed', '7']);
  t.equal(r.code, 0, r.stdout.slice(-2000));
  t.match(r.stdout, /fuzzing nbds\+unix:/, 'over TLS');
  t.ok(srv.logs().filter((l) => l.msg === 'TLS established').length > 3, 'every fuzz connection upgraded');
  const plain = await vblk(['fuzz', `nbds+unix:///?socket=${srv.socket}&tls-certificates=${creds.stranger}`, '--seconds', '2', '--seed', '7']);
  t.not(plain.code, 0, 'a fuzzer with a certificate the server refuses gets nowhere');
});
