// The journal is durable when the request is: a FUA write and a FLUSH are
// acknowledged only after the log's entries reach the disk (fdatasync of
// the log), while a plain write's reply does not wait for it. Killing
// the server cannot show this (the page cache survives a kill), so the
// test watches the order of system calls under strace: the log's
// fdatasync must finish before the reply to a FUA write or a flush is
// written to the client's socket. The plain write is the control: its
// reply goes out with no sync finished after its entry was written,
// which shows the check can tell the two apart.

import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { serve, tempDir } from '../helpers/server.js';
import { run } from '../helpers/tools.js';

t.test('FUA writes and flushes are replied to only after the journal is synced', async (t) => {
  const dir = tempDir(t);
  const log = path.join(dir, 'j.log');
  const trace = path.join(dir, 'trace.txt');
  const s = await serve(t, ['memory:4M', '--filter', `journal:file=${log}`], {
    prefix: ['strace', '-f', '-o', trace, '-e', 'trace=openat,accept4,fdatasync,write,writev,sendmsg'],
  });
  const client = await run('/usr/bin/python3', [
    '-c',
    [
      'import nbd',
      'h = nbd.NBD()',
      `h.connect_uri("${s.uri()}")`,
      'h.pwrite(b"a" * 4096, 0, nbd.CMD_FLAG_FUA)',
      'h.pwrite(b"b" * 4096, 4096)',
      'h.flush()',
    ].join('\n'),
  ]);
  t.equal(client.code, 0, client.stderr);
  // SIGTERM to vblk itself (strace would detach and leave it running), then strace exits with it.
  await run('pkill', ['-TERM', '-P', String(s.proc.pid)]);
  await s.exited;
  const lines = fs.readFileSync(trace, 'utf8').split('\n');
  const logFd = /openat\(.*j\.log", .*\) = (\d+)/.exec(lines.find((l) => l.includes('j.log"')) ?? '')?.[1];
  const sockFd = /accept4\(.*\) = (\d+)/.exec(lines.find((l) => /accept4\(.*\) = \d+/.test(l)) ?? '')?.[1];
  if (!logFd || !sockFd) throw new Error(`no log or socket descriptor in the trace:\n${lines.slice(0, 40).join('\n')}`);
  // libnbd numbers its requests 1, 2, 3; a simple reply is magic 0x67446698, error 0, then the cookie,
  // written alone (write) or as the first of a tick's replies (writev).
  const reply = (cookie: number): number => {
    const text = `"gDf\\230\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\${cookie.toString(8)}"`;
    return lines.findIndex((l) => l.includes(`write(${sockFd}, ${text}`) || l.includes(`writev(${sockFd}, [{iov_base=${text}`));
  };
  const entry = (kind: string, from: number): number => lines.findIndex((l, i) => i >= from && l.includes(`write(${logFd}, `) && l.includes(`\\245${kind}`));
  const syncDone = (from: number, to: number): boolean =>
    lines.slice(from, to).some((l) => new RegExp(`fdatasync\\(${logFd}\\)\\s+= 0|<\\.\\.\\. fdatasync resumed>.*= 0`).test(l));
  const [r1, r2, r3] = [reply(1), reply(2), reply(3)];
  t.ok(r1 > 0 && r2 > 0 && r3 > 0, `the three replies are in the trace (${r1}, ${r2}, ${r3})`);
  const fuaEntry = entry('write', 0);
  t.ok(fuaEntry > 0 && fuaEntry < r1, 'the FUA write was logged before its reply');
  t.ok(syncDone(fuaEntry, r1), 'and the log was synced between its entry and its reply');
  const plainEntry = entry('write', fuaEntry + 1);
  t.ok(plainEntry > 0, 'the plain write was logged');
  t.notOk(syncDone(r1, r2), 'control: no sync finished between the FUA write\'s reply and the plain write\'s');
  const flushEntry = entry('flush', 0);
  t.ok(flushEntry > 0 && flushEntry < r3, 'the flush was logged before its reply');
  t.ok(syncDone(flushEntry, r3), 'and the log was synced between the flush entry and its reply');
});
