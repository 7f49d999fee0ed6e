// The README's Python example for the control socket, run as written
// (only the socket path changed) against vblk serve --control: it lists
// the export and sets an error rule that qemu-io then meets.

import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { serve, tempDir } from './helpers/server.js';
import { run } from './helpers/tools.js';

const README = new URL('../../README.md', import.meta.url);

t.test("the README's Python control example works as written", async (t) => {
  const readme = fs.readFileSync(README, 'utf8');
  const section = readme.slice(readme.indexOf('## The control socket'));
  const example = /```python\n([\s\S]*?)```/.exec(section)?.[1];
  if (!example) throw new Error('no python example in the README section "The control socket"');
  t.match(example, /"\/tmp\/vblk\.ctl"/);
  const dir = tempDir(t);
  const ctl = path.join(dir, 'ctl.sock');
  const s = await serve(t, ['memory:4M', '--filter', 'error:error-rate=0', '--control', ctl]);
  const r = await run('/usr/bin/python3', ['-c', example.replaceAll('/tmp/vblk.ctl', ctl)]);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /'size': 4194304/, 'it printed the export');
  const io = await run('qemu-io', ['-f', 'raw', '-r', '-c', 'read 0 4k', '-c', 'read 1M 4k', s.uri()]);
  t.match(io.stdout + io.stderr, /read 4096\/4096[\s\S]*read failed: Input\/output error/, 'and its error rule is in force');
});
