// --filter error (device/filters/error.ts) through qemu-io: reads fail
// with EIO exactly where the rule's range is and nowhere else; a write
// rule with after= and count= fails exactly the requests it names, with
// the errno it names; error-rate with a seed fails the same requests
// again, and another seed others; filters before any --export apply to
// every export, after --export NAME to NAME only.

import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { serve, tempDir } from './helpers/server.js';
import { run } from './helpers/tools.js';

const K64 = 64 << 10;
const MiB = 1 << 20;

/** Runs qemu-io commands in one process; one entry per command: 'ok' or the error it printed. */
async function qemuIo(uri: string, commands: string[], readOnly = false): Promise<string[]> {
  const r = await run('qemu-io', ['-f', 'raw', ...(readOnly ? ['-r'] : []), ...commands.flatMap((c) => ['-c', c]), uri]);
  const out = r.stdout + r.stderr;
  const events = [...out.matchAll(/^(?:(?:read|wrote) \d+\/\d+ bytes at offset \d+|(?:read|write) failed: (.*))$/gm)].map((m) => m[1] ?? 'ok');
  if (events.length !== commands.length) throw new Error(`qemu-io answered ${events.length} of ${commands.length} commands:\n${out}`);
  return events;
}

t.test('error:op=read,offset=1M,length=1M,errno=EIO (errno: another name for error=) fails reads in [1M, 2M) with EIO and nothing else', async (t) => {
  const served = await serve(t, ['memory:4M', '--filter', 'error:op=read,offset=1M,length=1M,errno=EIO']);
  const uri = served.uri();
  t.same(await qemuIo(uri, ['write -P 7 0 4M']), ['ok'], 'writes pass (the rule is for reads)');
  const blocks = Array.from({ length: (4 * MiB) / K64 }, (_, i) => i * K64);
  const results = await qemuIo(uri, blocks.map((o) => `read -P 7 ${o} 64k`));
  const failed = blocks.filter((_, i) => results[i] !== 'ok');
  t.same(failed, blocks.filter((o) => o >= MiB && o < 2 * MiB), 'exactly the 64 KiB blocks of the range fail');
  t.ok(results.filter((r) => r !== 'ok').every((r) => r === 'Input/output error'), 'with EIO');
  t.same(await qemuIo(uri, [`read ${MiB - 512} 1k`, `read ${2 * MiB - 512} 1k`, `read ${2 * MiB} 512`, `read ${MiB - 512} 512`]), [
    'Input/output error',
    'Input/output error',
    'ok',
    'ok',
  ], 'a read that overlaps the range by one sector fails; one that ends where it begins, or begins where it ends, does not');
});

t.test('error:op=write,after=1,count=2,error=ENOSPC fails the second and third write, no others', async (t) => {
  const served = await serve(t, ['memory:4M', '--filter', 'error:op=write,after=1,count=2,error=ENOSPC']);
  const writes = Array.from({ length: 5 }, (_, i) => `write -P ${i + 1} ${i * K64} 64k`);
  t.same(await qemuIo(served.uri(), writes), ['ok', 'No space left on device', 'No space left on device', 'ok', 'ok']);
  const reads = Array.from({ length: 5 }, (_, i) => `read -P ${[1, 0, 0, 4, 5][i]} ${i * K64} 64k`);
  t.same(await qemuIo(served.uri(), reads), ['ok', 'ok', 'ok', 'ok', 'ok'], 'a failed write changed nothing');
});

t.test('error-rate with a seed fails the same requests again; another seed, others', async (t) => {
  const pattern = async (seed: number): Promise<string> => {
    const served = await serve(t, ['memory:1M', '--filter', `error:op=read,error-rate=50%,seed=${seed}`]);
    const results = await qemuIo(served.uri(), Array.from({ length: 48 }, () => 'read 0 4k'));
    await served.stop();
    return results.map((r) => (r === 'ok' ? '.' : 'x')).join('');
  };
  const first = await pattern(7);
  t.match(first, /x/, `some fail: ${first}`);
  t.match(first, /\./, 'some pass');
  t.equal(await pattern(7), first, 'the same seed fails the same requests');
  t.not(await pattern(8), first, 'another seed, another pattern');
});

t.test('a filter before any --export applies to all exports, one after --export NAME to NAME only', async (t) => {
  const served = await serve(t, ['memory:1M', '--filter', 'error:op=write', '--export', 'b=memory:1M', '--filter', 'error:op=read']);
  t.same(await qemuIo(served.uri(''), ['write 0 4k', 'read 0 4k']), ['Input/output error', 'ok'], 'default export: the first filter only');
  t.same(await qemuIo(served.uri('b'), ['write 0 4k', 'read 0 4k']), ['Input/output error', 'Input/output error'], 'export b: both');
  const ready = served.logs().filter((l) => l.msg === 'export ready');
  t.same(
    ready.map((l) => [l.export, l.filters]),
    [
      ['', ['error']],
      ['b', ['error', 'error']],
    ],
    'the log says which filters each export has',
  );
});

t.test('exports of one image, one filtered and one a read-only view: written data reaches the file, one clean close', async (t) => {
  const dir = tempDir(t);
  const image = path.join(dir, 'disk.raw');
  fs.writeFileSync(image, Buffer.alloc(MiB));
  const served = await serve(t, [image, '--filter', 'error:op=trim', '--export', `ro=${image}:ro`]);
  t.same(await qemuIo(served.uri(''), ['write -P 9 0 64k', 'read -P 9 0 64k']), ['ok', 'ok'], 'the filtered export writes and reads');
  t.same(await qemuIo(served.uri('ro'), ['read -P 9 0 64k'], true), ['ok'], 'the read-only export of the same image sees it');
  const exit = await served.stop();
  t.equal(exit.code, 0, 'vblk stops cleanly');
  t.equal(served.logs().filter((l) => l.msg === 'export closed').length, 1, 'the image is closed once');
  t.ok(fs.readFileSync(image).subarray(0, K64).every((b) => b === 9), 'the data is in the file');
});
