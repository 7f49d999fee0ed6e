// A real VMM as the client: QEMU (TCG) boots a Debian kernel whose only
// disk is vhost-user-blk-pci on a back end's socket (test/helpers/guest.ts).
// The guest reads what the host put on the disk, discards a range, writes
// one chunk per vCPU in parallel (pinned with taskset, so with 4 queues
// each vCPU's blk-mq context submits to its own queue), flushes, drops its
// caches and reads everything back with O_DIRECT. After it powers off and
// the back end has stopped, the host checks the image against what it
// expects with qemu-img compare (and qemu-img check for qcow2).
//
// vblk over a raw image and over a qcow2 overlay with a raw backing file,
// 1 and 4 queues; qemu-storage-daemon, the reference, passes the same
// checks; and a back end that corrupts reads must fail them. Last, one
// image served over NBD and to two guests in turn, the second through a
// read-only export: each sees what the others wrote (one device).

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { pino } from 'pino';
import t, { type Test } from 'tap';
import { BlockDevice, joinSegments, type ReadSegment, type Request } from '../../src/device/types.js';
import { openImage } from '../../src/device/images/open.js';
import { chooseEngine } from '../../src/io/probe.js';
import { BusyPoll } from '../../src/server/busy-poll.js';
import { ExportRegistry } from '../../src/server/exports.js';
import { Server } from '../../src/server/server.js';
import { vhostUserFrontEnd } from '../../src/server/vhost-user/front-end.js';
import { bootGuest, type BootResult } from '../helpers/guest.js';
import { serve, tempDir } from '../helpers/server.js';
import { run } from '../helpers/tools.js';
import { qemuStorageDaemon, vblkBackend, type VhostUserBackend } from '../helpers/vhost-user-backends.js';

const MiB = 1 << 20;
const SIZE = 64 * MiB;
/** The host's pattern, there before the guest starts (in the backing file for qcow2). */
const BASE = { offset: 40 * MiB, length: 2 * MiB };
/** The guest discards this range, then writes the last chunk over it. */
const DISCARD = { offset: 52 * MiB, length: MiB };
const CHUNK = MiB;
/** Where vCPU c writes chunk c: half in 4 KiB requests, half in 64 KiB ones. */
const chunkOffset = (c: number): number => 8 * MiB + c * 4 * MiB;

interface Layout {
  cpus: number;
  /** cpus chunks, then one more for the discarded range. */
  data: Buffer;
}

function guestScript({ cpus }: Layout): string {
  const k4 = (bytes: number): number => bytes / 4096;
  const k64 = (bytes: number): number => bytes / 65536;
  const half = CHUNK / 2;
  const writes = Array.from({ length: cpus }, (_, c) => {
    const src = c * CHUNK;
    const dst = chunkOffset(c);
    return (
      `taskset -c ${c} sh -c 'dd if=data of=/dev/vda bs=4096 skip=${k4(src)} seek=${k4(dst)} count=${k4(half)} oflag=direct conv=notrunc 2>/dev/null && ` +
      `dd if=data of=/dev/vda bs=65536 skip=${k64(src + half)} seek=${k64(dst + half)} count=${k64(half)} oflag=direct conv=notrunc,fsync 2>/dev/null' || echo fail > w${c} &`
    );
  });
  const reads = Array.from(
    { length: cpus },
    (_, c) => `taskset -c ${c} sh -c 'dd if=/dev/vda bs=65536 skip=${k64(chunkOffset(c))} count=${k64(CHUNK)} iflag=direct 2>/dev/null | md5sum > m${c}' &`,
  );
  return [
    'result sectors $(cat /sys/block/vda/size)',
    'result queues $(ls /sys/block/vda/mq | wc -l)',
    'result serial $(cat /sys/block/vda/serial)',
    "result cache $(tr ' ' _ < /sys/block/vda/queue/write_cache)",
    `result base $(dd if=/dev/vda bs=65536 skip=${k64(BASE.offset)} count=${k64(BASE.length)} iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)`,
    `blkdiscard -o ${DISCARD.offset} -l ${DISCARD.length} /dev/vda; result discard $?`,
    `dd if=data of=/dev/vda bs=65536 skip=${k64(cpus * CHUNK)} seek=${k64(DISCARD.offset)} count=${k64(DISCARD.length)} oflag=direct conv=notrunc,fsync 2>/dev/null; result rewrite $?`,
    ...writes,
    'wait',
    `result write-failures $(cat w* 2>/dev/null | wc -l)`,
    'echo 3 > /proc/sys/vm/drop_caches',
    ...reads,
    'wait',
    ...Array.from({ length: cpus }, (_, c) => `result md5-${c} $(cut -d' ' -f1 m${c})`),
    `result md5-rewrite $(dd if=/dev/vda bs=65536 skip=${k64(DISCARD.offset)} count=${k64(DISCARD.length)} iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)`,
  ].join('\n');
}

