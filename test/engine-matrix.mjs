// Runs the tests that drive a live server once more for every other I/O
// engine this host has, and for io_uring with direct I/O, so the NBD
// interop suite covers each engine without copies of its tests. The first
// pass (plain `tap`) used the default engine (`auto`); test/helpers/
// server.ts adds --engine and --direct from VBLK_TEST_ENGINE and
// VBLK_TEST_DIRECT. A last pass runs them with the default engine on
// tmpfs, which has no non-blocking reads: TMPDIR points at a tmpfs
// directory, and every image and socket the tests make goes there
// (tempDir in test/helpers/server.ts uses os.tmpdir()). The engine
// passes run the server with --threads 2 (VBLK_TEST_THREADS), so the
// interop suite runs on worker loops whatever this host's core count
// makes the default; the tmpfs pass with --threads 1, on the main loop
// alone.
//
// The qcow2 suites (FORMAT) were more than half of every pass: about 140
// of 250 s, which made the whole CI run an hour. They test the format,
// which sits above the engine, so they run in the first pass (the default
// engine) and again in the --direct pass, where O_DIRECT's alignment
// rules meet qcow2's metadata I/O, and not once per engine. What differs
// between engines is io-engines.test.js's conformance suite (each engine,
// also direct, also on tmpfs), and the raw-image suites still run in
// every pass.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { chooseEngine, engineReports } from '../dist/src/io/probe.js';
import { makeTmpfsDir } from '../dist/test/helpers/tmpfs.js';

// Tests whose I/O does not go through the served export's engine, or that
// vary the engine themselves, run once.
const ONCE = new Set([
  'qcow2-crash.test.js', // picks an engine (and --direct) per iteration
  'clone.test.js', // file copies, no server I/O
  'resize.test.js', // offline resize
  'locking.test.js', // lock bytes, not I/O
  'qcow2-refusals.test.js', // images refused before any I/O
  'snapshots.test.js', // offline chain operations
  'vhost-user-libblkio.test.js', // vhost-user back ends, run once
  'vhost-user-guest.test.js', // QEMU guests, run once
  'vhost-user-reconnect.test.js', // a QEMU guest, run once
  'journal-ext4.test.js', // an in-process server with its own engine; mkfs and e2fsck, run once
  'journal-durability.test.js', // a memory: disk under strace; the log's own writes, run once
  'tls.test.js', // the transport under TLS, whatever engine is below it; run once
  'socket-activation.test.js', // started by systemd-socket-activate and libnbd, default engine
  'stdio.test.js', // started by libnbd and by hand on a socketpair, default engine
]);
const FORMAT = new Set(['qcow2-map.test.js', 'qcow2-qemu-images.test.js', 'qcow2-qemu-reads.test.js', 'qcow2-workload.test.js']);
const interop = fs.readdirSync('dist/test/interop').filter((f) => f.endsWith('.test.js') && !ONCE.has(f));
const others = ['dist/test/hostile-client.test.js', 'dist/test/threads.test.js'];
const perEngine = [...interop.filter((f) => !FORMAT.has(f)).map((f) => `dist/test/interop/${f}`), ...others];
const withFormat = [...interop.map((f) => `dist/test/interop/${f}`), ...others];
const auto = chooseEngine('auto');
auto.engine.close();
const variants = engineReports()
  .filter((r) => r.available && r.name !== auto.engine.name)
  .map((r) => ({ label: `${r.name} --threads 2`, files: perEngine, env: { VBLK_TEST_ENGINE: r.name, VBLK_TEST_DIRECT: '', VBLK_TEST_THREADS: '2' } }));
variants.push({ label: `${auto.engine.name} --direct --threads 2, with the qcow2 suites`, files: withFormat, env: { VBLK_TEST_ENGINE: auto.engine.name, VBLK_TEST_DIRECT: '1', VBLK_TEST_THREADS: '2' } });
const tmpfs = makeTmpfsDir('vblk-matrix-');
variants.push({ label: `auto --threads 1 on tmpfs (${tmpfs.dir})`, files: perEngine, env: { VBLK_TEST_ENGINE: '', VBLK_TEST_DIRECT: '', VBLK_TEST_THREADS: '1', TMPDIR: tmpfs.dir } });

let failed = false;
try {
  for (const v of variants) {
    console.log(`\n# engine matrix: ${v.label}`);
    const r = spawnSync('npx', ['tap', '--disable-coverage', ...v.files], { stdio: 'inherit', env: { ...process.env, ...v.env } });
    if (r.status !== 0) {
      console.log(`# engine matrix: ${v.label} FAILED`);
      failed = true;
    }
  }
} finally {
  tmpfs.remove();
}
process.exit(failed ? 1 : 0);
