// Appending to a journal file (device/journal/log-file.ts): frames from
// many concurrent appenders reach the file whole and in append order, and
// a sync resolves only once every frame appended before it is in the file
// (its size and its decoded entries say so at that moment).

import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { decodeJournal, encodeFrame, JOURNAL_FORMAT, JOURNAL_VERSION, type JournalEntry } from '../src/device/journal/codec.js';
import { JournalLogFile } from '../src/device/journal/log-file.js';
import { tempDir } from './helpers/server.js';

t.test('concurrent appends and syncs', async (t) => {
  const file = path.join(tempDir(t), 'log');
  const log = new JournalLogFile(file, encodeFrame({ type: 'header', format: JOURNAL_FORMAT, version: JOURNAL_VERSION, size: 1 << 20, created: 0 }));
  const written: JournalEntry[] = [];
  const checks: Promise<void>[] = [];
  for (let seq = 1; seq <= 300; seq++) {
    const entry: JournalEntry = { type: 'write', seq, offset: seq * 4096, data: Buffer.alloc((seq % 7) * 20_000, seq), fua: seq % 10 === 0 };
    written.push(entry);
    void log.append(encodeFrame(entry));
    if (entry.fua) {
      const expected = log.appended;
      checks.push(
        log.sync().then(() => {
          t.ok(fs.statSync(file).size >= expected, `sync after seq ${seq}: the file holds all ${expected} bytes appended before it`);
          t.ok(decodeJournal(fs.readFileSync(file)).entries.length >= seq, `and decodes to at least ${seq} entries`);
        }),
      );
    }
  }
  await Promise.all(checks);
  await log.close();
  const j = decodeJournal(fs.readFileSync(file));
  t.equal(j.stopped, null);
  t.same(j.entries, written, 'every frame, whole and in append order');
});
