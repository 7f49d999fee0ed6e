// bench/filter-cost: the CPU a filter adds per request. The same fio
// workload (4 KiB random reads at QD32 on a warm raw image, through the
// nbd engine) against `vblk serve IMG` with no filter, and with a stack
// of N `--filter delay` that delay nothing (a passthrough: no timer, one
// call more per request each). Server CPU per request comes from
// /proc/PID/stat; (stack - none) / N is the cost of one filter. With no
// --filter the device chain is the image itself (applyFilters returns
// it unchanged), so "no filter" is the baseline row by construction;
// --baseline DIR adds a row for another build of vblk (e.g. a checkout
// from before the filters), to show that rows without filters did not move.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { cpuUs, fio, median, progress, randomFile, stop, waitForSocket, warm } from './lib.js';

const HELP = `Usage: node dist/bench/filter-cost.js [options]

Server CPU per request (from /proc/PID/stat) of vblk serve IMG with no
filter and with a stack of N do-nothing delay filters, under fio's nbd
engine (4 KiB random reads, iodepth 32, time-based, warm raw image);
rows alternate in each round; medians and the cost of one filter
((stack - none) / N, µs of CPU per request) are printed.
Progress goes to stderr, the table to stdout.

Options:
  --seconds N   fio runtime per measurement (default 10)
  --rounds N    rounds (default 3)
  --filters N   filters in the stack (default 10)
  --rw MODE     fio --rw (default randread; randwrite also makes sense)
  --dir DIR     where the image goes (default: the system temp dir)
  --baseline DIR  also measure the vblk built in DIR (its dist/) with no
                filter, e.g. a worktree of the commit before a change
  --help

Examples:
  npm run bench:filters
  node dist/bench/filter-cost.js --seconds 5 --rounds 1 --filters 20
  git worktree add /tmp/before 4df3e1e && (cd /tmp/before && npm ci && npm run build)
  node dist/bench/filter-cost.js --baseline /tmp/before
`;

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '10' },
    rounds: { type: 'string', default: '3' },
    filters: { type: 'string', default: '10' },
    rw: { type: 'string', default: 'randread' },
    dir: { type: 'string', default: os.tmpdir() },
    baseline: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});
if (values.help) {
  process.stdout.write(HELP);
  process.exit(0);
}
const seconds = Number(values.seconds);
const rounds = Number(values.rounds);
const stack = Number(values.filters);
const VBLK = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const image = path.join(values.dir!, 'vblk-filter-cost.img');
randomFile(image, 1 << 30);

const BASELINE = values.baseline && path.resolve(values.baseline, 'dist/src/cli/main.js');

async function measure(filters: number, vblk = VBLK): Promise<{ kiops: number; cpuUs: number }> {
  warm(image);
  const socket = path.join(values.dir!, 'vblk-filter-cost.sock');
  fs.rmSync(socket, { force: true });
  const args = [vblk, 'serve', image, '--socket', socket, ...Array.from({ length: filters }, () => ['--filter', 'delay']).flat()];
  const proc = spawn(process.execPath, args, { stdio: 'ignore' });
  try {
    await waitForSocket(socket, proc);
    const before = cpuUs(proc.pid!);
    const r = fio(['--name=f', '--ioengine=nbd', `--uri=nbd+unix:///?socket=${socket}`, `--rw=${values.rw}`, '--bs=4k', '--iodepth=32', `--runtime=${seconds}`, '--time_based']);
    const used = cpuUs(proc.pid!) - before;
    return { kiops: r.iops / 1000, cpuUs: used / (r.iops * seconds) };
  } finally {
    await stop(proc);
  }
}

type Row = 'none' | 'stack' | 'baseline';
const rows: Record<Row, { kiops: number; cpuUs: number }[]> = { none: [], stack: [], baseline: [] };
const order: Row[] = BASELINE ? ['none', 'stack', 'baseline'] : ['none', 'stack'];
for (let round = 0; round < rounds; round++) {
  for (const which of round % 2 ? [...order].reverse() : order) {
    progress(`round ${round + 1}/${rounds}: ${which === 'none' ? 'no filter' : which === 'stack' ? `${stack} filters` : `baseline ${values.baseline}`}`);
    rows[which].push(await measure(which === 'stack' ? stack : 0, which === 'baseline' ? BASELINE! : VBLK));
  }
}
const med = (xs: { kiops: number; cpuUs: number }[], k: 'kiops' | 'cpuUs') => median(xs.map((x) => x[k]));
const none = med(rows.none, 'cpuUs');
const withStack = med(rows.stack, 'cpuUs');
process.stdout.write(`fio ${values.rw} 4k QD32, ${seconds} s x ${rounds} rounds (medians)
| server | kIOPS | server CPU µs/request |
|---|---|---|
| vblk, no filter | ${med(rows.none, 'kiops').toFixed(1)} | ${none.toFixed(2)} |
| vblk, ${stack} x --filter delay (no delay) | ${med(rows.stack, 'kiops').toFixed(1)} | ${withStack.toFixed(2)} |
${BASELINE ? `| vblk from ${values.baseline}, no filter | ${med(rows.baseline, 'kiops').toFixed(1)} | ${med(rows.baseline, 'cpuUs').toFixed(2)} |\n` : ''}one filter: ${((withStack - none) / stack).toFixed(3)} µs of CPU per request
`);
