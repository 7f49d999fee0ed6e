// nbdinfo against a running vblk: what one export advertises, the list of
// exports with the read-only one marked, and the allocation map of a
// sparse file compared extent by extent with the layout written.

import { randomFillSync } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { serve, tempDir } from '../helpers/server.js';
import { run, type RunResult } from '../helpers/tools.js';
import { allocatedBytes, dataBytes, expectedLayout, makeSparse, mergeExtents, standardWrites, type Extent } from './sparse.js';

const MiB = 1 << 20;

interface ExportInfo {
  'export-name': string;
  'export-size': number;
  contexts?: string[];
  is_read_only: boolean;
  [flag: string]: unknown;
}

interface Info {
  protocol: string;
  structured: boolean;
  exports: ExportInfo[];
}

function out(r: RunResult): { stdout: string; stderr: string } {
  return { stdout: r.stdout, stderr: r.stderr };
}

function emptyImage(file: string, size: number): string {
  fs.writeFileSync(file, '');
  fs.truncateSync(file, size);
  return file;
}

async function nbdinfoJson(t: Test, args: string[]): Promise<Info> {
  const r = await run('nbdinfo', ['--json', ...args]);
  t.equal(r.code, 0, `nbdinfo --json ${args.join(' ')} exits 0`, out(r));
  return JSON.parse(r.stdout) as Info;
}

t.test('nbdinfo --json: size, flags and block sizes of one export', async (t) => {
  const dir = tempDir(t);
  const size = 48 * MiB + 4096;
  const served = await serve(t, [emptyImage(path.join(dir, 'disk.img'), size)]);
  const info = await nbdinfoJson(t, [served.uri()]);
  t.equal(info.protocol, 'newstyle-fixed', 'fixed newstyle handshake');
  t.equal(info.structured, true, 'structured replies negotiated');
  t.equal(info.exports.length, 1, 'one export described');
  const e = info.exports[0];
  t.equal(e['export-name'], '', 'the default export');
  t.equal(e['export-size'], size, `size is ${size}`);
  const expected: Record<string, unknown> = {
    is_read_only: false,
    can_flush: true,
    can_fua: true,
    can_trim: true,
    can_zero: true,
    can_fast_zero: true,
    can_multi_conn: true,
    can_cache: true,
    can_df: true,
    block_size_minimum: 1,
    block_size_preferred: 4096,
    block_size_maximum: 33554432,
  };
  for (const [key, value] of Object.entries(expected)) t.equal(e[key], value, `${key} is ${String(value)}`);
  t.ok(e.contexts?.includes('base:allocation'), 'base:allocation is offered', { contexts: e.contexts });
});

t.test('nbdinfo --list --json: three exports, only the :ro one read-only', async (t) => {
  const dir = tempDir(t);
  const sizes: Record<string, number> = { '': 16 * MiB, named: 8 * MiB, ro: 4 * MiB };
  const served = await serve(t, [
    emptyImage(path.join(dir, 'default.img'), sizes['']),
    '--export',
    `named=${emptyImage(path.join(dir, 'named.img'), sizes.named)}`,
    '--export',
    `ro=${emptyImage(path.join(dir, 'ro.img'), sizes.ro)}:ro`,
  ]);
  const info = await nbdinfoJson(t, ['--list', served.uri()]);
  const names = info.exports.map((e) => e['export-name']).sort();
  t.same(names, ['', 'named', 'ro'], 'all three exports are listed');
  for (const e of info.exports) {
    const name = e['export-name'];
    t.equal(e['export-size'], sizes[name], `'${name}' has size ${sizes[name]}`);
    t.equal(e.is_read_only, name === 'ro', `'${name}' is_read_only is ${name === 'ro'}`);
    if (name === 'ro') {
      // Nothing that writes may be advertised on a read-only export.
      t.equal(e.can_trim, false, "'ro' does not advertise trim");
      t.equal(e.can_zero, false, "'ro' does not advertise write zeroes");
      t.equal(e.can_fast_zero, false, "'ro' does not advertise fast zero");
    } else {
      t.equal(e.can_zero, true, `'${name}' advertises write zeroes`);
    }
  }
  // Negative control: --read-only makes every export read-only (after the
  // first server lets go of its write locks).
  await served.stop();
  const allRo = await serve(t, [path.join(dir, 'default.img'), '--export', `named=${path.join(dir, 'named.img')}`, '--read-only']);
  const roInfo = await nbdinfoJson(t, ['--list', allRo.uri()]);
  t.equal(roInfo.exports.length, 2, 'two exports listed');
  for (const e of roInfo.exports) t.equal(e.is_read_only, true, `with --read-only '${e['export-name']}' is read-only`);
});

interface MapEntry {
  offset: number;
  length: number;
  type: number;
  description: string;
}

async function nbdinfoMap(t: Test, uri: string): Promise<{ entries: MapEntry[]; extents: Extent[] }> {
  const r = await run('nbdinfo', ['--map', '--json', uri]);
  t.equal(r.code, 0, 'nbdinfo --map --json exits 0', out(r));
  const entries = JSON.parse(r.stdout) as MapEntry[];
  for (const e of entries) {
    t.ok(
      (e.type === 0 && e.description === 'data') || (e.type === 3 && e.description === 'hole,zero'),
      `extent at ${e.offset} is data (0) or hole,zero (3)`,
      { entry: e },
    );
  }
  return { entries, extents: mergeExtents(entries.map((e) => ({ offset: e.offset, length: e.length, data: e.type === 0 }))) };
}

t.test('nbdinfo --map --json matches the sparse layout of the file', async (t) => {
  const dir = tempDir(t);
  const size = 64 * MiB;
  const writes = standardWrites(size);
  const sparse = path.join(dir, 'sparse.img');
  makeSparse(sparse, size, writes);
  const expected = expectedLayout(size, writes);
  t.equal(allocatedBytes(sparse), dataBytes(expected), 'premise: the file system allocated exactly the 4 KiB blocks written');

  // Controls: a file that is all data and one that is all hole.
  const full = path.join(dir, 'full.img');
  fs.writeFileSync(full, randomFillSync(Buffer.alloc(8 * MiB)));
  const empty = emptyImage(path.join(dir, 'empty.img'), 16 * MiB);

  const served = await serve(t, [sparse, '--export', `full=${full}`, '--export', `empty=${empty}:ro`]);
  const { entries, extents } = await nbdinfoMap(t, served.uri());
  t.same(extents, expected, 'the map of the sparse file is exactly its layout', { entries });
  t.same((await nbdinfoMap(t, served.uri('full'))).extents, [{ offset: 0, length: 8 * MiB, data: true }], 'an all-data file maps as one data extent');
  t.same((await nbdinfoMap(t, served.uri('empty'))).extents, [{ offset: 0, length: 16 * MiB, data: false }], 'an empty file maps as one hole');
});
