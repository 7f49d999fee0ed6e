// The throwaway Ceph cluster that vblk's RBD tests stand on
// (test/ceph/cluster.sh through helpers/ceph.ts): it reaches HEALTH_OK,
// serves an RBD image to rbd and to QEMU's own rbd driver, and two
// clusters run side by side. Stopping its OSD is tested where vblk is the
// client (test/rbd/rbd-faults.test.ts).

import { spawnSync } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { CLUSTER_SH, startCeph } from './helpers/ceph.js';
import { tempDir } from './helpers/server.js';
import { run } from './helpers/tools.js';

const MiB = 1 << 20;

function sha256(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

t.test('rbd and qemu-img read and write an image', async (t) => {
  const ceph = await startCeph(t);
  t.match(await ceph.ceph(['health']), /^HEALTH_OK/);

  await ceph.rbd(['create', '--size', '64M', 'rbd/t']);
  t.match(await ceph.rbd(['ls', ceph.pool]), /^t$/m);
  const info = await run('qemu-img', ['info', '--output=json', `rbd:rbd/t:conf=${ceph.conf}`]);
  t.equal(info.code, 0, info.stderr);
  t.equal(JSON.parse(info.stdout)['virtual-size'], 64 * MiB, 'qemu-img sees 64 MiB');

  // qemu-img writes through librbd, rbd export reads it back.
  const source = path.join(ceph.dir, 'source.raw');
  const data = Buffer.alloc(64 * MiB);
  randomFillSync(data, 0, 8 * MiB);
  randomFillSync(data, 40 * MiB, 4 * MiB);
  fs.writeFileSync(source, data);
  const convert = await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', source, `rbd:rbd/t:conf=${ceph.conf}`]);
  t.equal(convert.code, 0, convert.stderr);
  const exported = path.join(ceph.dir, 'export.raw');
  await ceph.rbd(['export', '--no-progress', 'rbd/t', exported]);
  t.equal(sha256(exported), sha256(source), 'rbd export returns what qemu-img wrote');

  // Negative control: writes from rbd bench land, and the comparison sees them.
  await ceph.rbd(['bench', '--io-type', 'write', '--io-size', '4K', '--io-total', '8M', '--io-pattern', 'rand', 'rbd/t']);
  fs.rmSync(exported);
  await ceph.rbd(['export', '--no-progress', 'rbd/t', exported]);
  t.not(sha256(exported), sha256(source), 'the image changed under rbd bench');
  // osd-stop and osd-start are exercised by test/rbd/rbd-faults.test.ts, with vblk as the client.
});

t.test('two clusters started at once both reach HEALTH_OK, each on its own port', async (t) => {
  const [a, b] = await Promise.all([startCeph(t), startCeph(t)]);
  t.match(await a.ceph(['health']), /^HEALTH_OK/);
  t.match(await b.ceph(['health']), /^HEALTH_OK/);
  const monHost = (conf: string) => /^mon_host = (.*)$/m.exec(fs.readFileSync(conf, 'utf8'))?.[1];
  t.not(monHost(a.conf), monHost(b.conf));
  await a.rbd(['create', '--size', '4M', 'rbd/only-in-a']);
  t.match(await a.rbd(['ls', 'rbd']), /only-in-a/);
  t.notMatch(await b.rbd(['ls', 'rbd']), /only-in-a/, 'the other cluster does not have the image');
});

t.test('start names the missing command and builds nothing', async (t) => {
  // A PATH holding everything cluster.sh needs except ceph-osd.
  const bin = tempDir(t, 'vblk-nobin-');
  for (const cmd of ['realpath', 'python3', 'ceph-mon', 'ceph-mgr', 'ceph', 'rbd', 'ceph-authtool', 'monmaptool']) {
    fs.symlinkSync(`/usr/bin/${cmd}`, path.join(bin, cmd));
  }
  const dir = path.join(bin, 'cluster');
  const r = spawnSync('/bin/bash', [CLUSTER_SH, 'start', dir], { env: { PATH: bin }, encoding: 'utf8' });
  t.equal(r.status, 1);
  t.match(r.stderr, /command 'ceph-osd' is missing/);
  t.notOk(fs.existsSync(dir), 'no cluster directory was made');
});
