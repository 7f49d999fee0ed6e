// vblk/client against vblk and against qemu-nbd: every command and flag,
// many requests in flight, errors, listing and info, TLS (X.509 and PSK,
// against qemu-nbd, whose TLS nobody here wrote), several connections.
// What the client writes is checked with qemu-img and nbdinfo, and what
// it reads is compared with the image file itself.

import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { connect, connectMany, exportInfo, listExports, STATE_HOLE, STATE_ZERO, type BlockExtent, type NbdClient, type NbdError } from '../src/client/index.js';
import { serve, tempDir } from './helpers/server.js';
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
  t.ok(disk.info.structuredReplies, 'structured replies');
  await exercise(t, disk, file, srv.uri());
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

/** A CA, a server certificate and a client certificate, made with openssl, in QEMU's layout. */
function x509(t: Test, dir: string, cn = 'localhost'): { server: string; client: string } {
  requireTool('openssl');
  const server = path.join(dir, 'server');
  const client = path.join(dir, 'client');
  fs.mkdirSync(server);
  fs.mkdirSync(client);
  const ssl = (...args: string[]): void => {
    const r = spawnSyncOk('openssl', args);
    if (r) t.fail(r);
  };
  const ca = path.join(dir, 'ca');
  ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=test CA', '-keyout', `${ca}-key.pem`, '-out', `${ca}-cert.pem`);
  for (const [who, out, name] of [['server', server, cn], ['client', client, 'client']] as const) {
    ssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${name}`, '-keyout', path.join(out, `${who}-key.pem`), '-out', path.join(dir, `${who}.csr`));
    const ext = path.join(dir, `${who}.ext`);
    fs.writeFileSync(ext, who === 'server' ? `subjectAltName=DNS:${name}\nextendedKeyUsage=serverAuth\n` : 'extendedKeyUsage=clientAuth\n');
    ssl('x509', '-req', '-in', path.join(dir, `${who}.csr`), '-CA', `${ca}-cert.pem`, '-CAkey', `${ca}-key.pem`, '-CAcreateserial', '-days', '2', '-extfile', ext, '-out', path.join(out, `${who}-cert.pem`));
    fs.copyFileSync(`${ca}-cert.pem`, path.join(out, 'ca-cert.pem'));
  }
  return { server, client };
}

function spawnSyncOk(cmd: string, args: string[]): string | null {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return r.status === 0 ? null : `${cmd} ${args.join(' ')}: ${r.stderr}`;
}

t.test('TLS with X.509 against qemu-nbd: nbds+unix with tls-certificates', async (t) => {
  const dir = tempDir(t);
  const certs = x509(t, dir);
  const file = image(t);
  const sock = await qemuNbd(t, ['--object', `tls-creds-x509,id=tls0,endpoint=server,dir=${certs.server}`, '--tls-creds', 'tls0'], file);
  const uri = `nbds+unix:///?socket=${sock}&tls-certificates=${certs.client}`;
  const disk = await connect(uri);
  t.ok(disk.info.tls, `TLS: ${JSON.stringify(disk.info.tls)}`);
  await disk.write(0, Buffer.alloc(4096, 9), { fua: true });
  t.same(await disk.read(0, 4096), Buffer.alloc(4096, 9));
  await disk.disconnect();
  t.equal(fs.readFileSync(file)[0], 9, 'the write reached the file');

  await t.rejects(connect(`nbd+unix:///?socket=${sock}`), { name: 'OptionError', code: 'NBD_REP_ERR_TLS_REQD' }, 'plain text: TLS required');
  const other = x509(t, tempDir(t));
  await t.rejects(connect(`nbds+unix:///?socket=${sock}&tls-certificates=${other.client}`), /TLS handshake failed|certificate/, 'a server certificate from another CA is refused');
  t.same((await listExports(uri)).map((e) => e.name), [''], 'listing over TLS: qemu-nbd’s one export');
});

t.test('TLS with PSK against qemu-nbd: tls-psk-file and tls-username', async (t) => {
  const dir = tempDir(t);
  const keys = path.join(dir, 'keys.psk');
  fs.writeFileSync(keys, `alice:${crypto.randomBytes(32).toString('hex')}\n`);
  const sock = await qemuNbd(t, ['--object', `tls-creds-psk,id=tls0,endpoint=server,dir=${dir}`, '--tls-creds', 'tls0'], image(t));
  const disk = await connect(`nbds+unix:///?socket=${sock}&tls-psk-file=${keys}&tls-username=alice`);
  t.ok(disk.info.tls, `TLS: ${JSON.stringify(disk.info.tls)}`);
  await disk.write(0, Buffer.alloc(512, 3));
  t.same(await disk.read(0, 512), Buffer.alloc(512, 3));
  await disk.disconnect();
  const wrong = path.join(dir, 'wrong.psk');
  fs.writeFileSync(wrong, `alice:${crypto.randomBytes(32).toString('hex')}\n`);
  await t.rejects(connect(`nbds+unix:///?socket=${sock}&tls-psk-file=${wrong}&tls-username=alice`), /TLS|closed/, 'a wrong key is refused');
});
