// A qcow2 write that fails gives its clusters back. The image lives on a
// small tmpfs mounted for the test (root is needed, as for the other
// mount-based tests), 1 MiB writes fill it until the file system answers
// ENOSPC, more writes keep failing, and then `qemu-img check` must find
// no leaked cluster and no corruption: every cluster allocated for a
// write that failed was freed again (qemu-nbd leaks none here either).
// The image then still takes writes once space is freed, and keeps what
// the successful writes wrote.

import path from 'node:path';
import t from 'tap';
import { openImage } from '../../src/device/images/open.js';
import { createQcow2 } from '../../src/device/images/qcow2/create.js';
import { joinSegments, request } from '../../src/device/types.js';
import { chooseEngine } from '../../src/io/probe.js';
import { mountTmpfs } from '../helpers/mounts.js';
import { run } from '../helpers/tools.js';

const MiB = 1 << 20;
const engine = chooseEngine('auto').engine;
t.teardown(() => engine.close());

t.test('1 MiB writes that fail for want of space leak no cluster', async (t) => {
  const mnt = mountTmpfs(t, '8m');
  const file = path.join(mnt, 'full.qcow2');
  createQcow2(file, { size: 32 * MiB });
  const img = await openImage(file, { readOnly: false, engine });

  // Four writes in flight at a time, as a client would send them.
  const outcomes: (string | null)[] = [];
  for (let mib = 0; mib < 32; mib += 4) {
    const settled = await Promise.allSettled(
      [0, 1, 2, 3].map((i) => img.write(request('write', (mib + i) * MiB, MiB, { data: Buffer.alloc(MiB, mib + i + 1) }))),
    );
    for (const s of settled) outcomes.push(s.status === 'fulfilled' ? null : String((s.reason as { code?: string }).code));
  }
  const failed = outcomes.filter((o) => o !== null);
  t.comment(`${outcomes.length - failed.length} writes succeeded, ${failed.length} failed (${[...new Set(failed)].join(', ')})`);
  t.ok(failed.length >= 20, 'most writes failed: the file system was full');
  t.ok(failed.every((code) => code === 'ENOSPC'), 'with ENOSPC');
  await img.close();

  const r = await run('qemu-img', ['check', '--output=json', file]);
  const report = JSON.parse(r.stdout) as { leaks?: number; corruptions?: number; format: string };
  t.comment(`qemu-img check: ${report.leaks ?? 0} leaked clusters, ${report.corruptions ?? 0} corruptions`);
  t.equal(report.format, 'qcow2', 'checked as qcow2');
  t.equal(report.leaks ?? 0, 0, 'no leaked cluster');
  t.equal(report.corruptions ?? 0, 0, 'no corruption');
  t.equal(r.code, 0, 'qemu-img check exits 0', { stderr: r.stderr.slice(0, 2000) });

  // The successful writes are there; trimming one makes room for a new
  // write once a sync has made the trim durable (a FLUSH here).
  const first = outcomes.indexOf(null);
  t.not(first, -1, 'some write succeeded');
  const io = await run('qemu-io', ['-r', '-f', 'qcow2', '-c', `read -P ${first + 1} ${first * MiB} ${MiB}`, file]);
  t.notMatch(io.stdout + io.stderr, /fail|error/i, 'QEMU reads what a successful write wrote');
  const again = await openImage(file, { readOnly: false, engine });
  await again.trim(request('trim', first * MiB, MiB));
  await again.flush();
  const last = outcomes.lastIndexOf('ENOSPC');
  await again.write(request('write', last * MiB, MiB, { data: Buffer.alloc(MiB, 0xee) }));
  const back = joinSegments(last * MiB, MiB, await again.read(request('read', last * MiB, MiB)));
  t.ok(back.every((b) => b === 0xee), 'after a trim and a flush freed space, a write that had failed succeeds');
  await again.close();
  const after = await run('qemu-img', ['check', file]);
  t.equal(after.code, 0, 'and qemu-img check is still clean', { stdout: after.stdout, stderr: after.stderr.slice(0, 2000) });
});
