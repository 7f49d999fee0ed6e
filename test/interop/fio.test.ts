// fio's nbd engine against a running vblk: random mixed I/O at queue depth
// 32 from two jobs on disjoint halves, with crc32c verification, must end
// with no error. The negative control proves that fio's verification does
// look at the data coming back through vblk: one byte changed in the
// backing file makes a verify pass fail.

import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { serve, tempDir } from '../helpers/server.js';
import { run, type RunResult } from '../helpers/tools.js';

const MiB = 1 << 20;
/** fio would otherwise leave local-*-verify.state files in the working directory. */
const NO_STATE_FILE = '--verify_state_save=0';

interface FioJob {
  jobname: string;
  error: number;
  'job options': Record<string, string>;
  read: { io_bytes: number };
  write: { io_bytes: number };
}

interface FioOutput {
  'global options'?: Record<string, string>;
  jobs: FioJob[];
}

function out(r: RunResult): { stdout: string; stderr: string } {
  return { stdout: r.stdout, stderr: r.stderr };
}

/** fio's JSON; it may print lines like 'fio: connected to NBD server' before it. */
function parseFio(stdout: string): FioOutput {
  const start = stdout.indexOf('{');
  if (start < 0) throw new Error(`no JSON in fio output:\n${stdout}`);
  return JSON.parse(stdout.slice(start)) as FioOutput;
}

async function image(t: Test, size: number): Promise<{ file: string; uri: string }> {
  const file = path.join(tempDir(t), 'disk.img');
  fs.writeFileSync(file, '');
  fs.truncateSync(file, size);
  const served = await serve(t, [file]);
  return { file, uri: served.uri() };
}

t.test('fio randrw, QD32, two jobs on disjoint ranges, crc32c verify: no errors', async (t) => {
  const { uri } = await image(t, 128 * MiB);
  const r = await run('fio', [
    '--name=t',
    '--ioengine=nbd',
    `--uri=${uri}`,
    '--rw=randrw',
    '--bs=4k',
    '--size=64M',
    '--offset_increment=64M',
    '--iodepth=32',
    '--numjobs=2',
    '--verify=crc32c',
    '--group_reporting',
    '--output-format=json',
    NO_STATE_FILE,
  ]);
  t.equal(r.code, 0, 'fio exits 0', out(r));
  const result = parseFio(r.stdout);
  t.ok(result.jobs.length >= 1, 'fio reports the jobs');
  let read = 0;
  let written = 0;
  for (const job of result.jobs) {
    t.equal(job.error, 0, `job ${job.jobname}: error is 0`, { job: { error: job.error } });
    const options = { ...result['global options'], ...job['job options'] };
    t.equal(options.verify, 'crc32c', `job ${job.jobname}: verification is on (crc32c)`);
    t.equal(options.ioengine, 'nbd', `job ${job.jobname}: the nbd engine was used`);
    read += job.read.io_bytes;
    written += job.write.io_bytes;
  }
  t.ok(written > 0, `data was written (${written} bytes)`);
  t.ok(read > 0, `data was read (${read} bytes)`);
  // The mixed phase moves 2 x 64 MiB in all; only a verify pass reading
  // back what was written can take the total beyond that.
  t.ok(read + written > 128 * MiB, `a verify pass read the written data back (${read} + ${written} bytes > 128 MiB)`);
  t.notMatch(r.stderr, /verify failed|bad magic|crc32c: verify/i, 'no verification failure reported');
});

t.test('negative control: fio verification catches one changed byte', async (t) => {
  const { file, uri } = await image(t, 16 * MiB);
  const common = ['--name=v', '--ioengine=nbd', `--uri=${uri}`, '--rw=write', '--bs=4k', '--size=8M', '--iodepth=8', '--verify=crc32c', '--output-format=json', NO_STATE_FILE];
  const w = await run('fio', [...common, '--do_verify=0']);
  t.equal(w.code, 0, 'fio writes the verification pattern', out(w));
  t.equal(parseFio(w.stdout).jobs[0].error, 0, 'write job error is 0');

  const clean = await run('fio', [...common, '--verify_only']);
  t.equal(clean.code, 0, 'a verify-only pass over intact data exits 0', out(clean));
  t.equal(parseFio(clean.stdout).jobs[0].error, 0, 'and reports no error');
  t.equal(parseFio(clean.stdout).jobs[0].read.io_bytes, 8 * MiB, 'and read back all 8 MiB');

  // Change one byte of the 11th block behind the server's back.
  const at = 10 * 4096 + 100;
  const fd = fs.openSync(file, 'r+');
  const b = Buffer.alloc(1);
  fs.readSync(fd, b, 0, 1, at);
  b[0] ^= 0xff;
  fs.writeSync(fd, b, 0, 1, at);
  fs.closeSync(fd);

  const bad = await run('fio', [...common, '--verify_only']);
  t.not(bad.code, 0, 'the verify-only pass now exits non-zero', out(bad));
  t.not(parseFio(bad.stdout).jobs[0].error, 0, 'and the job reports an error');
  t.match(bad.stderr, /verify failed at file .* offset 40960/, 'fio names the changed block', out(bad));
});
