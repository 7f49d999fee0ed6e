// qemu-io against a running vblk: pattern writes and reads at aligned and
// unaligned offsets and sizes, discard, write-zeroes (with and without
// unmap), FUA and flush. Every write is also checked in the backing file
// itself, and a read with the wrong pattern must make qemu-io fail.

import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { serve, tempDir } from '../helpers/server.js';
import { run, type RunResult } from '../helpers/tools.js';
import { readRange } from './sparse.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 64 * MiB;

function qemuIo(uri: string, commands: string[]): Promise<RunResult> {
  return run('qemu-io', ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), uri]);
}

/** An empty SIZE-byte image served as the default export. */
async function setup(t: Test): Promise<{ file: string; uri: string }> {
  const file = path.join(tempDir(t), 'disk.img');
  fs.writeFileSync(file, '');
  fs.truncateSync(file, SIZE);
  const served = await serve(t, [file]);
  return { file, uri: served.uri() };
}

/** qemu-io's output, shown when an assertion fails. */
function out(r: RunResult): { stdout: string; stderr: string } {
  return { stdout: r.stdout, stderr: r.stderr };
}

function hex(p: number): string {
  return `0x${p.toString(16)}`;
}

function failed(r: RunResult): boolean {
  return r.code !== 0 || /verification failed|error|failed/i.test(r.stdout + r.stderr);
}

/** Checks that FILE holds byte P over [off, off+len). */
function checkFile(t: Test, file: string, off: number, len: number, p: number, what: string): void {
  const got = readRange(file, off, len);
  const bad = got.findIndex((b) => b !== p);
  t.equal(got.length, len, `${what}: file has ${len} bytes at ${off}`);
  t.equal(bad, -1, `${what}: file holds ${hex(p)} over [${off}, ${off + len})${bad >= 0 ? `, not at ${off + bad} (${hex(got[bad])})` : ''}`);
}

t.test('pattern writes and reads at several offsets and sizes', async (t) => {
  const { file, uri } = await setup(t);
  const cases: [number, number, number][] = [
    [0, 1 * MiB, 0xab], // aligned, large
    [2 * MiB, 4 * KiB, 0x11], // one block
    [3 * MiB + 12345, 777, 0x22], // unaligned offset and length
    [4 * MiB + 511, 64 * KiB + 1, 0x33], // unaligned, crosses many blocks
    [6 * MiB - 1, 2, 0x44], // two bytes across a MiB boundary
    [8 * MiB, 4 * MiB, 0x55], // several MiB in one request
    [20 * MiB + 7, 1, 0x66], // a single byte
    [SIZE - 8 * KiB, 4 * KiB, 0x77], // near the end
    [SIZE - 3, 3, 0x88], // the last three bytes
  ];
  const w = await qemuIo(uri, cases.map(([o, l, p]) => `write -P ${hex(p)} ${o} ${l}`));
  t.equal(w.code, 0, 'qemu-io writes exit 0', out(w));
  t.equal(w.stdout.match(/^wrote \d+\/\d+ bytes/gm)?.length, cases.length, 'qemu-io reports every write');
  // Read back in a new process, so nothing can come from qemu's memory.
  const r = await qemuIo(uri, cases.map(([o, l, p]) => `read -P ${hex(p)} ${o} ${l}`));
  t.equal(r.code, 0, 'qemu-io pattern reads exit 0', out(r));
  t.notMatch(r.stdout + r.stderr, /verification failed/i, 'no pattern mismatch');
  t.equal(r.stdout.match(/^read \d+\/\d+ bytes/gm)?.length, cases.length, 'qemu-io reports every read');
  // The bytes are in the backing file, and not one byte more.
  for (const [o, l, p] of cases) {
    checkFile(t, file, o, l, p, `write ${hex(p)} at ${o}+${l}`);
    if (o > 0) t.equal(readRange(file, o - 1, 1)[0], 0, `byte before ${o} untouched`);
    if (o + l < SIZE) t.equal(readRange(file, o + l, 1)[0], 0, `byte after ${o + l} untouched`);
  }
  t.equal(fs.statSync(file).size, SIZE, 'file size unchanged');
  // Unwritten space reads as zero through the server too.
  const z = await qemuIo(uri, [`read -P 0 ${1 * MiB} ${1 * MiB}`, `read -P 0 ${30 * MiB} ${1 * MiB}`]);
  t.equal(z.code, 0, 'unwritten space reads zero', out(z));
});

