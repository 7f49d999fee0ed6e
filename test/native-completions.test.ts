// The native rings (io_uring, POSIX AIO) hand completions to JavaScript
// from a libuv callback, with no JavaScript frame below to catch what the
// callback throws. Such an exception must reach the process as an
// uncaught exception, not stay pending in the environment and vanish
// (it did, before native/src/completions.cc passed it on).

import { spawnSync } from 'node:child_process';
import t from 'tap';
import { native } from '../src/io/native.js';

const rings = native ? (['Uring', 'Aio'] as const).filter((name) => native![name].probe() === null) : [];
if (rings.length === 0) t.comment('no native ring here');

for (const name of rings) {
  t.test(`${name}: an exception in the completion callback is an uncaught exception`, async (t) => {
    const script = `
      import fs from 'node:fs';
      import { native } from ${JSON.stringify(new URL('../src/io/native.js', import.meta.url).href)};
      process.on('uncaughtException', (err) => { console.log('caught: ' + err.message); process.exit(0); });
      const ring = new native.${name}(8, new Int32Array(16), () => { throw new Error('thrown in the callback'); });
      ring.prep(2, fs.openSync(process.execPath, 'r'), null, 0, 1);
      ring.submit();
      setTimeout(() => { console.log('lost'); process.exit(3); }, 5000);
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000 });
    t.equal(r.stdout.trim(), 'caught: thrown in the callback', `it reaches process.on('uncaughtException') ${r.stderr}`);
    t.equal(r.status, 0);
  });
}
