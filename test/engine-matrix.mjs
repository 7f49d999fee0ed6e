// Runs the tests that drive a live server once more for every other I/O
// engine this host has, and for io_uring with direct I/O, so the NBD
// interop suite covers each engine without copies of its tests. The first
// pass (plain `tap`) used the default engine (`auto`); test/helpers/
// server.ts adds --engine and --direct from VBLK_TEST_ENGINE and
// VBLK_TEST_DIRECT.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { chooseEngine, engineReports } from '../dist/src/io/probe.js';

const files = [
  ...fs.readdirSync('dist/test/interop').filter((f) => f.endsWith('.test.js')).map((f) => `dist/test/interop/${f}`),
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