t.test('discard, then the range reads back as zero', async (t) => {
  const { file, uri } = await setup(t);
  const r = await qemuIo(uri, [
    `write -P 0xcc 0 ${1 * MiB}`,
    `discard ${64 * KiB} ${256 * KiB}`,
    `read -P 0 ${64 * KiB} ${256 * KiB}`,
    `read -P 0xcc 0 ${64 * KiB}`,
    `read -P 0xcc ${320 * KiB} ${1 * MiB - 320 * KiB}`,
  ]);
  t.equal(r.code, 0, 'qemu-io exits 0', out(r));
  t.match(r.stdout, /discard 262144\/262144 bytes at offset 65536/, 'qemu-io reports the discard');
  t.notOk(failed(r), 'no command failed');
  checkFile(t, file, 64 * KiB, 256 * KiB, 0, 'discarded range in the file');
  checkFile(t, file, 0, 64 * KiB, 0xcc, 'data before the discard');
  checkFile(t, file, 320 * KiB, 1 * MiB - 320 * KiB, 0xcc, 'data after the discard');
});

t.test('write -z, then read -P 0', async (t) => {
  const { file, uri } = await setup(t);
  const r = await qemuIo(uri, [
    `write -P 0xdd 0 ${1 * MiB}`,
    `write -z ${128 * KiB} ${128 * KiB}`, // aligned, NO_HOLE (no -u)
    `write -z 500000 1234`, // unaligned
    `write -z -u ${768 * KiB} ${64 * KiB}`, // may unmap
    `read -P 0 ${128 * KiB} ${128 * KiB}`,
    `read -P 0 500000 1234`,
    `read -P 0 ${768 * KiB} ${64 * KiB}`,
    `read -P 0xdd 0 ${128 * KiB}`,
    `read -P 0xdd ${256 * KiB} ${500000 - 256 * KiB}`,
    `read -P 0xdd 501234 ${768 * KiB - 501234}`,
    `read -P 0xdd ${832 * KiB} ${1 * MiB - 832 * KiB}`,
  ]);
  t.equal(r.code, 0, 'qemu-io exits 0', out(r));
  t.notOk(failed(r), 'no command failed');
  t.equal(r.stdout.match(/^wrote \d+\/\d+ bytes/gm)?.length, 4, 'four writes reported');
  checkFile(t, file, 128 * KiB, 128 * KiB, 0, 'aligned write -z in the file');
  checkFile(t, file, 500000, 1234, 0, 'unaligned write -z in the file');
  checkFile(t, file, 768 * KiB, 64 * KiB, 0, 'write -z -u in the file');
  checkFile(t, file, 0, 128 * KiB, 0xdd, 'data before');
  checkFile(t, file, 256 * KiB, 500000 - 256 * KiB, 0xdd, 'data between');
  checkFile(t, file, 501234, 768 * KiB - 501234, 0xdd, 'data between, unaligned edge');
  checkFile(t, file, 832 * KiB, 1 * MiB - 832 * KiB, 0xdd, 'data after');
});

t.test('FUA writes and flush succeed', async (t) => {
  const { file, uri } = await setup(t);
  const r = await qemuIo(uri, [
    `write -f -P 0x5a ${1 * MiB} ${64 * KiB}`,
    `write -P 0x5b ${2 * MiB + 3} 1000`,
    'flush',
    `read -P 0x5a ${1 * MiB} ${64 * KiB}`,
    `read -P 0x5b ${2 * MiB + 3} 1000`,
  ]);
  t.equal(r.code, 0, 'qemu-io exits 0', out(r));
  t.notOk(failed(r), 'no command failed');
  checkFile(t, file, 1 * MiB, 64 * KiB, 0x5a, 'FUA write');
  checkFile(t, file, 2 * MiB + 3, 1000, 0x5b, 'flushed write');
});

t.test('negative control: reading with the wrong pattern makes qemu-io fail', async (t) => {
  const { file, uri } = await setup(t);
  const ok = await qemuIo(uri, [`write -P 0xab 0 ${64 * KiB}`, `read -P 0xab 0 ${64 * KiB}`]);
  t.equal(ok.code, 0, 'the right pattern passes', out(ok));
  const bad = await qemuIo(uri, [`read -P 0xac 0 ${64 * KiB}`]);
  t.not(bad.code, 0, 'the wrong pattern makes qemu-io exit non-zero');
  t.match(bad.stdout + bad.stderr, /Pattern verification failed at offset 0/, 'qemu-io says the pattern did not match');
  // A single wrong byte in the file is caught through the server as well.
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, Buffer.from([0x00]), 0, 1, 40000);
  fs.closeSync(fd);
  const one = await qemuIo(uri, [`read -P 0xab 0 ${64 * KiB}`]);
  t.not(one.code, 0, 'one changed byte in the file makes the pattern read fail');
  t.match(one.stdout + one.stderr, /Pattern verification failed/, 'and qemu-io says so');
});
