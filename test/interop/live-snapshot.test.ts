// Live snapshots through the control socket (vblk ctl snapshot create) of
// an export that clients are writing. fio writes with crc32c
// verification (rate-limited, so the run surely spans them) while two snapshots are taken: no I/O error, the verify pass reads back
// every block, and every file of the chain passes `qemu-img check`. Then
// the exact content: a writer (nbdsh, one 64 KiB write at a time, each
// with its own byte) stamps when it sent and when it got the ack of each
// write on the monotonic clock the test also reads; the snapshot must hold
// every write acknowledged before the command was sent, none sent after it
// returned, only whole writes, and only writes acknowledged before it
// returned. A revert then gives clients the snapshot's data, live.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { controlRequest } from '../../src/cli/ctl.js';
import { serve, tempDir } from '../helpers/server.js';
import { run, TOOL_ENV } from '../helpers/tools.js';

const MiB = 1 << 20;
const BLOCK = 64 << 10;

async function servedQcow2(t: Test, size: number): Promise<{ image: string; ctl: string; uri: string; stop: () => Promise<unknown> }> {
  const dir = tempDir(t, 'vblk-live-');
  const image = path.join(dir, 'disk.qcow2');
  const ctl = path.join(dir, 'ctl.sock');
  await run('qemu-img', ['create', '-f', 'qcow2', image, String(size)]);
  const s = await serve(t, [image, '--control', ctl]);
  return { image, ctl, uri: s.uri(), stop: () => s.stop() };
}



async function snapshot(ctl: string, name: string): Promise<{ sent: bigint; returned: bigint; file: string }> {
  const sent = process.hrtime.bigint();
  const r = await controlRequest(ctl, 'snapshot-create', { name });
  const returned = process.hrtime.bigint();
  if (!r.ok) throw new Error(`snapshot-create: ${r.error.message}`);
  return { sent, returned, file: (r.result as { file: string }).file };
}

async function check(t: Test, file: string): Promise<void> {
  const r = await run('qemu-img', ['check', file]);
  t.equal(r.code, 0, `qemu-img check ${path.basename(file)}: ${r.stdout.trim().split('\n')[0]}`);
}

t.test('fio with crc32c verify through two live snapshots: no error, all verified, every layer checks', async (t) => {
  const { image, ctl, uri, stop } = await servedQcow2(t, 64 * MiB);
  let fioDone = false;
  const fio = run('fio', [
    '--name=live',
    '--ioengine=nbd',
    `--uri=${uri}`,
    '--rw=randwrite',
    '--bs=4k',
    '--iodepth=16',
    '--size=32M',
    '--rate_iops=4000',
    '--verify=crc32c',
    '--do_verify=1',
    '--verify_state_save=0',
    '--output-format=json',
  ]).finally(() => (fioDone = true));
  // At 4000 writes/s the 8192 writes take about 2 s (then as long to verify).
  await new Promise((r) => setTimeout(r, 500));
  const first = await snapshot(ctl, 'one');
  await new Promise((r) => setTimeout(r, 500));
  const second = await snapshot(ctl, 'two');
  t.notOk(fioDone, 'both snapshots were taken while fio was running');
  const result = await fio;
  t.equal(result.code, 0, 'fio exits 0', { stderr: result.stderr });
  const job = (JSON.parse(result.stdout.slice(result.stdout.indexOf('{'))) as { jobs: { error: number; read: { io_bytes: number }; write: { io_bytes: number } }[] }).jobs[0];
  t.equal(job.error, 0, 'no I/O error');
  t.equal(job.write.io_bytes, 32 * MiB, 'every write done');
  t.equal(job.read.io_bytes, 32 * MiB, 'and every block read back and verified');
  await stop();
  for (const f of [first.file, second.file, image]) await check(t, f);
  const chain = await run('qemu-img', ['info', '--backing-chain', image]);
  t.match(chain.stdout, /disk@two\.qcow2[\s\S]*disk@one\.qcow2/, 'the chain is disk -> disk@two -> disk@one');
});

