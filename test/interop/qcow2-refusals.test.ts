// qcow2 images vblk must not serve, or must not write, made by qemu-img (or
// by a small patch of header bits): vblk serve exits 1 with one line that
// names the file and the reason, leaves no socket behind and the image
// untouched. Images it may only read are still served read-only, and read
// as QEMU reads them.

import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { serve, tempDir, vblk } from '../helpers/server.js';
import { run } from '../helpers/tools.js';
import { flipHeaderBits, identical, MiB, must, qemuCheck, qemuIo, qemuReads, sha256, out } from './qcow2-helpers.js';

/** vblk serve ARGS must fail with a message matching `reason`, touching nothing. */
async function refused(t: Test, image: string, extra: string[], reason: RegExp): Promise<void> {
  const hash = sha256(image);
  const socket = path.join(path.dirname(image), 'refused.sock');
  const r = await vblk(['serve', image, ...extra, '--socket', socket]);
  t.equal(r.code, 1, `vblk serve ${path.basename(image)} ${extra.join(' ')} exits 1`, { stdout: r.stdout, stderr: r.stderr });
  t.match(r.stderr, reason, `the message gives the reason: ${reason}`, { stderr: r.stderr });
  t.match(r.stderr, path.basename(image), 'and names the image');
  t.equal(r.stderr.trim().split('\n').length, 1, 'in one line');
  t.equal(r.stdout, '', 'no URI is printed');
  t.notOk(fs.existsSync(socket), 'no socket is left');
  t.equal(sha256(image), hash, 'the image is untouched');
}

async function qcow2(t: Test, dir: string, name: string, options: string[] = [], size = '4M'): Promise<string> {
  const file = path.join(dir, name);
  await must(t, 'qemu-img', ['create', '-q', '-f', 'qcow2', ...options, file, size]);
  return file;
}

const INCOMPATIBLE = 72;

t.test('LUKS encryption', async (t) => {
  const dir = tempDir(t);
  // qemu-img times its key derivation by CPU usage, which on a busy machine
  // sometimes measures nothing ("Unable to get accurate CPU usage"): retry.
  const image = path.join(dir, 'luks.qcow2');
  const args = ['create', '-q', '-f', 'qcow2', '--object', 'secret,id=s0,data=x', '-o', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=100', image, '4M'];
  let made = await run('qemu-img', args);
  for (let i = 0; i < 5 && made.code !== 0 && /accurate CPU usage/.test(made.stderr); i++) made = await run('qemu-img', args);
  t.equal(made.code, 0, 'qemu-img creates a LUKS-encrypted image', out(made));
  await refused(t, image, [], /cannot serve.*encrypted/);
  await refused(t, image, ['--read-only'], /cannot serve.*encrypted/);
  const map = await vblk(['map', image]);
  t.equal(map.code, 1, 'vblk map refuses it too');
  t.match(map.stderr, /encrypted/);
});

t.test('internal snapshots: read-only only', async (t) => {
  const dir = tempDir(t);
  const image = await qcow2(t, dir, 'snap.qcow2');
  await qemuIo(t, image, 'qcow2', ['write -P 0x07 0 1M', 'write -P 0x17 2M 64k']);
  await must(t, 'qemu-img', ['snapshot', '-c', 'before', image]);
  await qemuIo(t, image, 'qcow2', ['write -P 0x08 0 512k', 'write -z 2M 64k']);
  await refused(t, image, [], /will not write.*internal snapshots.*read-only/);
  const served = await serve(t, [image, '--read-only']);
  await identical(t, { file: served.uri(), format: 'raw' }, { file: image, format: 'qcow2' }, 'read-only, vblk serves what QEMU reads');
  const r = await qemuReads(served.uri(), 'raw', [[0x08, 0, 512 * 1024], [0x07, 512 * 1024, 512 * 1024], [0, 2 * MiB, 64 * 1024]]);
  t.ok(r.ok, 'the active layer, not the snapshot', out(r));
  await served.stop();
  await qemuCheck(t, [image]);
  const list = await must(t, 'qemu-img', ['snapshot', '-l', image]);
  t.match(list.stdout, /before/, 'the snapshot is still there');
});

t.test('unknown incompatible feature bits', async (t) => {
  const dir = tempDir(t);
  for (const [name, bit] of [['bit5.qcow2', 1n << 5n], ['bit40.qcow2', 1n << 40n]] as const) {
    const image = await qcow2(t, dir, name);
    flipHeaderBits(image, INCOMPATIBLE, bit);
    await refused(t, image, [], /cannot serve.*incompatible features vblk does not know/);
    await refused(t, image, ['--read-only'], /incompatible features/);
    // The control: the same image with the bit cleared again serves.
    flipHeaderBits(image, INCOMPATIBLE, bit);
    const served = await serve(t, [image]);
    await served.stop();
    await qemuCheck(t, [image]);
  }
});

t.test('the corrupt bit', async (t) => {
  const dir = tempDir(t);
  const image = await qcow2(t, dir, 'corrupt.qcow2');
  await qemuIo(t, image, 'qcow2', ['write -P 1 0 64k']);
  flipHeaderBits(image, INCOMPATIBLE, 2n);
  const info = await must(t, 'qemu-img', ['info', '--output=json', image]);
  t.equal(JSON.parse(info.stdout)['format-specific'].data.corrupt, true, 'premise: QEMU sees the image as corrupt');
  await refused(t, image, [], /cannot serve.*marked corrupt/);
  await refused(t, image, ['--read-only'], /marked corrupt/);
});

t.test('the dirty bit (lazy refcounts): read-only only', async (t) => {
  const dir = tempDir(t);
  const image = await qcow2(t, dir, 'dirty.qcow2', ['-o', 'lazy_refcounts=on']);
  await qemuIo(t, image, 'qcow2', ['write -P 3 0 64k']);
  flipHeaderBits(image, INCOMPATIBLE, 1n);
  await refused(t, image, [], /will not write.*dirty/);
  const served = await serve(t, [image, '--read-only']);
  const r = await qemuReads(served.uri(), 'raw', [[3, 0, 64 * 1024]]);
  t.ok(r.ok, 'read-only it serves', out(r));
  await served.stop();
});

t.test('an external data file', async (t) => {
  const dir = tempDir(t);
  const image = await qcow2(t, dir, 'df.qcow2', ['-o', `data_file=${path.join(dir, 'df.raw')}`]);
  await refused(t, image, [], /cannot serve.*external data file/);
  await refused(t, image, ['--read-only'], /external data file/);
});

t.test('extended L2 entries', async (t) => {
  const dir = tempDir(t);
  const image = await qcow2(t, dir, 'el2.qcow2', ['-o', 'extended_l2=on']);
  await refused(t, image, [], /cannot serve.*extended L2/);
});

t.test('zstd compression, also as a backing file', async (t) => {
  const dir = tempDir(t);
  const image = await qcow2(t, dir, 'zstd.qcow2', ['-o', 'compression_type=zstd']);
  await refused(t, image, [], /cannot serve.*zstd/);
  await refused(t, image, ['--read-only'], /zstd/);
  const top = await qcow2(t, dir, 'over-zstd.qcow2', ['-b', 'zstd.qcow2', '-F', 'qcow2']);
  const hash = sha256(top);
  const r = await vblk(['serve', top, '--socket', path.join(dir, 'over.sock')]);
  t.equal(r.code, 1, 'an overlay on it is refused too');
  t.match(r.stderr, /zstd\.qcow2.*zstd/, 'naming the backing file and the reason', { stderr: r.stderr });
  t.equal(sha256(top), hash, 'the overlay is untouched');
});
