// Image locking against QEMU's own: QEMU refuses what vblk serves
// writable (the image and its backing files), vblk refuses what QEMU
// holds for writing, read-only users share, -U skips the locks, and the
// locks go away with the process.

import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import path from 'node:path';
import t, { type Test } from 'tap';
import { serve, tempDir, vblk } from '../helpers/server.js';
import { run, TOOL_ENV } from '../helpers/tools.js';

const WRITE_LOCK = /Failed to get "write" lock/;
const SHARED_WRITE_LOCK = /Failed to get shared "write" lock/;

async function images(t: Test): Promise<{ dir: string; base: string; top: string }> {
  const dir = tempDir(t);
  const base = path.join(dir, 'base.img');
  const top = path.join(dir, 'top.qcow2');
  t.equal((await vblk(['create', base, '--size', '8M'])).code, 0);
  t.equal((await vblk(['create', top, '--backing', base])).code, 0);
  return { dir, base, top };
}

function qemuIo(args: string[]): Promise<{ code: number | null; out: string }> {
  return run('qemu-io', args).then((r) => ({ code: r.code, out: r.stdout + r.stderr }));
}

/** An interactive qemu-io that keeps the image open until quit() — a stand-in for a running VM. */
async function holdOpen(t: Test, args: string[]): Promise<{ quit(): Promise<void> }> {
  const child: ChildProcessWithoutNullStreams = spawn('qemu-io', args, { env: TOOL_ENV });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const exited = new Promise<void>((resolve) => child.on('close', () => resolve()));
  t.teardown(() => {
    child.kill('SIGKILL');
    return exited;
  });
  child.stdin.write('read 0 512\n');
  const deadline = Date.now() + 10_000;
  while (!/read 512\/512/.test(out)) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`qemu-io ${args.join(' ')} did not open: ${out}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    quit: async () => {
      child.stdin.end('quit\n');
      await exited;
    },
  };
}

t.test('QEMU cannot write an image vblk serves writable, nor its backing file', async (t) => {
  const { base, top } = await images(t);
  const server = await serve(t, [top]);

  const write = await qemuIo(['-f', 'qcow2', '-c', 'write 0 4k', top]);
  t.not(write.code, 0, 'qemu-io refused to open the served image for writing');
  t.match(write.out, WRITE_LOCK);
  const writeBase = await qemuIo(['-f', 'raw', '-c', 'write 0 4k', base]);
  t.not(writeBase.code, 0, 'qemu-io refused to write the backing file');
  t.match(writeBase.out, WRITE_LOCK);

  const info = await run('qemu-img', ['info', top]);
  t.not(info.code, 0, 'qemu-img info without -U refuses, as with a running VM');
  t.match(info.stderr, SHARED_WRITE_LOCK);
  t.equal((await run('qemu-img', ['info', '-U', top])).code, 0, 'qemu-img info -U reads it');
  t.equal((await qemuIo(['-r', '-f', 'raw', '-c', 'read 0 4k', base])).code, 0, 'the backing file can still be read');

  const second = await vblk(['serve', top, '--socket', path.join(server.dir, 'two.sock')]);
  t.equal(second.code, 1, 'a second vblk cannot serve it writable');
  t.match(second.stderr, /top\.qcow2: failed to get (shared )?"write" lock/);

  await server.stop();
  const after = await qemuIo(['-f', 'qcow2', '-c', 'write -P 7 0 4k', top]);
  t.equal(after.code, 0, `the locks went with the server: ${after.out}`);
  t.equal((await run('qemu-img', ['check', top])).code, 0, 'qemu-img check');
});

t.test('vblk refuses an image QEMU has open for writing', async (t) => {
  const { dir, top } = await images(t);
  const vm = await holdOpen(t, ['-f', 'qcow2', top]);

  const served = await vblk(['serve', top, '--socket', path.join(dir, 's.sock')]);
  t.equal(served.code, 1, 'serve fails');
  t.match(served.stderr, /top\.qcow2: failed to get (shared )?"write" lock: another process/);
  const readOnly = await vblk(['serve', top, '--read-only', '--socket', path.join(dir, 's.sock')]);
  t.equal(readOnly.code, 1, 'serving it read-only fails too: its data is changing under us');
  const info = await vblk(['info', top]);
  t.equal(info.code, 1, 'vblk info refuses, like qemu-img info');
  t.match(info.stderr, /failed to get shared "write" lock/);
  const shared = await vblk(['info', '-U', top]);
  t.equal(shared.code, 0, `vblk info -U reads it anyway: ${shared.stderr}`);
  const map = await vblk(['map', '--force-share', top]);
  t.equal(map.code, 0, `vblk map --force-share too: ${map.stderr}`);

  await vm.quit();
  const server = await serve(t, [top]);
  t.ok(server.uris.length > 0, 'serves once QEMU is gone');
});

t.test('read-only users share; -U needs read-only', async (t) => {
  const { dir, base } = await images(t);
  const server = await serve(t, [base, '--read-only']);
  const reader = await qemuIo(['-r', '-f', 'raw', '-c', 'read 0 4k', base]);
  t.equal(reader.code, 0, `qemu-io -r reads beside a read-only vblk: ${reader.out}`);
  const writer = await qemuIo(['-f', 'raw', '-c', 'write 0 4k', base]);
  t.match(writer.out, WRITE_LOCK, 'but cannot write under it');
  const second = await serve(t, [base, '--read-only']);
  t.ok(second.uris.length > 0, 'two read-only vblk servers share the image');

  const vm = await holdOpen(t, ['-f', 'raw', base]).catch((err: Error) => err);
  t.ok(vm instanceof Error, 'and QEMU cannot open it writable while they serve');

  await server.stop();
  await second.stop();
  const writerVm = await holdOpen(t, ['-f', 'raw', base]);
  const forced = await serve(t, [base, '--read-only', '-U']);
  t.ok(forced.uris.length > 0, '-U serves a read-only export beside a QEMU writer');
  const refused = await vblk(['serve', base, '-U', '--socket', path.join(dir, 'x.sock')]);
  t.equal(refused.code, 2, '-U on a writable export is a usage error');
  t.match(refused.stderr, /--force-share needs read-only/);
  await writerVm.quit();
});