/** Which 64 KiB blocks hold their writer's byte, and which hold neither it nor zeroes. */
function blocksIn(data: Buffer, blocks: number): { present: Set<number>; torn: number[] } {
  const present = new Set<number>();
  const torn: number[] = [];
  for (let i = 0; i < blocks; i++) {
    const block = data.subarray(i * BLOCK, (i + 1) * BLOCK);
    const want = (i % 251) + 1;
    if (block.every((b) => b === want)) present.add(i);
    else if (!block.every((b) => b === 0)) torn.push(i);
  }
  return { present, torn };
}

interface Stamped {
  index: number;
  sent: bigint;
  acked: bigint;
}

t.test('the snapshot holds exactly the writes acknowledged before the command returned; revert brings them back live', async (t) => {
  const blocks = 400;
  const { ctl, uri, stop } = await servedQcow2(t, blocks * BLOCK);
  const script = [
    'import time',
    `for i in range(${blocks}):`,
    `    data = bytes([i % 251 + 1]) * ${BLOCK}`,
    '    sent = time.monotonic_ns()',
    `    h.pwrite(data, i * ${BLOCK})`,
    '    print(i, sent, time.monotonic_ns(), flush=True)',
    '    time.sleep(0.003)',
  ].join('\n');
  const writer = spawn('nbdsh', ['-u', uri, '-c', script], { stdio: ['ignore', 'pipe', 'pipe'], env: TOOL_ENV });
  const stamped: Stamped[] = [];
  let partial = '';
  let stderr = '';
  writer.stderr.on('data', (d) => (stderr += d));
  writer.stdout.on('data', (d: Buffer) => {
    const lines = (partial + d.toString()).split('\n');
    partial = lines.pop()!;
    for (const l of lines) {
      const [i, sent, acked] = l.split(' ');
      stamped.push({ index: Number(i), sent: BigInt(sent), acked: BigInt(acked) });
    }
  });
  let running = true;
  const exited = new Promise<number | null>((r) =>
    writer.on('exit', (code) => {
      running = false;
      r(code);
    }),
  );
  t.teardown(() => writer.kill('SIGKILL'));
  while (stamped.length < 120 && running) await new Promise((r) => setTimeout(r, 10));
  if (!running) throw new Error(`the writer stopped early: ${stderr}`);
  const snap = await snapshot(ctl, 'mid');
  t.equal(await exited, 0, `the writer saw no error ${stderr}`);
  t.equal(stamped.length, blocks);

  const raw = path.join(path.dirname(snap.file), 'mid.raw');
  await run('qemu-img', ['convert', '-O', 'raw', snap.file, raw]);
  const { present, torn } = blocksIn(fs.readFileSync(raw), blocks);
  t.same(torn, [], 'every block is whole or absent');
  const ackedBefore = stamped.filter((s) => s.acked < snap.sent).map((s) => s.index);
  const sentAfter = stamped.filter((s) => s.sent > snap.returned).map((s) => s.index);
  t.ok(ackedBefore.length >= 120, `${ackedBefore.length} writes acknowledged before the command`);
  t.ok(sentAfter.length > 0, `${sentAfter.length} writes sent after it returned`);
  t.same(ackedBefore.filter((i) => !present.has(i)), [], 'holds every write acknowledged before the command was sent');
  t.same(sentAfter.filter((i) => present.has(i)), [], 'holds no write sent after it returned');
  t.same([...present].filter((i) => stamped[i].acked > snap.returned), [], 'holds only writes acknowledged before it returned');
  t.same([...present], [...Array(present.size).keys()], `a prefix of the writes: ${present.size} of them`);
  await check(t, snap.file);
  // The same checks on the export as it is now (all writes) must fail: they can tell one point from another.
  const now = path.join(path.dirname(snap.file), 'now.raw');
  await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, now]);
  t.same(blocksIn(fs.readFileSync(now), blocks).present.size, blocks, 'negative control: the live export holds every write, so it would fail the checks above');

  // Revert: clients now read the snapshot's data, through the same export, with no restart.
  const r = await controlRequest(ctl, 'snapshot-revert', { name: 'mid' });
  t.ok(r.ok, 'revert');
  const last = blocks - 1;
  const io = await run('qemu-io', ['-f', 'raw', '-c', `read -P ${0 % 251 + 1} 0 64k`, '-c', `read -P 0 ${last * BLOCK} 64k`, uri]);
  t.match(io.stdout, /read 65536\/65536[\s\S]*read 65536\/65536/, `the first block is back, the last is empty again: ${io.stdout}${io.stderr}`);
  await stop();
});
