// The engine conformance suite (test/helpers/engine-conformance.ts) for
// every I/O engine this host has, each also under direct I/O, in the usual
// temporary directory; and what is about the engines, not the file: EFBIG
// past the file-size limit, --direct without the addon.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { native } from '../src/io/native.js';
import { engineReports } from '../src/io/probe.js';
import { engineConformance } from './helpers/engine-conformance.js';
import { tempDir } from './helpers/server.js';

const seed = Number(process.env.VBLK_SEED ?? Date.now() % 1_000_000);
t.comment(`fast-check seed ${seed} (replay with VBLK_SEED=${seed})`);

const available = engineReports().filter((r) => r.available);
t.ok(available.some((r) => r.name === 'uring'), 'io_uring is available on this host (the addon built and the kernel allows it)');

engineConformance(t, { dir: (t) => tempDir(t), direct: true, seed });

t.test('a write past the file-size limit fails with EFBIG on every engine', async (t) => {
  const dir = tempDir(t);
  const script = path.join(dir, 'fsize.mjs');
  const probe = new URL('../src/io/probe.js', import.meta.url).href;
  fs.writeFileSync(
    script,
    `import fs from 'node:fs';
import { chooseEngine } from ${JSON.stringify(probe)};
const { engine } = chooseEngine(process.argv[2]);
const fd = fs.openSync(process.argv[3], 'w');
try {
  await engine.submit([{ kind: 'write', fd, buffer: Buffer.alloc(4096), position: 2 << 20 }]);
  console.log('no error');
} catch (e) {
  console.log(e.code);
}`,
  );
  for (const { name } of available) {
    // ulimit -f counts 1024-byte blocks; Node ignores SIGXFSZ, so the write
    // fails with EFBIG. The signal can stay pending on libuv's worker
    // threads, which block all signals, and kill the child as it exits:
    // hence one child per engine, and the code it printed is what counts.
    // tap's hooks stay out: they would write past the limit, and their
    // signal-exit handler re-raises SIGXFSZ with the default action, killing
    // the child before it prints (one run in six). tap's spawn puts its
    // NODE_OPTIONS back into any env given here, so the shell unsets it.
    const r = spawnSync('sh', ['-c', `ulimit -f 1024; unset NODE_OPTIONS; exec "${process.execPath}" "$0" "$1" "$2"`, script, name, path.join(dir, name)], {
      encoding: 'utf8',
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
    });
    t.equal(r.stdout.trim(), 'EFBIG', `${name}: EFBIG (exit ${r.status}, signal ${r.signal}) ${r.stderr}`);
  }
});

t.test('--direct without the addon is refused with the reason', async (t) => {
  t.ok(native, 'the addon is loaded here');
  const r = spawnSync(process.execPath, ['-e', `import(${JSON.stringify(new URL('../src/io/probe.js', import.meta.url).href)}).then(m => { try { m.directEngine(m.chooseEngine('threads').engine) } catch (e) { console.log(e.message) } })`], {
    encoding: 'utf8',
    env: { ...process.env, VBLK_NO_NATIVE: '1' },
  });
  t.match(r.stdout, /--direct needs aligned buffers from the native addon: disabled by VBLK_NO_NATIVE=1/);
});