const md5 = (b: Buffer): string => crypto.createHash('md5').update(b).digest('hex');

/** What the guest reported that differs from what it should have (empty when all is right). */
function guestProblems(boot: BootResult, layout: Layout, base: Buffer): string[] {
  const { cpus, data } = layout;
  const want: Record<string, string> = {
    sectors: String(SIZE / 512),
    queues: String(cpus),
    base: md5(base),
    discard: '0',
    rewrite: '0',
    'write-failures': '0',
    'md5-rewrite': md5(data.subarray(cpus * CHUNK)),
  };
  for (let c = 0; c < cpus; c++) want[`md5-${c}`] = md5(data.subarray(c * CHUNK, (c + 1) * CHUNK));
  const problems: string[] = [];
  if (boot.timedOut) problems.push('the guest timed out');
  if (boot.scriptExit === undefined) problems.push('the guest script never finished');
  problems.push(...boot.errors.map((e) => `guest: ${e}`));
  for (const [key, value] of Object.entries(want)) {
    if (boot.results[key] !== value) problems.push(`${key}: guest saw ${boot.results[key]}, expected ${value}`);
  }
  return problems;
}

/** The image as it must be after the guest: the base pattern, the chunks, the rewritten discard range. */
function expectedImage(dir: string, layout: Layout, base: Buffer): string {
  const file = path.join(dir, 'expected.raw');
  const fd = fs.openSync(file, 'w');
  fs.ftruncateSync(fd, SIZE);
  fs.writeSync(fd, base, 0, base.length, BASE.offset);
  for (let c = 0; c < layout.cpus; c++) fs.writeSync(fd, layout.data, c * CHUNK, CHUNK, chunkOffset(c));
  fs.writeSync(fd, layout.data, layout.cpus * CHUNK, DISCARD.length, DISCARD.offset);
  fs.closeSync(fd);
  return file;
}

/** A raw image with the base pattern; for qcow2, an overlay on it. Returns the image the back end serves. */
async function makeImage(dir: string, format: 'raw' | 'qcow2', base: Buffer): Promise<{ image: string; backing?: string }> {
  const raw = path.join(dir, format === 'raw' ? 'disk.raw' : 'base.raw');
  const fd = fs.openSync(raw, 'w');
  fs.ftruncateSync(fd, SIZE);
  fs.writeSync(fd, base, 0, base.length, BASE.offset);
  fs.closeSync(fd);
  if (format === 'raw') return { image: raw };
  const overlay = path.join(dir, 'overlay.qcow2');
  const r = await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', raw, '-F', 'raw', overlay]);
  if (r.code !== 0) throw new Error(r.stderr);
  return { image: overlay, backing: raw };
}

interface Case {
  backend: VhostUserBackend;
  format: 'raw' | 'qcow2';
  queues: number;
}

async function bootOnce(t: Test, { backend, format, queues }: Case) {
  const dir = tempDir(t);
  const base = crypto.randomBytes(BASE.length);
  const layout: Layout = { cpus: queues, data: crypto.randomBytes((queues + 1) * CHUNK) };
  const { image, backing } = await makeImage(dir, format, base);
  const backingSum = backing && md5(fs.readFileSync(backing));
  const socket = path.join(dir, 'vu.sock');
  const running = await backend.start(t, image, socket, { queues, format });
  const boot = await bootGuest(t, { socket, numQueues: queues, cpus: queues, script: guestScript(layout), files: { data: layout.data } });
  const stopped = await running.stop();
  return { dir, base, layout, image, backing, backingSum, boot, running, stopped };
}

