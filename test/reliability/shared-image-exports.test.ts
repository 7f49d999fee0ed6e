// One image behind a read-write and a read-only export of one server (the
// multi-export case of nbd-tester-client; nbd-server and qemu-nbd accept
// it): the server opens the image once, both exports see the same bytes,
// the read-only one refuses writes. And export descriptions: none unless
// given with --description (the image's path is nobody's business).

import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { serve, tempDir } from '../helpers/server.js';
import { nbdsh, run } from '../helpers/tools.js';

interface Listed {
  exports: { 'export-name': string; description?: string; 'is_read_only': boolean }[];
}

t.test('a read-write and a read-only export of one image (by two paths) share it', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'disk.img');
  fs.writeFileSync(file, Buffer.alloc(4 << 20));
  fs.symlinkSync(file, path.join(dir, 'alias.img'));
  const served = await serve(t, [file, '--export', `ro=${file}:ro`, '--export', `alias=${path.join(dir, 'alias.img')}:ro`]);

  const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 64k', served.uri()]);
  t.equal(w.code, 0, `write to the read-write export: ${w.stderr}`);
  for (const name of ['ro', 'alias']) {
    const r = await run('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x5a 0 64k', served.uri(name)]);
    t.equal(r.code, 0, `${name} reads what the other export wrote: ${r.stdout}${r.stderr}`);
    t.notMatch(r.stdout, /Pattern verification failed/);
  }
  const denied = await nbdsh(
    served.uri('ro'),
    ['h.set_strict_mode(0)', 'try:', "    h.pwrite(b'\\x01' * 4096, 0)", '    print("written")', 'except nbd.Error as e:', '    print(e.errno)'].join('\n'),
  );
  t.equal(denied.stdout.trim(), 'EPERM', 'the read-only export answers a write with EPERM');
  t.equal(fs.readFileSync(file).subarray(0, 4096).every((b) => b === 0x5a), true, 'and its refused write did not reach the file');

  const list = await run('nbdinfo', ['--json', '--list', served.uri()]);
  const listed = JSON.parse(list.stdout) as Listed;
  const ro = Object.fromEntries(listed.exports.map((e) => [e['export-name'], e.is_read_only]));
  t.same(ro, { '': false, ro: true, alias: true }, 'each export keeps its own read-only flag');
  const opened = served.logs().filter((l) => l.msg === 'export ready');
  t.same(opened.map((l) => l.shared), [true, true, true], 'the log says the image is shared');
  t.equal((await served.stop()).code, 0, 'and shutdown closes it once');
});

t.test('no description unless --description gives one', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'secret-path-disk.img');
  fs.writeFileSync(file, Buffer.alloc(1 << 20));
  const plain = await serve(t, [file, '--export', `b=${file}:ro`]);
  const bare = await run('nbdinfo', ['--json', '--list', plain.uri()]);
  t.equal(bare.code, 0, bare.stderr);
  t.notMatch(bare.stdout, /secret-path/, 'the image path is not sent');
  t.same((JSON.parse(bare.stdout) as Listed).exports.map((e) => e.description), [undefined, undefined]);
  await plain.stop();

  const described = await serve(t, [file, '--export', `b=${file}:ro`, '--description', 'the boot disk', '--description', 'b=a=b c']);
  const info = await run('nbdinfo', ['--json', '--list', described.uri()]);
  const byName = Object.fromEntries((JSON.parse(info.stdout) as Listed).exports.map((e) => [e['export-name'], e.description]));
  t.same(byName, { '': 'the boot disk', b: 'a=b c' });
});
