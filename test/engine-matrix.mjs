// Runs the tests that drive a live server once more for every other I/O
// engine this host has, and for io_uring with direct I/O, so the NBD
// interop suite covers each engine without copies of its tests. The first
// pass (plain `tap`) used the default engine (`auto`); test/helpers/
// server.ts adds --engine and --direct from VBLK_TEST_ENGINE and
// VBLK_TEST_DIRECT.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { chooseEngine, engineReports } from '../dist/src/io/probe.js';

// Tests whose I/O does not go through the served export's engine, or that
// vary the engine themselves, run once.
const ONCE = new Set([
  'qcow2-crash.test.js', // picks an engine (and --direct) per iteration
  'clone.test.js', // file copies, no server I/O
  'resize.test.js', // offline resize
  'locking.test.js', // lock bytes, not I/O
  'qcow2-refusals.test.js', // images refused before any I/O
  'snapshots.test.js', // offline chain operations
]);
const files = [
  ...fs
    .readdirSync('dist/test/interop')
    .filter((f) => f.endsWith('.test.js') && !ONCE.has(f))
    .map((f) => `dist/test/interop/${f}`),
  'dist/test/hostile-client.test.js',
];
const auto = chooseEngine('auto');
auto.engine.close();
const variants = engineReports()
  .filter((r) => r.available && r.name !== auto.engine.name)
  .map((r) => ({ engine: r.name, direct: false }));
variants.push({ engine: auto.engine.name, direct: true });

let failed = false;
for (const v of variants) {
  const label = `${v.engine}${v.direct ? ' --direct' : ''}`;
  console.log(`\n# engine matrix: ${label}`);
  const r = spawnSync('npx', ['tap', '--disable-coverage', ...files], {
    stdio: 'inherit',
    env: { ...process.env, VBLK_TEST_ENGINE: v.engine, VBLK_TEST_DIRECT: v.direct ? '1' : '' },
  });
  if (r.status !== 0) {
    console.log(`# engine matrix: ${label} FAILED`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
