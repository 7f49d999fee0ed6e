// RBD faults: what vblk does when the cluster or vblk itself fails.
//
// (a) kill -9 of vblk loses no write it acknowledged with FUA or covered
//     by an acknowledged FLUSH: rbd export reads them back. The negative
//     control shows the test can see a loss: with librbd's write-back
//     cache told to hold dirty data for a minute, a write neither FUA nor
//     flushed is gone after the kill.
// (b) The OSD stopped in the middle of a run: by default a request waits
//     until the OSD is back and then completes; with --rbd-timeout it
//     fails with EIO instead. Either way the server lives on and serves
//     again once the OSD is back.
// Its own cluster, since stopping the OSD would stall every other test.

import { spawn } from 'node:child_process';
import t, { type Test } from 'tap';
import { startCeph } from '../helpers/ceph.js';
import { serve, tempDir } from '../helpers/server.js';
import { run, TOOL_ENV, type RunResult } from '../helpers/tools.js';
import { images, output } from './images.js';

const MiB = 1 << 20;
const SIZE = 32 * MiB;

const ceph = await startCeph(t);
const { fresh, exported, create: createImage } = images(ceph);
const create = (image: string): Promise<void> => createImage(image, SIZE);
const conf = ['--ceph-conf', ceph.conf];
const out = output;

const filled = (data: Buffer, offset: number, length: number, byte: number): boolean => data.subarray(offset, offset + length).every((b) => b === byte);

/**
 * nbdsh connected to `uri` runs `script`, then prints DONE and waits on
 * stdin (so the connection stays open while the server is killed).
 */
function nbdshHolding(uri: string, script: string): { done: Promise<void>; finish: () => void } {
  const proc = spawn('nbdsh', ['-u', uri, '-c', `${script}\nprint("DONE", flush=True)\nimport sys\nsys.stdin.read()`], { env: TOOL_ENV, stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  const done = new Promise<void>((resolve, reject) => {
    proc.stdout.on('data', (d) => {
      stdout += d;
      if (stdout.includes('DONE')) resolve();
    });
    proc.stderr.on('data', (d) => (stderr += d));
    proc.on('exit', () => reject(new Error(`nbdsh ended before DONE: ${stderr}`)));
  });
  return { done, finish: () => proc.kill('SIGKILL') };
}

t.test('kill -9 loses no FUA or flushed write (and a write neither FUA nor flushed is lost: the control)', async (t) => {
  const dir = tempDir(t);
  const image = fresh('durable');
  await create(image);
  // librbd's cache keeps dirty data up to a minute here, so only FUA and FLUSH can have put a write in the cluster.
  const name = `rbd:${ceph.pool}/${image}:rbd_cache_max_dirty_age=60:rbd_cache_writethrough_until_flush=false`;
  const server = await serve(t, [name, ...conf]);
  const client = nbdshHolding(
    server.uri(),
    [
      'h.pwrite(b"\\x11" * 1048576, 0, nbd.CMD_FLAG_FUA)',
      'h.pwrite(b"\\x22" * 1048576, 4 * 1048576, nbd.CMD_FLAG_FUA)',
      'h.pwrite(b"\\x33" * 1048576, 8 * 1048576)',
      'h.flush()',
      'h.pwrite(b"\\x44" * 65536, 16 * 1048576)',
    ].join('\n'),
  );
  await client.done;
  t.equal((await server.stop('SIGKILL')).signal, 'SIGKILL', 'vblk killed with SIGKILL while the client is connected');
  client.finish();
  const data = await exported(dir, image);
  t.ok(filled(data, 0, MiB, 0x11), 'the first FUA write is in the cluster');
  t.ok(filled(data, 4 * MiB, MiB, 0x22), 'the second FUA write is in the cluster');
  t.ok(filled(data, 8 * MiB, MiB, 0x33), 'the write a FLUSH covered is in the cluster');
  t.ok(filled(data, 16 * MiB, 65536, 0), 'the control: the write after the flush, neither FUA nor flushed, was still in vblk and is lost');
});

/** qemu-io on `uri`; resolves when it ends. */
function qemuIo(uri: string, commands: string[]): Promise<RunResult> {
  return run('qemu-io', ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), uri], { timeoutMs: 300_000 });
}

