// vblk journal: read what --filter journal wrote. list shows the entries;
// replay applies them to a copy of the base image up to a mark or seq;
// crash-states writes the images a power cut may leave (device/journal/
// crash-states.ts). Images are raw; a trim is replayed as zeroes (what a
// raw file with holes punched reads as).

import { copyFile, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { decodeJournal, JournalFormatError, type DataEntry, type DecodedJournal, type JournalEntry } from '../device/journal/codec.js';
import { crashStates, cutsOf } from '../device/journal/crash-states.js';
import { numberOption, UsageError, type Command } from './command.js';
import { applyEntries } from './journal-apply.js';
import { progressLine } from './progress.js';
import { formatSize } from './size.js';

const HELP = `Usage: vblk journal list LOG [--json]
       vblk journal replay LOG --base IMG --to MARK|SEQ --out OUT
       vblk journal crash-states LOG --base IMG --out DIR [--max N] [--seed N]
                                 [--after MARK|SEQ]

Read a journal written by 'vblk serve --filter journal:file=LOG'.

  list          every entry (seq, type, range, FUA), marks and flush
                points, and a summary line; --json: one JSON document
  replay        copy the raw image IMG (the disk as it was when the
                journal began) to OUT, then apply the entries up to the
                mark named MARK (the entries logged before it) or up to and
                including seq SEQ
  crash-states  write DIR/state-NNNN.img for each state a power cut may
                leave: for each flush, just before it completed, the
                entries already durable plus any subset of those logged
                but not yet durable; and the same at the end of the log.
                All subsets when there are at most --max states, else
                --max states sampled with --seed. DIR/manifest.json says
                which entries each state holds.

A journal cut short by a crash is read up to its last whole entry.

Options:
  --json        list: JSON instead of a table
  --base IMG    the raw image the journal started from
  --to MARK|SEQ replay: where to stop
  --out PATH    replay: the image to write; crash-states: the directory
  --max N       crash-states: at most N states (64)
  --seed N      crash-states: seed of the sampling (0)
  --after MARK|SEQ  crash-states: only cuts after this point (a mark set
                once mkfs was done, say: earlier states are not of interest)
  -h, --help    show this help

Examples:
  vblk serve disk.img --socket /tmp/d.sock --filter journal:file=disk.log
  vblk journal list disk.log
  vblk journal replay disk.log --base disk-before.img --to after-install --out at-mark.img
  vblk journal crash-states disk.log --base disk-before.img --out states --max 200 --seed 7
`;

interface Values {
  json?: boolean;
  base?: string;
  to?: string;
  out?: string;
  max?: string;
  seed?: string;
  after?: string;
}

async function readJournal(path: string): Promise<DecodedJournal> {
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch (err) {
    throw new Error(`cannot read ${path}: ${(err as Error).message}`);
  }
  try {
    const j = decodeJournal(buf);
    if (j.stopped) process.stderr.write(`vblk journal: ${path}: read up to byte ${j.end}; ${j.stopped}\n`);
    return j;
  } catch (err) {
    if (err instanceof JournalFormatError) throw new Error(`${path}: ${err.message}`);
    throw err;
  }
}

function describe(e: JournalEntry): string {
  switch (e.type) {
    case 'write':
      return `write   ${e.offset}+${e.data.length}${e.fua ? ' fua' : ''}`;
    case 'trim':
    case 'zero':
      return `${e.type.padEnd(7)} ${e.offset}+${e.length}${e.fua ? ' fua' : ''}${e.noHole ? ' no-hole' : ''}`;
    case 'flush':
      return `flush   covers seq ${e.covers}`;
    case 'mark':
      return `mark    ${e.name}`;
  }
}

function list(j: DecodedJournal, json: boolean): void {
  const count = (t: JournalEntry['type']): number => j.entries.filter((e) => e.type === t).length;
  const written = j.entries.reduce((n, e) => n + (e.type === 'write' ? e.data.length : 0), 0);
  if (json) {
    const entries = j.entries.map((e) => (e.type === 'write' ? { ...e, data: undefined, length: e.data.length } : e));
    process.stdout.write(`${JSON.stringify({ header: j.header, entries, stopped: j.stopped }, null, 2)}\n`);
    return;
  }
  process.stdout.write(`journal of a ${formatSize(j.header.size)} disk, begun ${new Date(j.header.created).toISOString()}\n`);
  process.stdout.write(`${'seq'.padStart(8)}  entry\n`);
  for (const e of j.entries) process.stdout.write(`${String(e.seq).padStart(8)}  ${describe(e)}\n`);
  process.stdout.write(
    `${j.entries.length} entries: ${count('write')} writes (${formatSize(written)}), ${count('trim')} trims, ${count('zero')} zeroes, ${count('flush')} flushes, ${count('mark')} marks\n`,
  );
}

async function checkBase(base: string, j: DecodedJournal): Promise<string> {
  const size = (await stat(base)).size;
  if (size !== j.header.size) throw new Error(`${base} is ${size} bytes; the journal began on a ${j.header.size}-byte disk`);
  return base;
}

/** The last seq before the mark named `text`, or the seq `text`. */
function pointOf(j: DecodedJournal, text: string): number {
  const mark = j.entries.find((e) => e.type === 'mark' && e.name === text);
  if (mark) return mark.seq - 1;
  if (/^\d+$/.test(text)) return Number(text);
  throw new Error(`no mark '${text}' in the journal (marks: ${j.entries.flatMap((e) => (e.type === 'mark' ? [e.name] : [])).join(', ') || 'none'})`);
}

const isData = (e: JournalEntry): e is DataEntry => e.type === 'write' || e.type === 'trim' || e.type === 'zero';

async function replay(j: DecodedJournal, v: Values): Promise<void> {
  const base = await checkBase(v.base!, j);
  const last = pointOf(j, v.to!);
  await copyFile(base, v.out!);
  const entries = j.entries.filter((e): e is DataEntry => isData(e) && e.seq <= last);
  await applyEntries(v.out!, entries, 'replay');
  process.stdout.write(`${v.out}: ${entries.length} entries applied, up to seq ${Math.min(last, j.entries.at(-1)?.seq ?? 0)}\n`);
}

async function writeCrashStates(j: DecodedJournal, v: Values, max: number, seed: number): Promise<void> {
  const base = await checkBase(v.base!, j);
  const after = v.after === undefined ? 0 : pointOf(j, v.after);
  const states = crashStates(
    cutsOf(j.entries).filter((c) => (c.beforeFlush ?? Infinity) > after),
    max,
    seed,
  );
  const out = v.out!;
  await mkdir(out, { recursive: true });
  const manifest = [];
  // Progress in image bytes written: each state is a copy of the base.
  const progress = progressLine(`crash states (${states.length})`);
  for (const [i, s] of states.entries()) {
    const file = `state-${String(i).padStart(4, '0')}.img`;
    await copyFile(base, join(out, file));
    await applyEntries(join(out, file), s.entries);
    progress.update((i + 1) * j.header.size, states.length * j.header.size);
    manifest.push({
      file,
      cut: s.cut.label,
      beforeFlush: s.cut.beforeFlush,
      certain: s.cut.certain.map((e) => e.seq),
      possible: s.cut.possible.map((e) => e.seq),
      entries: s.entries.map((e) => e.seq),
    });
  }
  progress.finish();
  await writeFile(join(out, 'manifest.json'), `${JSON.stringify({ journal: j.header, seed, states: manifest }, null, 2)}\n`);
  process.stdout.write(`${states.length} crash states in ${out}\n`);
}

export const journal: Command<Values> = {
  name: 'journal',
  summary: 'list, replay or build crash states from a write journal',
  help: HELP,
  options: { json: { type: 'boolean' }, base: { type: 'string' }, to: { type: 'string' }, out: { type: 'string' }, max: { type: 'string' }, seed: { type: 'string' }, after: { type: 'string' } },
  async run(v, positionals) {
    const [action, log, ...extra] = positionals;
    if (!action) throw new UsageError('expected list, replay or crash-states');
    if (!['list', 'replay', 'crash-states'].includes(action)) throw new UsageError(`unknown action '${action}' (list, replay, crash-states)`);
    if (!log) throw new UsageError(`expected the journal file after ${action}`);
    if (extra.length > 0) throw new UsageError(`unexpected '${extra[0]}'`);
    const needs = { list: [], replay: ['base', 'to', 'out'], 'crash-states': ['base', 'out'] }[action as 'list'];
    for (const name of needs as (keyof Values)[]) if (!v[name]) throw new UsageError(`${action} needs --${name}`);
    const max = numberOption('max', v.max, 64, 1, 100000);
    const seed = numberOption('seed', v.seed, 0, 0, 2 ** 32 - 1);
    const j = await readJournal(log);
    if (action === 'list') list(j, v.json === true);
    else if (action === 'replay') await replay(j, v);
    else await writeCrashStates(j, v, max, seed);
    return 0;
  },
};
