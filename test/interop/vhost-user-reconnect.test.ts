// vblk killed with SIGKILL while a QEMU guest writes to its vhost-user-blk
// disk, and started again on the same socket: QEMU (chardev reconnect=1)
// comes back, hands over the inflight area it kept (INFLIGHT_SHMFD), the
// new vblk redoes the requests the old one left in flight, and the guest
// finishes its I/O without an error and with the right data, checked in
// the guest (O_DIRECT read-back) and on the host (qemu-img compare).
//
// A kill at a random moment rarely lands while a request is in flight
// (vblk serves one in tens of microseconds), so the first vblk runs under
// strace, which holds each of its pwrite64 calls for DELAY_US before the
// kernel sees it (with the threads engine, writes are pwrite64 on libuv's
// pool): requests are then in flight, their data not yet written, when
// SIGKILL comes. The second vblk runs as usual and must redo them.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { bootGuest } from '../helpers/guest.js';
import { serve, tempDir, type Served } from '../helpers/server.js';
import { requireTool, run } from '../helpers/tools.js';

const MiB = 1 << 20;
const SIZE = 64 * MiB;
const QUEUES = 2;
/** Each writer writes its part this many times: under strace the first pass outlasts the first vblk, the rest goes to the second. */
const PASSES = 2;
const REGION = 4 * MiB;
/** How long strace holds each pwrite64 of the first vblk. */
const DELAY_US = 20_000;
/** Writers per vCPU, each with one O_DIRECT request at a time. */
const WRITERS = 4;
const regionOffset = (c: number): number => 8 * MiB + c * 8 * MiB;

function script(): string {
  const k64 = (bytes: number): number => bytes / 65536;
  // Writer w of vCPU c rewrites its part of region c, PASSES times.
  const part = REGION / WRITERS;
  const writers = Array.from({ length: QUEUES * WRITERS }, (_, i) => {
    const c = i % QUEUES;
    const w = Math.floor(i / QUEUES);
    const src = c * REGION + w * part;
    const dst = regionOffset(c) + w * part;
    return `taskset -c ${c} sh -c 'i=0; while [ $i -lt ${PASSES} ]; do dd if=data of=/dev/vda bs=65536 skip=${k64(src)} seek=${k64(dst)} count=${k64(part)} oflag=direct conv=notrunc 2>/dev/null || exit 1; i=$((i + 1)); done' || echo fail > w${i} &`;
  });
  const readers = Array.from(
    { length: QUEUES },
    (_, c) => `result md5-${c} $(dd if=/dev/vda bs=65536 skip=${k64(regionOffset(c))} count=${k64(REGION)} iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)`,
  );
  return [
    'result phase writing',
    ...writers,
    'wait',
    'sync',
    'result write-failures $(cat w* 2>/dev/null | wc -l)',
    'echo 3 > /proc/sys/vm/drop_caches',
    ...readers,
    "result io-errors $(dmesg | grep -c -i 'I/O error')",
  ].join('\n');
}

t.test('vblk killed with SIGKILL during guest I/O and restarted: QEMU reconnects, in-flight requests are redone', async (t) => {
  requireTool('strace');
  const dir = tempDir(t);
  const image = path.join(dir, 'disk.raw');
  fs.writeFileSync(image, '');
  fs.truncateSync(image, SIZE);
  const socket = path.join(dir, 'vu.sock');
  const data = crypto.randomBytes(QUEUES * REGION);
  const args = [image, '--vhost-user-blk', socket, '--num-queues', String(QUEUES)];
  const strace = ['strace', '-f', '-qq', '-o', '/dev/null', '-e', 'trace=pwrite64', '-e', `inject=pwrite64:delay_enter=${DELAY_US}`];
  const first = await serve(t, [...args, '--engine', 'threads'], { socket: false, prefix: strace });
  let second: Served | undefined;

  // Once the guest writes: kill the node process under strace, start the second vblk.
  let restarted: Promise<void> = Promise.resolve();
  const restart = async (): Promise<void> => {
    await new Promise((r) => setTimeout(r, 500));
    const killed = await run('pkill', ['-KILL', '-P', String(first.proc.pid)]);
    t.equal(killed.code, 0, 'the first vblk (under strace) is killed with SIGKILL while the guest writes');
    await first.exited;
    second = await serve(t, args, { socket: false });
  };

  const boot = await bootGuest(t, {
    socket,
    numQueues: QUEUES,
    cpus: QUEUES,
    reconnect: true,
    script: script(),
    files: { data },
    timeoutMs: 240_000,
    onResult: (key) => {
      if (key === 'phase') restarted = restart();
    },
  });
  await restarted;
  t.ok(second, 'a second vblk was started on the same socket');
  if (!second) return;
  const logs = second.logs();
  const exit = await second.stop();

  t.equal(boot.scriptExit, 0, 'the guest script finished');
  t.equal(boot.qemuExit, 0, 'QEMU exited after the guest powered off');
  const redone = logs.filter((l) => l.msg === 'vhost-user queue redoes the requests an earlier back end left in flight');
  const count = redone.reduce((n, l) => n + (l.requests as number), 0);
  t.ok(count > 0, `the second vblk redid ${count} request(s) the first left in flight (queues ${redone.map((l) => l.queue).join(', ')})`);
  t.equal(boot.results['write-failures'], '0', 'no write failed in the guest');
  t.equal(boot.results['io-errors'], '0', 'the guest kernel logged no I/O error');
  for (let c = 0; c < QUEUES; c++) {
    const want = crypto.createHash('md5').update(data.subarray(c * REGION, (c + 1) * REGION)).digest('hex');
    t.equal(boot.results[`md5-${c}`], want, `region ${c} reads back as written`);
  }
  t.equal(exit.code, 0, 'the second vblk stopped cleanly');
  if (boot.scriptExit !== 0 || count === 0) t.comment(boot.console.slice(-4000));

  const expected = path.join(dir, 'expected.raw');
  const fd = fs.openSync(expected, 'w');
  fs.ftruncateSync(fd, SIZE);
  for (let c = 0; c < QUEUES; c++) fs.writeSync(fd, data, c * REGION, REGION, regionOffset(c));
  fs.closeSync(fd);
  const compare = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', image, expected]);
  t.equal(compare.code, 0, `qemu-img compare: ${compare.stdout.trim()} ${compare.stderr.trim()}`);
});