function guestSuite(c: Case): void {
  t.test(`${c.backend.name}: a QEMU guest on ${c.format}, ${c.queues} queue${c.queues > 1 ? 's' : ''}`, async (t) => {
    const r = await bootOnce(t, c);
    const problems = guestProblems(r.boot, r.layout, r.base);
    t.same(problems, [], 'the guest saw the disk and its data as it should');
    if (problems.length) t.comment(r.boot.console.slice(-4000));
    t.equal(r.boot.qemuExit, 0, 'QEMU exited after the guest powered off');
    t.equal(r.stopped, 0, `${c.backend.name} stopped cleanly`);

    const expected = expectedImage(r.dir, r.layout, r.base);
    const compare = await run('qemu-img', ['compare', '-f', c.format, '-F', 'raw', r.image, expected]);
    t.equal(compare.code, 0, `qemu-img compare: the image holds what the guest wrote ${compare.stdout.trim()} ${compare.stderr.trim()}`);
    if (c.format === 'qcow2') {
      const check = await run('qemu-img', ['check', r.image]);
      t.equal(check.code, 0, `qemu-img check: ${check.stdout.trim()} ${check.stderr.trim()}`);
      t.equal(md5(fs.readFileSync(r.backing!)), r.backingSum, 'the backing file is untouched');
    }
    if (c.backend === vblkBackend) {
      t.equal(r.boot.results.serial, 'vblk', 'GET_ID: the serial is the export id');
      t.equal(r.boot.results.cache, 'write_back', 'the guest sees a write-back cache (FLUSH offered)');
      const perQueue: Record<string, number> = {};
      for (const line of r.running.logs().filter((l) => l.msg === 'vhost-user connection closed')) {
        for (const [q, n] of Object.entries(line.perQueue as Record<string, number>)) perQueue[q] = (perQueue[q] ?? 0) + n;
      }
      t.same(Object.keys(perQueue).sort(), Array.from({ length: c.queues }, (_, q) => String(q)), `every queue served requests: ${JSON.stringify(perQueue)}`);
    }
  });
}

/** Flips one byte of every read: the negative control. */
class CorruptingDevice implements BlockDevice {
  constructor(private readonly inner: BlockDevice) {}
  get size(): number {
    return this.inner.size;
  }
  get capabilities() {
    return this.inner.capabilities;
  }
  readonly description = 'reads come back with one byte flipped';
  async read(req: Request): Promise<ReadSegment[]> {
    const data = Buffer.from(joinSegments(req.offset, req.length, await this.inner.read(req)));
    data[data.length >> 1] ^= 0x5a;
    return [{ offset: req.offset, length: req.length, data }];
  }
  write = (req: Request) => this.inner.write(req);
  flush = () => this.inner.flush();
  trim = (req: Request) => this.inner.trim(req);
  writeZeroes = (req: Request) => this.inner.writeZeroes(req);
  cache = (req: Request) => this.inner.cache(req);
  blockStatus = (req: Request) => this.inner.blockStatus(req);
  close = () => this.inner.close();
}

/** vblk's server and vhost-user front end in this process, over a device that corrupts reads. */
const corrupting: VhostUserBackend = {
  name: 'a back end that corrupts reads',
  id: 'vblk',
  async start(t, image, socket, { queues }) {
    const { engine } = chooseEngine('sync');
    const registry = new ExportRegistry();
    const served = registry.add('', new CorruptingDevice(await openImage(image, { readOnly: false, engine })));
    const server = new Server(registry, { shutdownTimeoutMs: 10_000 }, pino({ level: 'silent' }));
    await server.listen({ kind: 'unix', path: socket, mode: 0o600 }, vhostUserFrontEnd(served, queues, new BusyPoll(0)));
    let stopped: Promise<number> | null = null;
    const stop = (): Promise<number> => (stopped ??= server.shutdown().then(() => (engine.close(), 0)));
    t.teardown(stop);
    return { stop, logs: () => [] };
  },
};

