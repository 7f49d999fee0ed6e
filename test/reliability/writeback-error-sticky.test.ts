// The write-back rule of image-file.ts at the device level, for raw and
// qcow2 alike: once a sync has failed, every later sync (FLUSH, the sync
// after a FUA write) fails with EIO although the engine would now report
// success, plain writes go on, and the failure is reported once. The
// engine fails exactly one sync, the way Linux reports a write-back error
// once per open file.

import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { openImage } from '../../src/device/images/open.js';
import { createQcow2 } from '../../src/device/images/qcow2/create.js';
import { RawImage } from '../../src/device/images/raw.js';
import { request } from '../../src/device/types.js';
import { ioError, type IoEngine, type IoOp } from '../../src/io/engine.js';
import { SyncEngine } from '../../src/io/sync-engine.js';
import { tempDir } from '../helpers/server.js';

/** A sync engine whose next sync fails once with EIO. */
function failingOnce(): IoEngine & { arm(): void } {
  const inner = new SyncEngine();
  let armed = false;
  return {
    name: inner.name,
    allocate: (size) => inner.allocate(size),
    release: (buffer) => inner.release(buffer),
    close: () => inner.close(),
    arm: () => (armed = true),
    submit(ops: IoOp[]) {
      if (armed && ops.some((op) => op.kind === 'sync')) {
        armed = false;
        return Promise.reject(ioError('EIO', 'sync failed'));
      }
      return inner.submit(ops);
    },
  };
}

for (const format of ['raw', 'qcow2'] as const) {
  t.test(`${format}: a failed sync fails every later FLUSH and FUA write`, async (t) => {
    const file = path.join(tempDir(t), `disk.${format}`);
    if (format === 'raw') RawImage.create(file, 4 << 20);
    else createQcow2(file, { size: 4 << 20 });
    const engine = failingOnce();
    const reports: string[] = [];
    const img = await openImage(file, { readOnly: false, engine, onWritebackError: (f, err) => reports.push(`${f}: ${err.message}`) });
    // qcow2's close writes back pending metadata, which fails here too (its descriptors are closed all the same).
    t.teardown(() => img.close().catch(() => undefined));
    const data = Buffer.alloc(65536, 0xab);
    await img.write(request('write', 0, data.length, { data }));
    await img.flush();
    t.pass('a flush before the failure succeeds');

    engine.arm();
    await t.rejects(img.flush(), { code: 'EIO' }, 'the failing sync is reported');
    await t.rejects(img.flush(), { code: 'EIO', message: /earlier write-back/ }, 'and so is every later flush');
    await t.rejects(img.write(request('write', 65536, data.length, { data, fua: true })), { code: 'EIO' }, 'a FUA write fails');
    await img.write(request('write', 131072, data.length, { data }));
    t.pass('a plain write still works');
    t.same(reports, [`${file}: sync failed`], 'the failure is reported once, with the file');
  });
}

t.test('an EIO from an O_DSYNC write is a write-back failure; ENOSPC is not', async (t) => {
  const file = path.join(tempDir(t), 'disk.raw');
  RawImage.create(file, 1 << 20);
  const inner = new SyncEngine();
  let fail: string | null = null;
  const engine: IoEngine = {
    name: inner.name,
    allocate: (size) => inner.allocate(size),
    release: (buffer) => inner.release(buffer),
    close: () => inner.close(),
    submit: (ops) => (fail ? Promise.reject(ioError(fail, `write failed: ${fail}`)) : inner.submit(ops)),
  };
  const img = await openImage(file, { readOnly: false, engine });
  t.teardown(() => img.close());
  const data = Buffer.alloc(4096, 1);
  fail = 'ENOSPC';
  await t.rejects(img.write(request('write', 0, 4096, { data, fua: true })), { code: 'ENOSPC' });
  fail = null;
  await img.flush();
  t.pass('a full disk does not poison the image');
  fail = 'EIO';
  await t.rejects(img.write(request('write', 0, 4096, { data, fua: true })), { code: 'EIO' });
  fail = null;
  await t.rejects(img.flush(), { code: 'EIO', message: /earlier write-back/ }, 'an EIO does');
  fs.rmSync(file);
});
