// The README's vblk/client example, run as written (only the socket path
// changed) by a program that imports the package by its name, as a user's
// would: what it writes is then read with qemu-io.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { serve, tempDir } from './helpers/server.js';
import { run } from './helpers/tools.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url));

t.test("the README's vblk/client example works as written", async (t) => {
  const readme = fs.readFileSync(path.join(REPO, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('## An NBD client for Node'));
  const example = /```js\n([\s\S]*?)```/.exec(section)?.[1];
  if (!example) throw new Error('no js example in the README section "An NBD client for Node"');
  t.match(example, /from 'vblk\/client'/, 'it imports the package by name');
  const dir = tempDir(t);
  const srv = await serve(t, ['memory:8M']);
  // A project of its own with vblk installed: node_modules/vblk is this repository.
  fs.mkdirSync(path.join(dir, 'node_modules'));
  fs.symlinkSync(REPO, path.join(dir, 'node_modules', 'vblk'));
  const program = path.join(dir, 'example.mjs');
  fs.writeFileSync(program, example.replaceAll('/tmp/vblk.sock', srv.socket));
  const r = await run(process.execPath, [program], { cwd: dir });
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /\[ \{ name: '', description: '' \} \]/, 'it listed the export');
  t.match(r.stdout, /^171 \[/m, 'it read back its write (0xab) and printed the holes');
  const io = await run('qemu-io', ['-f', 'raw', '-r', '-c', 'read -P 0xab 0 4k', '-c', 'read -P 0 1M 1M', srv.uri()]);
  t.equal(io.code, 0, io.stderr);
  t.notMatch(io.stdout, /Pattern verification failed/, 'qemu-io reads its write and its zeroes');
});