guestSuite({ backend: vblkBackend, format: 'raw', queues: 1 });
guestSuite({ backend: vblkBackend, format: 'raw', queues: 4 });
guestSuite({ backend: vblkBackend, format: 'qcow2', queues: 1 });
guestSuite({ backend: vblkBackend, format: 'qcow2', queues: 4 });
guestSuite({ backend: qemuStorageDaemon, format: 'raw', queues: 4 });
guestSuite({ backend: qemuStorageDaemon, format: 'qcow2', queues: 1 });

t.test('negative control: the same checks fail against a back end that corrupts reads', async (t) => {
  const r = await bootOnce(t, { backend: corrupting, format: 'raw', queues: 1 });
  const problems = guestProblems(r.boot, r.layout, r.base);
  t.ok(
    problems.some((p) => p.startsWith('md5-0:')),
    `the guest's read-back differs from what it wrote: ${problems.join('; ')}`,
  );
  t.ok(
    problems.some((p) => p.startsWith('base:')),
    'and so does the host pattern it read',
  );
});

t.test('vblk: one image over NBD and to two guests, the second through a read-only export', async (t) => {
  const dir = tempDir(t);
  const image = path.join(dir, 'disk.raw');
  fs.writeFileSync(image, '');
  fs.truncateSync(image, SIZE);
  const rw = path.join(dir, 'rw.sock');
  const ro = path.join(dir, 'ro.sock');
  const served = await serve(t, [image, '--socket', path.join(dir, 'nbd.sock'), '--export', `ro=${image}:ro`, '--vhost-user-blk', rw, '--vhost-user-blk', `ro=${ro}`, '--num-queues', '1'], {
    socket: false,
  });
  const uri = served.uris.find((u) => u.startsWith('nbd+unix:'))!;
  const fromHost = crypto.randomBytes(MiB);
  const fromGuest = crypto.randomBytes(MiB);
  const input = path.join(dir, 'host.bin');
  fs.writeFileSync(input, fromHost);
  const copy = await run('nbdcopy', [input, uri]);
  t.equal(copy.code, 0, `the host writes over NBD: ${copy.stderr}`);

  const writer = await bootGuest(t, {
    socket: rw,
    script: [
      `result host $(dd if=/dev/vda bs=65536 count=16 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)`,
      `dd if=data of=/dev/vda bs=65536 seek=16 oflag=direct conv=notrunc,fsync 2>/dev/null; result write $?`,
    ].join('\n'),
    files: { data: fromGuest },
  });
  t.equal(writer.results.host, md5(fromHost), 'the guest reads what the host wrote over NBD');
  t.equal(writer.results.write, '0', 'and writes');

  const reader = await bootGuest(t, {
    socket: ro,
    script: [
      'result ro $(cat /sys/block/vda/ro)',
      `result guest $(dd if=/dev/vda bs=65536 skip=16 count=16 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)`,
      `dd if=/work/script.sh of=/dev/vda bs=512 count=1 oflag=direct conv=notrunc 2>/dev/null; result write $?`,
    ].join('\n'),
  });
  t.equal(reader.results.ro, '1', 'the read-only export is a read-only disk (VIRTIO_BLK_F_RO)');
  t.equal(reader.results.guest, md5(fromGuest), 'it sees what the first guest wrote');
  t.not(reader.results.write, '0', 'a write to it fails');

  const back = path.join(dir, 'back.bin');
  const read = await run('nbdcopy', [uri, back]);
  t.equal(read.code, 0, `nbdcopy from the image while it is served: ${read.stderr}`);
  const content = fs.readFileSync(back);
  t.equal(md5(content.subarray(MiB, 2 * MiB)), md5(fromGuest), "the host reads the guest's data over NBD while vblk still serves it");
  t.equal(md5(content.subarray(0, MiB)), md5(fromHost), 'and its own');
  t.equal((await served.stop()).code, 0, 'vblk stopped cleanly');
});
