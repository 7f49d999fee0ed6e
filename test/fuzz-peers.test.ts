// `vblk fuzz` against the peers, in short campaigns with fixed seeds: it
// must reproduce the known findings (nbdkit 1.32 aborts on an
// unadvertised FAST_ZERO; nbd-server 3.24 answers NBD_OPT_INFO with size
// 0 and carries on after unknown client flags) and find nothing in vblk.
// fuzz/FINDINGS.md has what the 10-minute campaigns found.

import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { serve, tempDir, vblk } from './helpers/server.js';

const SIZE = 16 << 20;

function scratch(t: Test): { dir: string; image: string; socket: string } {
  const dir = tempDir(t, 'vblk-peer-');
  const image = path.join(dir, 'scratch.img');
  fs.writeFileSync(image, '');
  fs.truncateSync(image, SIZE);
  return { dir, image, socket: path.join(dir, 's.sock') };
}

async function waitFor(file: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fs.existsSync(file)) {
    if (Date.now() > deadline) throw new Error(`${file} did not appear`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function foreground(t: Test, cmd: string, args: string[]): ChildProcess {
  const proc = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  proc.stderr!.resume();
  t.teardown(() => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
  });
  return proc;
}

t.test('nbdkit 1.32: the server dies on an unadvertised FAST_ZERO', async (t) => {
  const s = scratch(t);
  foreground(t, 'nbdkit', ['-f', '-U', s.socket, 'file', s.image]);
  await waitFor(s.socket);
  const r = await vblk(['fuzz', `nbd+unix:///?socket=${s.socket}`, '--destructive', '--seconds', '30', '--seed', '1']);
  t.equal(r.code, 3, 'exit status 3: the server died');
  t.match(r.stdout, /CRASH: the server survives any request/);
  t.match(r.stdout, /WRITE_ZEROES flags=[A-Z_|]*FAST_ZERO/, 'the step that killed it is a FAST_ZERO write-zeroes');
});

t.test('nbd-server 3.24: OPT_INFO reports size 0; unknown client flags are ignored', async (t) => {
  const s = scratch(t);
  const config = path.join(s.dir, 'config');
  const pidFile = path.join(s.dir, 'pid');
  fs.writeFileSync(config, `[generic]\n  unixsock = ${s.socket}\n[scratch]\n  exportname = ${s.image}\n`);
  const start = spawn('nbd-server', ['-C', config, '-p', pidFile], { stdio: 'ignore' });
  await new Promise((r) => start.on('exit', r));
  await waitFor(pidFile);
  t.teardown(() => {
    try {
      process.kill(Number(fs.readFileSync(pidFile, 'utf8')), 'SIGKILL');
    } catch {
      // already gone
    }
  });
  await waitFor(s.socket);
  const r = await vblk(['fuzz', `nbd+unix:///scratch?socket=${s.socket}`, '--destructive', '--seconds', '15', '--seed', '1']);
  t.equal(r.code, 1, 'exit status 1: rules broken');
  t.match(r.stdout, /MUST: NBD_OPT_INFO and NBD_OPT_GO report the same export\n\s+INFO said size 0/);
  t.match(r.stdout, /MUST: an unknown client flag closes the connection/);
});

t.test('vblk: a short campaign finds nothing', async (t) => {
  const s = scratch(t);
  const srv = await serve(t, [s.image]);
  const r = await vblk(['fuzz', srv.uri(), '--destructive', '--seconds', '10', '--seed', '1']);
  t.equal(r.code, 0, r.stdout);
  t.match(r.stdout, /sequences run, 0 findings/);
});
