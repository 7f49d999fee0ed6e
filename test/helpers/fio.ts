// fio through its nbd engine with JSON output, for the filter tests: one
// result per job, with the completion-latency percentiles in milliseconds.

import { run } from './tools.js';

export interface FioJobResult {
  name: string;
  read: FioDirection;
  write: FioDirection;
}

export interface FioDirection {
  ios: number;
  bytesPerSecond: number;
  iops: number;
  /** Completion latency percentiles (1, 5, ..., 99), milliseconds. */
  clatMs: Record<string, number>;
}

interface RawDirection {
  total_ios: number;
  bw_bytes: number;
  iops: number;
  clat_ns: { percentile?: Record<string, number> };
}

const direction = (d: RawDirection): FioDirection => ({
  ios: d.total_ios,
  bytesPerSecond: d.bw_bytes,
  iops: d.iops,
  clatMs: Object.fromEntries(Object.entries(d.clat_ns.percentile ?? {}).map(([p, ns]) => [String(Number(p)), ns / 1e6])),
});

/** Runs fio against `uri` with `args` (jobs and options); throws on a failed run. */
export async function fioNbd(uri: string, args: string[]): Promise<FioJobResult[]> {
  const r = await run('fio', ['--ioengine=nbd', `--uri=${uri}`, '--output-format=json', ...args]);
  const start = r.stdout.indexOf('{');
  if (r.code !== 0 || start < 0) throw new Error(`fio failed (${r.code}):\n${r.stdout}\n${r.stderr}`);
  const out = JSON.parse(r.stdout.slice(start)) as { jobs: { jobname: string; error: number; read: RawDirection; write: RawDirection }[] };
  return out.jobs.map((j) => {
    if (j.error) throw new Error(`fio job ${j.jobname}: error ${j.error}`);
    return { name: j.jobname, read: direction(j.read), write: direction(j.write) };
  });
}