const settledWithin = async <T>(p: Promise<T>, ms: number): Promise<boolean> =>
  Promise.race([p.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms))]);

t.test('the OSD stopped mid-run: requests wait for it and complete when it is back', async (t: Test) => {
  const image = fresh('wait');
  await create(image);
  const server = await serve(t, [`rbd:${ceph.pool}/${image}`, ...conf]);
  const uri = server.uri();
  const before = await qemuIo(uri, ['write -P 0x5a 0 1M', 'read -P 0x5a 0 1M']);
  t.equal(before.code, 0, 'served while the OSD is up', { output: out(before) });
  await ceph.osdStop();
  const during = qemuIo(uri, ['write -P 0x6b 2M 1M', 'read -P 0x6b 2M 1M', 'read -P 0x5a 0 1M']);
  t.notOk(await settledWithin(during, 5000), 'with the OSD down, the request has not finished after 5 s (it waits)');
  t.equal(server.proc.exitCode, null, 'vblk is still running');
  await ceph.osdStart();
  const after = await during;
  t.equal(after.code, 0, 'once the OSD is back, the waiting write and reads complete', { output: out(after) });
  t.notMatch(out(after), /failed/, 'with no error');
  t.equal((await server.stop()).code, 0, 'vblk exits 0');
});

t.test('the OSD stopped mid-run with --rbd-timeout 5: requests fail with EIO, and vblk serves again when it is back', async (t: Test) => {
  const image = fresh('timeout');
  await create(image);
  const server = await serve(t, [`rbd:${ceph.pool}/${image}`, '--rbd-timeout', '5', ...conf]);
  const uri = server.uri();
  t.equal((await qemuIo(uri, ['write -P 0x5a 0 1M'])).code, 0, 'served while the OSD is up');
  await ceph.osdStop();
  const started = Date.now();
  const during = await qemuIo(uri, ['write -P 0x6b 4M 64k', 'flush']);
  const seconds = (Date.now() - started) / 1000;
  t.match(out(during), /Input\/output error/, `with the OSD down, the write fails with EIO (after ${seconds.toFixed(1)} s)`);
  t.equal(server.proc.exitCode, null, 'vblk is still running');
  await ceph.osdStart();
  let again: RunResult | null = null;
  // The OSD takes a moment to peer again after it is up: retry a few times.
  for (let i = 0; i < 30; i++) {
    again = await qemuIo(uri, ['write -P 0x7c 8M 64k', 'read -P 0x7c 8M 64k', 'read -P 0x5a 0 1M']);
    if (again.code === 0 && !/failed/.test(out(again))) break;
    await new Promise((r) => setTimeout(r, 1000));
  }
  t.equal(again!.code, 0, 'once the OSD is back, the same server writes and reads again', { output: out(again!) });
  t.notMatch(out(again!), /failed/, 'with no error');
  t.equal((await server.stop()).code, 0, 'vblk exits 0');
});

t.test('fenced: after rbd lock rm blocklists a live vblk, its requests fail with EIO and it says why, once', async (t: Test) => {
  const image = fresh('fenced');
  await create(image);
  const server = await serve(t, [`rbd:${ceph.pool}/${image}`, ...conf]);
  const uri = server.uri();
  t.equal((await qemuIo(uri, ['write -P 0x5a 0 1M', 'flush'])).code, 0, 'served before');
  const [lock] = JSON.parse(await ceph.rbd(['lock', 'ls', '--format', 'json', `${ceph.pool}/${image}`])) as { id: string; locker: string }[];
  await ceph.rbd(['lock', 'rm', `${ceph.pool}/${image}`, lock.id, lock.locker]);
  const after = await qemuIo(uri, ['write -P 0x6b 2M 64k', 'flush', 'read 0 64k']);
  t.match(out(after), /Input\/output error/, 'the blocklisted server answers EIO');
  t.equal(server.proc.exitCode, null, 'and keeps running');
  const fenced = server.logs().filter((l) => typeof l.msg === 'string' && (l.msg as string).startsWith('this server was blocklisted'));
  t.equal(fenced.length, 1, 'it logged once that it was blocklisted');
  await server.stop();
});
